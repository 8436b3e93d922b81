"""Fine-tune zerank on your data with sentence-transformers' CrossEncoderTrainer, then recalibrate and package it.

Starts from a zerank folder or hub id (or a Qwen3 causal-LM checkpoint, which is first built into <out>/base by
:func:`zerank.packaging.convert.build`). Training examples are queries with their relevant documents and hard negatives, mined
from a first stage (BM25 by default) of a BEIR folder, or read from jsonl. A held-out part is kept aside: NDCG@10 of
reranking its first-stage candidates is measured before and after training (trec_eval, as ``zerank evaluate``), it
drives the CrossEncoderRerankingEvaluator during training, and the score temperature and bias are refitted on it at
the end (as ``zerank calibrate``), so a score keeps its meaning after fine-tuning.

Command:
    zerank finetune --model build/zerank-1 --data ../shared/data/ir/scifact --output-dir runs/ft \\
        [--max-steps 1000] [--loss bce|lambda|listnet|ranknet|elo-mse --elo elo.jsonl] [--lora [--merge]]
    # one or many GPUs: the usual launchers, nothing custom
    accelerate launch -m zerank.cli finetune --model ... --data ... --output-dir ...
    torchrun --nproc-per-node 8 -m zerank.cli finetune --model ... --data ... --output-dir ...

Every field of sentence-transformers' ``CrossEncoderTrainingArguments`` is a flag as well (``--max-steps``,
``--num-train-epochs``, ``--learning-rate``, ``--per-device-train-batch-size``, ``--warmup-steps``, ``--bf16``,
``--gradient-checkpointing``, ``--resume-from-checkpoint latest``, ``--use-cpu``, ``--seed``, ...; ``zerank finetune
... --trainer-help`` lists them). ``zerank.arguments.TRAINER_DEFAULTS`` holds the defaults that differ from the
library's; ``--bf16`` is on by default on a GPU that supports it. The trainer's ``--seed`` seeds everything: the
negative sampling, the held-out split and the training (``data_seed`` too). Checkpoints go to
``<output-dir>/checkpoints``; without ``--eval-steps``/``--save-steps``, the held-out evaluator runs and a checkpoint
is saved 4 times over the run.

Data:
    BEIR folder: queries of --train-split with their judged-relevant documents, plus --negatives-per-query hard
        negatives sampled from the first stage's top --mine-top-k (judged positives skipped). Held out: --eval-split
        (default test) if it exists, else --holdout-fraction of the training queries.
    jsonl: rows {"query", "document", "label"} (label 0/1 or a grade) or {"query", "positive", "negatives"}
        (:func:`zerank.data.readers.pairs_from_jsonl`'s formats); rows of the same query form one group. Held out:
        --eval-data (same format) or --holdout-fraction of the queries.

Losses: bce (pointwise binary cross-entropy on the logit), lambda (LambdaLoss, listwise, NDCG-weighted),
listnet (ListNet, listwise), ranknet (pairwise logistic loss on score differences: Bradley-Terry, as zELO) and
elo-mse (zELO's pointwise step: the 0..1 score regresses sigmoid(Elo) of ``zerank elo``'s scores, MSE; every
document of --elo's training queries is an example, no labels or negatives needed; see :mod:`zerank.training.zelo_commands`).

Outputs in --output-dir (files written atomically): final/ (a complete zerank package with a model card that lists
the training details; with --lora and no --merge, the adapter), adapter/ (with --lora), checkpoints/, report.json
(before/after metrics, calibration, timings), args.json (resolved arguments and library versions), probe.json (a
few held-out pairs and the final model's logits for them, to check a copy of the package).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftModel
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments, losses
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from transformers import HfArgumentParser, set_seed

from zerank.packaging.arguments import BuildArguments
from zerank.training.arguments import TRAINER_DEFAULTS, FinetuneArguments
from zerank.utils.arguments import FirstStageArguments
from zerank.evaluation.calibration import calibrate, calibration_markdown
from zerank.packaging.convert import build
from zerank.data.readers import (
    BeirDataset,
    LabelledPairs,
    Qrels,
    Run,
    holdout_mask,
    load_beir,
    pairs_from_beir,
    pairs_from_jsonl,
    ranked,
    select_queries,
)
from zerank.evaluation.evaluate import cross_encoder_scorer, evaluation_markdown, rerank
from zerank.model.loading import load_reranker, peak_memory, resolve_dtype
from zerank.evaluation.metrics import evaluate_run
from zerank.model.package import (
    AUTO_MAP,
    CARD_FILE,
    TEMPLATE_FILE,
    copy_package_files,
    is_hub_id,
    missing_package_files,
    read_config,
    render_model_card,
)
from zerank.evaluation.first_stage import FirstStage
from zerank.model.scoring import score_pairs
from zerank.utils.system import atomic_write_bytes, atomic_write_json, atomic_write_text, library_versions
from zerank.training.zelo import elo_target, read_elo

logger = logging.getLogger(__name__)

TRAINER_HELP_FLAG = "--trainer-help"
CHECKPOINTS_DIR = "checkpoints"
EVALUATIONS_PER_RUN = 4  # default --eval-steps/--save-steps: this many evaluations and checkpoints over the run
PROBE_SIZE = 16  # held-out pairs scored by the final model and its reloaded copy (probe.json)
USAGE = "zerank finetune --model MODEL --data DATA --output-dir OUTPUT_DIR [options] [trainer options]"
# Trainer settings zerank finetune chooses when the command line does not (see training_arguments).
CHOSEN = frozenset({"bf16", "eval_strategy", "eval_steps", "save_strategy", "save_steps", "data_seed", "max_steps",
                    "use_cpu", "activation_checkpointing", "ddp_find_unused_parameters"})
_UNSET = object()  # marks the trainer flags the command line did not give


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Group:
    """One training query: its documents and their grades (relevant first)."""

    query: str
    documents: list[str]
    grades: list[float]


@dataclass
class HeldOut:
    """Held-out queries (a BEIR split: texts and judgments) with the first-stage candidates to rerank."""

    dataset: BeirDataset
    candidates: Run

    @property
    def split(self) -> str:
        return self.dataset.split

    @property
    def qrels(self) -> Qrels:
        return self.dataset.qrels

    def labelled_pairs(self, relevance_level: int) -> LabelledPairs:
        """Judged-relevant documents (label 1) and the candidates that are not (label 0), grouped by query id."""
        return pairs_from_beir(self.dataset, self.dataset.judged_query_ids, self.candidates,
                               relevance_level=relevance_level)

    def evaluator_samples(self, relevance_level: int) -> list[dict]:
        """Samples for CrossEncoderRerankingEvaluator: the candidates in first-stage order and the positives."""
        samples = []
        for qid, judged in self.qrels.items():
            positives = [self.dataset.document(d) for d, g in judged.items()
                         if g >= relevance_level and d in self.dataset.corpus]
            documents = [self.dataset.document(d) for d, _ in ranked(self.candidates.get(qid, {}))]
            if positives and documents:
                samples.append({"query": self.dataset.queries[qid], "positive": positives, "documents": documents})
        return samples


def beir_split(args: FinetuneArguments, first_stage: FirstStage,
               seed: int) -> tuple[BeirDataset, list[str], HeldOut]:
    """The training split with its training query ids, and the held-out part: --eval-split's judged queries (those
    not trained on) if it exists, else a seeded --holdout-fraction of the training split's judged queries."""
    train = load_beir(args.data, args.train_split)
    train_ids = select_queries(train, args.max_train_queries)
    eval_split_exists = (args.data / "qrels" / f"{args.eval_split}.tsv").exists() and \
        args.eval_split != args.train_split
    if eval_split_exists:
        held = load_beir(args.data, args.eval_split)
        training_queries = set(train_ids)
        held_ids = [q for q in held.judged_query_ids if q not in training_queries]
        if len(held_ids) < len(held.judged_query_ids):
            logger.warning("%d queries judged in both splits are kept out of training's held-out part",
                           len(held.judged_query_ids) - len(held_ids))
    else:
        logger.info("No split %r: holding out %.0f%% of the %r queries", args.eval_split,
                    100 * args.holdout_fraction, args.train_split)
        mask = holdout_mask(train_ids, args.holdout_fraction, seed)
        held, held_ids = train, [q for q, m in zip(train_ids, mask) if m]
        train_ids = [q for q, m in zip(train_ids, mask) if not m]
    held_ids = held_ids[: args.eval_max_queries] if args.eval_max_queries else held_ids
    held_part = held.subset(held_ids)
    if not eval_split_exists:
        held_part = dataclasses.replace(held_part, split="held out")
    return train, train_ids, HeldOut(held_part, first_stage.retrieve(held, held_ids, args.eval_top_k))


def beir_data(args: FinetuneArguments, first_stage: FirstStage, seed: int) -> tuple[list[Group], HeldOut]:
    """Training groups (judged positives + hard negatives mined from the first stage) and the held-out part."""
    rng = random.Random(seed)
    train, train_ids, heldout = beir_split(args, first_stage, seed)
    logger.info("Mining %d hard negatives per query from the top %d of %s", args.negatives_per_query,
                args.mine_top_k, first_stage.describe())
    pool = first_stage.retrieve(train, train_ids, args.mine_top_k)
    groups = []
    for qid in train_ids:
        judged = train.qrels[qid]
        positives = [d for d, g in judged.items() if g >= args.relevance_level and d in train.corpus]
        candidates = [d for d, _ in ranked(pool.get(qid, {})) if judged.get(d, 0) < args.relevance_level]
        negatives = rng.sample(candidates, min(args.negatives_per_query, len(candidates)))
        if not positives or not negatives:
            continue
        docs = positives + negatives
        groups.append(Group(train.queries[qid], [train.document(d) for d in docs],
                            [float(judged.get(d, 0)) for d in docs]))
    return groups, heldout


def elo_data(args: FinetuneArguments, first_stage: FirstStage, seed: int) -> tuple[list[Group], HeldOut]:
    """Training groups of --loss elo-mse: every document of --elo's queries (but the held-out ones) with its target
    :func:`zerank.training.zelo.elo_target` as grade, and the held-out part (as for the other losses)."""
    train, _, heldout = beir_split(args, first_stage, seed)
    scores = read_elo(args.elo)
    held_ids = set(heldout.qrels)
    unknown = sorted(q for q in scores if q not in train.queries)
    missing_docs = sum(1 for docs in scores.values() for d in docs if d not in train.corpus)
    if unknown or missing_docs:
        logger.warning("%s: %d queries not in %s/queries.jsonl and %d documents not in its corpus are skipped",
                       args.elo, len(unknown), args.data, missing_docs)
    skipped = sorted(q for q in scores if q in held_ids)
    if skipped:
        logger.info("%d queries of %s are held out: not trained on", len(skipped), args.elo)
    query_ids = [q for q in scores if q in train.queries and q not in held_ids]
    query_ids = query_ids[: args.max_train_queries] if args.max_train_queries else query_ids
    groups = []
    for qid in query_ids:
        docs = [d for d in scores[qid] if d in train.corpus]
        if docs:
            targets = elo_target([scores[qid][d] for d in docs]).tolist()
            groups.append(Group(train.queries[qid], [train.document(d) for d in docs], targets))
    return groups, heldout


def jsonl_graded_pairs(path: Path, relevance_level: int) -> list[tuple[str, str, float]]:
    """(query, document, grade) of every pair of a jsonl file, in file order (:func:`zerank.data.readers.pairs_from_jsonl`:
    a ``{query, positive, negatives}`` row's positive is graded ``max(1, relevance_level)``, its negatives 0)."""
    pairs = pairs_from_jsonl(path, label_threshold=relevance_level)
    return list(zip(pairs.queries, pairs.documents, pairs.grades.tolist()))


def _by_query(rows: Sequence[tuple[str, str, float]]) -> dict[str, list[tuple[str, float]]]:
    """Each query's (document, grade) rows, queries in order of first appearance."""
    grouped: dict[str, list[tuple[str, float]]] = {}
    for query, document, grade in rows:
        grouped.setdefault(query, []).append((document, grade))
    return grouped


def jsonl_data(args: FinetuneArguments, seed: int) -> tuple[list[Group], HeldOut]:
    """Training groups and the held-out part (file order is its first-stage order) of jsonl data."""
    rows = _by_query(jsonl_graded_pairs(args.data, args.relevance_level))
    if args.eval_data:
        held_rows = _by_query(jsonl_graded_pairs(args.eval_data, args.relevance_level))
        held_order = list(held_rows)
        train_order = [q for q in rows if q not in held_rows]
    else:
        order = list(rows)
        mask = holdout_mask(order, args.holdout_fraction, seed)
        held_order = [q for q, m in zip(order, mask) if m]
        held_rows, train_order = rows, [q for q, m in zip(order, mask) if not m]
    train_order = train_order[: args.max_train_queries] if args.max_train_queries else train_order
    groups = []
    for query in train_order:
        docs = sorted(rows[query], key=lambda item: -item[1])  # relevant first
        if any(g >= args.relevance_level for _, g in docs) and any(g < args.relevance_level for _, g in docs):
            groups.append(Group(query, [d for d, _ in docs], [g for _, g in docs]))

    corpus: dict[str, dict[str, str]] = {}
    queries: dict[str, str] = {}
    qrels: Qrels = {}
    candidates: Run = {}
    for i, query in enumerate(held_order[: args.eval_max_queries] if args.eval_max_queries else held_order):
        qid = f"q{i}"
        queries[qid], qrels[qid], candidates[qid] = query, {}, {}
        for j, (document, grade) in enumerate(held_rows[query]):
            doc_id = f"q{i}-d{j}"
            corpus[doc_id] = {"title": "", "text": document}
            candidates[qid][doc_id] = float(-j)  # the file order is the first-stage order
            qrels[qid][doc_id] = int(grade)
    name = (args.eval_data or args.data).name
    return groups, HeldOut(BeirDataset(name, "held out", corpus, queries, qrels), candidates)


def training_dataset(groups: Sequence[Group], loss: str, relevance_level: int) -> Dataset:
    """A datasets.Dataset in the layout the loss reads: pairs with 0/1 labels for bce, pairs with their Elo targets
    (the groups' grades) for elo-mse, lists for the others."""
    if loss in ("bce", "elo-mse"):  # elo-mse: the grades are the Elo targets
        return Dataset.from_dict({
            "query": [g.query for g in groups for _ in g.documents],
            "document": [d for g in groups for d in g.documents],
            "label": [float(grade) if loss == "elo-mse" else float(grade >= relevance_level)
                      for g in groups for grade in g.grades],
        })
    return Dataset.from_dict({"query": [g.query for g in groups], "docs": [g.documents for g in groups],
                              "labels": [g.grades for g in groups]})


def make_loss(name: str, model: CrossEncoder, mini_batch_size: int | None) -> torch.nn.Module:
    """The sentence-transformers loss called ``name`` (see the module docstring)."""
    if name == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    if name == "elo-mse":  # the 0..1 score, sigmoid(calibrated logit), regresses the target sigmoid(Elo)
        return losses.MSELoss(model, activation_fn=torch.nn.Sigmoid())
    cls = {"lambda": losses.LambdaLoss, "listnet": losses.ListNetLoss, "ranknet": losses.RankNetLoss}[name]
    return cls(model, mini_batch_size=mini_batch_size)


# ---------------------------------------------------------------------------------------------------------------
# Trainer flags
# ---------------------------------------------------------------------------------------------------------------


def trainer_parser() -> HfArgumentParser:
    """The parser of CrossEncoderTrainingArguments with zerank finetune's defaults (bf16 on a GPU that has it)."""
    parser = HfArgumentParser(CrossEncoderTrainingArguments, prog="zerank finetune", usage=USAGE,
                              description="Trainer options of zerank finetune (sentence-transformers' "
                                          "CrossEncoderTrainingArguments); `zerank finetune --help` lists the others.")
    defaults: dict[str, Any] = dict(TRAINER_DEFAULTS)
    if resolve_dtype("auto") == torch.bfloat16:  # mixed precision follows the one "auto" dtype rule
        defaults["bf16"] = True
    parser.set_defaults(**defaults)
    return parser


@dataclass
class TrainerFlags:
    """The trainer's settings from the command line: every field's value and the names the command line gave."""

    values: dict[str, Any]
    given: frozenset[str]


def print_trainer_help() -> int:
    """``zerank finetune --trainer-help``: the trainer's flags (CrossEncoderTrainingArguments), zerank's defaults."""
    trainer_parser().print_help()
    return 0


def parse_trainer_flags(extra: Sequence[str]) -> TrainerFlags:
    """Parse the strings zerank finetune's own arguments left over as CrossEncoderTrainingArguments flags.

    Unknown strings and a trainer ``--output-dir`` (the trainer always writes to ``<output-dir>/checkpoints``) are
    usage errors (SystemExit, exit code 2).
    """
    parser = trainer_parser()
    dests = {action.dest for action in parser._actions if action.dest != "help"}
    # Parsed into a namespace of markers, so the flags that were given stand apart from the defaults.
    markers = argparse.Namespace(**dict.fromkeys(dests, _UNSET))
    namespace, unknown = parser.parse_known_args(list(extra), namespace=markers)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (`zerank finetune --help` lists the command's "
                     f"options, `{TRAINER_HELP_FLAG}` the trainer's)")
    given = frozenset(k for k, v in vars(namespace).items() if v is not _UNSET)
    if "output_dir" in given:
        parser.error("the trainer writes to <--output-dir>/checkpoints: it takes no --output-dir of its own")
    values = {k: (parser.get_default(k) if v is _UNSET else v) for k, v in vars(namespace).items()}
    if values.get("use_cpu") and "bf16" not in given:
        values["bf16"] = False  # bf16 by default on a GPU only
    if values.get("fp16") and "bf16" not in given:
        values["bf16"] = False
    return TrainerFlags(values, given)


def training_arguments(flags: TrainerFlags, output_dir: Path, steps_hint: int,
                       has_evaluator: bool) -> CrossEncoderTrainingArguments:
    """CrossEncoderTrainingArguments of the run: the flags, with zerank finetune's own choices where none was given.

    The trainer writes to ``output_dir``; the evaluator runs and a checkpoint is saved every ``steps_hint / 4``
    steps; ``data_seed`` is ``seed``; ``--gradient-checkpointing`` means activation checkpointing (non-reentrant).
    """
    values, given = dict(flags.values), flags.given
    values["output_dir"] = str(output_dir)
    every = values["eval_steps"] if "eval_steps" in given and values["eval_steps"] else \
        max(1, steps_hint // EVALUATIONS_PER_RUN)
    choices = {"eval_strategy": "steps" if has_evaluator else "no", "eval_steps": every, "save_strategy": "steps",
               "save_steps": every, "data_seed": values["seed"], "ddp_find_unused_parameters": False}
    for name, value in choices.items():
        if name not in given:
            values[name] = value
    # transformers deprecates the gradient_checkpointing* names (a FutureWarning): pass them as the new ones.
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if values.get(new) is None:
            values[new] = values.get(old)
        values[old] = None
    if values["activation_checkpointing"] and values["activation_checkpointing_kwargs"] is None:
        values["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    return CrossEncoderTrainingArguments(**values)


def resume_target(value: str | None) -> str | bool | None:
    """``trainer.train``'s resume_from_checkpoint: ``latest`` = the newest checkpoint of the output folder."""
    if value is None:
        return None
    return True if value == "latest" else value


# ---------------------------------------------------------------------------------------------------------------
# Model: start, metrics, calibration, package
# ---------------------------------------------------------------------------------------------------------------


def resolve_start(model: str, out: Path, tokenizer: str | None) -> str:
    """The zerank model to start from: ``model`` itself, or ``out/base`` built from a Qwen3 causal LM."""
    config = read_config(model)
    if config.get("model_type") == "zerank":
        return model
    if config.get("model_type") == "qwen3" and "Qwen3ForCausalLM" in (config.get("architectures") or []):
        base = out / "base"
        if (base / "config.json").exists() and read_config(str(base)).get("model_type") == "zerank":
            logger.info("Reusing the zerank build of %s in %s", model, base)
            return str(base)
        logger.info("%s is a Qwen3 causal LM: building a zerank package in %s first", model, base)
        build(BuildArguments(out=base, base=model, tokenizer=tokenizer, overwrite=True))
        return str(base)
    raise ValueError(f"{model} is neither a zerank model nor a Qwen3ForCausalLM checkpoint "
                     f"(model_type={config.get('model_type')!r}, architectures={config.get('architectures')!r}).")


def ranking_metrics(model: CrossEncoder, heldout: HeldOut, relevance_level: int,
                    max_batch_tokens: int | None) -> dict[str, float]:
    """trec_eval metrics of reranking the held-out candidates with ``model``."""
    scorer = cross_encoder_scorer(model, heldout.dataset, max_batch_tokens=max_batch_tokens)
    reranked, _, _ = rerank(heldout.candidates, scorer)
    return evaluate_run(heldout.qrels, reranked, relevance_level=relevance_level)[0]


def recalibrate(model: CrossEncoder, heldout: HeldOut, relevance_level: int, max_batch_tokens: int | None,
                seed: int) -> dict:
    """Fit score_temperature/score_bias on half of the held-out queries, report on the other half."""
    config = model.model.config
    pairs = heldout.labelled_pairs(relevance_level)
    raw = score_pairs(model, pairs.pairs, output="raw", max_batch_tokens=max_batch_tokens).astype(np.float64)
    if len(set(pairs.groups)) >= 2:
        held = holdout_mask(pairs.groups, 0.5, seed)
    else:
        held = np.ones(len(pairs), dtype=bool)
    fit = ~held if (~held).any() else held
    result = calibrate(raw[fit], pairs.labels[fit], raw[held], pairs.labels[held],
                       (float(config.score_temperature), float(config.score_bias)))
    result.update({"data": "the held-out queries", "fitted_by": "zerank finetune",
                   "fit": {"pairs": int(fit.sum())}, "heldout": {"pairs": int(held.sum())}})
    return result


def training_markdown(args: FinetuneArguments, trainer_args: CrossEncoderTrainingArguments, start: str,
                      report: dict) -> str:
    """The model card's training section: data, loss, settings and the held-out metrics before and after."""
    lora = (f"LoRA r={args.lora_r}, alpha={args.lora_alpha}, dropout={args.lora_dropout} on "
            f"{', '.join(args.lora_target_modules)} (+ the score row){', merged' if args.merge else ''}"
            ) if args.lora else "full fine-tuning"
    t = report["training"]
    before, after = report["before"], report["after"]
    rows = "\n".join(f"| {name} | {before[name]:.4f} | {after[name]:.4f} |" for name in before)
    examples = report["data"].get("targets") or f"{args.negatives_per_query} hard negatives per query"
    return (
        f"Fine-tuned from `{start}` with `zerank finetune` (sentence-transformers CrossEncoderTrainer): "
        f"{report['data']['train_queries']} training queries of {report['data']['source']} "
        f"({report['data']['train_examples']} examples, {examples}), "
        f"loss `{args.loss}`, {lora}, {t['steps']} steps, learning rate {trainer_args.learning_rate}, batch size "
        f"{trainer_args.per_device_train_batch_size} x {trainer_args.gradient_accumulation_steps} accumulation, "
        f"seed {trainer_args.seed}, {t['runtime_s']:.0f}s.\n\n"
        f"Reranking {report['data']['heldout_queries']} held-out queries (top {args.eval_top_k} of the first stage):"
        f"\n\n| Metric | Before | After |\n|---|---:|---:|\n{rows}\n"
    )


def complete_package(folder: Path) -> list[str]:
    """Make sure a saved folder has every file of a zerank package; returns what had to be added."""
    added = [name for name in missing_package_files(folder) if name != CARD_FILE]
    if added:
        if "config.json" in added:
            raise FileNotFoundError(f"{folder} has no config.json: the model was not saved.")
        template = folder / TEMPLATE_FILE
        saved_template = template.read_bytes() if template.exists() else None
        copy_package_files(folder)
        if saved_template is not None:  # the tokenizer's own template stays
            atomic_write_bytes(template, saved_template)
    auto_map = read_config(str(folder)).get("auto_map") or {}
    if auto_map.get("AutoModelForSequenceClassification") != AUTO_MAP["AutoModelForSequenceClassification"]:
        raise ValueError(f"{folder}/config.json has no zerank auto_map: it would not load with trust_remote_code.")
    return added


def write_model_card(folder: Path, model: CrossEncoder, args: FinetuneArguments,
                     trainer_args: CrossEncoderTrainingArguments, start: str, report: dict) -> None:
    """README.md of the final folder: the package's card with the training, calibration and evaluation sections."""
    calibration = calibration_markdown(report["calibration"]) if report.get("calibration_applied") else None
    evaluation = evaluation_markdown([{
        "dataset": report["data"]["heldout"], "split": report["data"]["heldout_split"],
        "queries": report["data"]["heldout_queries"],
        "first_stage_name": report["data"]["first_stage"], "top_k": args.eval_top_k,
        "relevance_level": args.relevance_level, "first_stage": report["first_stage"], "reranked": report["after"],
    }], Path(args.repo_id).name)
    card = render_model_card(
        model.model.config, repo_id=args.repo_id, base_model=f"{start}, fine-tuned", max_length=report["max_length"],
        base_model_id=start if is_hub_id(start) else None, calibration=calibration, evaluation=evaluation,
        training=training_markdown(args, trainer_args, start, report),
    )
    atomic_write_text(folder / CARD_FILE, card)


def add_lora(model: CrossEncoder, args: FinetuneArguments) -> None:
    """Train LoRA adapters (and the score row) instead of all weights."""
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=list(args.lora_target_modules), modules_to_save=["score"])
    model.add_adapter(config)
    trainable = sum(p.numel() for p in model.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.model.parameters())
    logger.info("LoRA adapters on %s: %d trainable parameters of %d (%.2f%%)", args.lora_target_modules, trainable,
                total, 100 * trainable / total)


def merge_lora(model: CrossEncoder, adapter_dir: Path, start: str) -> CrossEncoder:
    """``start`` with the saved adapter folded into its weights (peft's merge_and_unload), on ``model``'s device."""
    base = load_reranker(start, device=str(model.device), dtype=model.model.dtype)
    base[0].model = PeftModel.from_pretrained(base.model, str(adapter_dir)).merge_and_unload()
    return base


def save_final(out: Path, model: CrossEncoder, args: FinetuneArguments, trainer_args: CrossEncoderTrainingArguments,
               start: str, report: dict) -> Path:
    """Write ``out/final`` (the package, or the adapter with --lora and no --merge) with its model card; the folder
    is assembled next to it and renamed into place, so ``final/`` is never half written."""
    final, partial = out / "final", out / "final.partial"
    if partial.exists():
        shutil.rmtree(partial)
    if args.lora and not args.merge:
        shutil.copytree(out / "adapter", partial)
    else:
        model.save_pretrained(str(partial))
        report["package_files_added"] = complete_package(partial)
    write_model_card(partial, model, args, trainer_args, start, report)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return final


# ---------------------------------------------------------------------------------------------------------------
# Main: the steps of a run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneRun:
    """What the steps of one ``zerank finetune`` run share."""

    args: FinetuneArguments
    flags: TrainerFlags
    state: PartialState  # this process among the run's processes
    start: str  # the zerank model training starts from (see resolve_start)
    heldout: HeldOut
    began: float  # time.perf_counter() when the run began

    @property
    def out(self) -> Path:
        return self.args.output_dir

    @property
    def seed(self) -> int:
        return self.flags.values["seed"]


def set_up(args: FinetuneArguments, flags: TrainerFlags) -> tuple[PartialState, str]:
    """This process's state (everything seeded), the output folder and the zerank model to start from.

    A Qwen3 causal LM is built into ``<output-dir>/base`` by the main process first; the others then reuse it.
    """
    state = PartialState(cpu=bool(flags.values["use_cpu"]))
    set_seed(flags.values["seed"])
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with state.main_process_first():
        start = resolve_start(args.model, args.output_dir, args.tokenizer)
    return state, start


def load_data(args: FinetuneArguments, first_stage: FirstStage, seed: int) -> tuple[Dataset, HeldOut, dict]:
    """The training dataset, the held-out part and the report's ``data`` section (a BEIR folder or a jsonl file).

    Raises ValueError when no training query or no held-out query is left.
    """
    is_beir = args.data.is_dir()
    if args.loss == "elo-mse":
        groups, heldout = elo_data(args, first_stage, seed)
        if not groups:
            raise ValueError(f"No query of {args.elo} is a training query of {args.data} with its documents.")
    else:
        groups, heldout = beir_data(args, first_stage, seed) if is_beir else jsonl_data(args, seed)
    if not groups:
        raise ValueError(f"No training query of {args.data} has both a relevant document and a negative.")
    if not heldout.qrels:
        raise ValueError("The held-out part is empty: add an --eval-split / --eval-data or raise --holdout-fraction.")
    train_dataset = training_dataset(groups, args.loss, args.relevance_level)
    logger.info("Training on %d queries (%d rows for %s); %d held-out queries", len(groups), len(train_dataset),
                args.loss, len(heldout.qrels))
    data = {"source": args.data.name, "train_queries": len(groups), "train_examples": len(train_dataset),
            "heldout": (args.eval_data or args.data).name, "heldout_split": heldout.split,
            "heldout_queries": len(heldout.qrels),
            "heldout_candidates": sum(len(c) for c in heldout.candidates.values()),
            "first_stage": first_stage.describe() if is_beir else "file order",
            **({"targets": f"sigmoid(Elo) of {args.elo}"} if args.elo else {})}
    return train_dataset, heldout, data


def load_model(run: FinetuneRun) -> tuple[CrossEncoder, int | None, int | None]:
    """The start model on this process's device, truncating at --max-length (embeddings frozen with
    --freeze-embeddings), with its own max_seq_length and config.max_batch_tokens, which the package keeps."""
    args = run.args
    # Full fine-tuning keeps float32 weights (--bf16 is mixed precision); LoRA trains in the usual "auto" dtype.
    device = "cpu" if run.flags.values["use_cpu"] else str(run.state.device)
    dtype = resolve_dtype(args.model_dtype if args.model_dtype != "auto" or args.lora else "float32", device)
    # Each process loads its copy on its own device (cuda:<local rank> under accelerate/torchrun).
    model = load_reranker(run.start, device=device, dtype=dtype)
    saved_batch_tokens = getattr(model.model.config, "max_batch_tokens", None)
    context = model.max_seq_length
    model.max_seq_length = min(args.max_length, context or args.max_length)
    if args.freeze_embeddings:
        model.model.get_input_embeddings().weight.requires_grad_(False)
    return model, context, saved_batch_tokens


def trainer_setup(run: FinetuneRun, train_rows: int) -> tuple[CrossEncoderTrainingArguments,
                                                             CrossEncoderRerankingEvaluator | None]:
    """The trainer's arguments and the held-out evaluator (None when no held-out query has a positive to rank).

    Without --max-steps, the steps of --num-train-epochs over ``train_rows`` rows set the evaluation and checkpoint
    interval (see training_arguments).
    """
    values = run.flags.values
    samples = run.heldout.evaluator_samples(run.args.relevance_level)
    evaluator = CrossEncoderRerankingEvaluator(samples, at_k=10, always_rerank_positives=False, name="heldout",
                                               batch_size=values["per_device_eval_batch_size"]) \
        if samples else None
    rows_per_step = (values["per_device_train_batch_size"] * values["gradient_accumulation_steps"]
                     * run.state.num_processes)
    max_steps = values["max_steps"]
    steps_hint = max_steps if max_steps > 0 else int(values["num_train_epochs"] * np.ceil(train_rows / rows_per_step))
    trainer_args = training_arguments(run.flags, run.out / CHECKPOINTS_DIR, steps_hint, evaluator is not None)
    return trainer_args, evaluator


def write_args(run: FinetuneRun, trainer_args: CrossEncoderTrainingArguments, first_stage_args: FirstStageArguments,
               first_stage: FirstStage) -> None:
    """args.json: the resolved arguments (with the trainer settings this command chose or was given), all the
    trainer's settings, the start model, the number of processes, the first stage and the library versions."""
    resolved = {k: str(v) if isinstance(v, Path) else v
                for k, v in {**dataclasses.asdict(first_stage_args), **dataclasses.asdict(run.args)}.items()}
    trainer_settings = trainer_args.to_dict()
    # The trainer settings this command chose or was given; "trainer" below has all of them.
    resolved.update({k: trainer_settings[k] for k in sorted(run.flags.given | set(TRAINER_DEFAULTS) | CHOSEN)
                     if k in trainer_settings and k != "output_dir"})
    atomic_write_json(run.out / "args.json", {
        "args": resolved, "trainer": trainer_settings, "start": run.start, "processes": run.state.num_processes,
        "first_stage": first_stage.settings(), "versions": library_versions(),
    })


def evaluate_before(run: FinetuneRun, model: CrossEncoder) -> dict:
    """The report's ``first_stage`` and ``before`` sections: the held-out metrics of the first stage and of the start
    model reranking its candidates."""
    args, heldout = run.args, run.heldout
    logger.info("Evaluating the starting model on the held-out queries")
    metrics = {"first_stage": evaluate_run(heldout.qrels, heldout.candidates, relevance_level=args.relevance_level)[0],
               "before": ranking_metrics(model, heldout, args.relevance_level, args.max_batch_tokens)}
    logger.info("Before: %s", metrics["before"])
    return metrics


def train(run: FinetuneRun, model: CrossEncoder, trainer_args: CrossEncoderTrainingArguments, train_dataset: Dataset,
          evaluator: CrossEncoderRerankingEvaluator | None) -> tuple[CrossEncoder, dict]:
    """Train ``model`` (LoRA adapters with --lora), resuming from a checkpoint if asked; returns the trained model and
    the report's ``training`` section. The trainer, with its optimizer state, is let go on return."""
    args = run.args
    if args.lora:
        add_lora(model, args)
    loss = make_loss(args.loss, model, args.mini_batch_size)
    trainer = CrossEncoderTrainer(model=model, args=trainer_args, train_dataset=train_dataset, loss=loss,
                                  evaluator=evaluator)
    began = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_target(trainer_args.resume_from_checkpoint))
    training = {"steps": output.global_step, "train_loss": output.training_loss,
                "runtime_s": time.perf_counter() - began, **output.metrics, **peak_memory(),
                "log_history": trainer.state.log_history}
    return trainer.model, training


def final_model(run: FinetuneRun, model: CrossEncoder, context: int | None) -> CrossEncoder:
    """The trained model in eval mode at its own max_seq_length; with --lora, its adapter is saved to ``adapter/``
    and, with --merge, folded into the start model's weights."""
    model.eval()
    model.max_seq_length = context
    if run.args.lora:
        adapter_dir = run.out / "adapter"
        model.save_pretrained(str(adapter_dir))
        if run.args.merge:
            model = merge_lora(model, adapter_dir, run.start)
    return model


def evaluate_and_recalibrate(run: FinetuneRun, model: CrossEncoder, saved_batch_tokens: int | None) -> dict:
    """The report's ``after``, ``calibration`` and ``calibration_applied``: the trained model's held-out metrics and
    refitted score temperature and bias, which go to its config unless it is an unmerged adapter."""
    args = run.args
    logger.info("Evaluating and recalibrating the fine-tuned model on the held-out queries")
    after = ranking_metrics(model, run.heldout, args.relevance_level, args.max_batch_tokens)
    calibration = recalibrate(model, run.heldout, args.relevance_level, args.max_batch_tokens, run.seed)
    # An unmerged adapter loads the base model's config, so it cannot carry a new temperature and bias.
    applied = not (args.lora and not args.merge)
    config = model.model.config
    if applied:
        config.score_temperature = calibration["temperature"]
        config.score_bias = calibration["bias"]
    else:
        logger.warning("The adapter keeps the base model's score_temperature/score_bias; use --merge to ship the "
                       "refitted T=%.4g, b=%.4g", calibration["temperature"], calibration["bias"])
    config.max_batch_tokens = saved_batch_tokens  # --max-batch-tokens is this run's, not the package's
    return {"after": after, "calibration": calibration, "calibration_applied": applied}


def check_reload(run: FinetuneRun, model: CrossEncoder, final: Path) -> float:
    """The largest logit difference between ``model`` and its saved folder on a few held-out pairs (the folder must
    score as the in-memory model does); the pairs and ``model``'s logits go to probe.json."""
    probe = run.heldout.labelled_pairs(run.args.relevance_level).pairs[:PROBE_SIZE]
    expected = score_pairs(model, probe, output="logit")
    reloaded = load_reranker(str(final), device=str(model.device), dtype=model.model.dtype)
    max_abs_diff = float(np.abs(score_pairs(reloaded, probe, output="logit") - expected).max())
    logger.info("Reloaded %s: max |logit difference| %.3g", final, max_abs_diff)
    atomic_write_json(run.out / "probe.json", {"pairs": probe, "logits": expected.tolist()})
    return max_abs_diff


def write_report(run: FinetuneRun, report: dict, final: Path) -> None:
    """report.json, completed with the run's wall time and peak memory; logs the run's summary."""
    report["wall_time_s"] = time.perf_counter() - run.began
    report["memory"] = peak_memory()
    atomic_write_json(run.out / "report.json", report)
    logger.info("NDCG@10 on the held-out queries: %.4f -> %.4f (first stage %.4f); T=%.4g b=%.4g; wrote %s",
                report["before"]["ndcg@10"], report["after"]["ndcg@10"], report["first_stage"]["ndcg@10"],
                report["calibration"]["temperature"], report["calibration"]["bias"], final)


def main(args: FinetuneArguments, first_stage_args: FirstStageArguments, extra: list[str]) -> dict | int:
    """``zerank finetune``: train, evaluate before and after, recalibrate, write the package; returns the report.

    ``extra`` are the command-line strings the command's own dataclasses did not take: trainer flags
    (CrossEncoderTrainingArguments); ``--trainer-help`` among them prints those and returns 0. Every process trains;
    the main process alone evaluates and writes the files.
    """
    if TRAINER_HELP_FLAG in extra:
        return print_trainer_help()
    flags = parse_trainer_flags(extra)
    began = time.perf_counter()
    state, start = set_up(args, flags)
    first_stage = FirstStage.from_arguments(first_stage_args)
    train_dataset, heldout, data = load_data(args, first_stage, flags.values["seed"])
    run = FinetuneRun(args, flags, state, start, heldout, began)
    model, context, saved_batch_tokens = load_model(run)
    report: dict = {"model": args.model, "start": start, "max_length": context, "data": data}
    trainer_args, evaluator = trainer_setup(run, len(train_dataset))
    if state.is_main_process:
        write_args(run, trainer_args, first_stage_args, first_stage)
        report.update(evaluate_before(run, model))
    state.wait_for_everyone()

    model, report["training"] = train(run, model, trainer_args, train_dataset, evaluator)
    if not state.is_main_process:
        return report
    model = final_model(run, model, context)
    report.update(evaluate_and_recalibrate(run, model, saved_batch_tokens))
    final = save_final(run.out, model, args, trainer_args, start, report)
    report["reload_max_abs_diff"] = check_reload(run, model, final)
    write_report(run, report, final)
    return report
