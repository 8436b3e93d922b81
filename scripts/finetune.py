"""Fine-tune zerank on your data with sentence-transformers' CrossEncoderTrainer, then recalibrate and package it.

Starts from a zerank folder or hub id (or a Qwen3 causal-LM checkpoint, which is first built into <out>/base by
scripts/build.py). Training examples are queries with their relevant documents and hard negatives, mined from a
first stage (BM25 by default) of a BEIR folder, or read from jsonl. A held-out part is kept aside: NDCG@10 of
reranking its first-stage candidates is measured before and after training (trec_eval, as scripts/evaluate.py), it
drives the CrossEncoderRerankingEvaluator during training, and the score temperature and bias are refitted on it at
the end (as scripts/calibrate.py), so a score keeps its meaning after fine-tuning.

Usage:
    python scripts/finetune.py --model build/zerank-1 --data ../shared/data/ir/scifact --output-dir runs/ft \\
        [--max-steps 1000] [--loss bce|lambda|listnet|ranknet] [--lora [--merge]]
    # one or many GPUs: the usual launchers, nothing custom
    accelerate launch scripts/finetune.py --model ... --data ... --output-dir ...
    torchrun --nproc-per-node 8 scripts/finetune.py --model ... --data ... --output-dir ...

Data:
    BEIR folder: queries of --train-split with their judged-relevant documents, plus --negatives-per-query hard
        negatives sampled from the first stage's top --mine-top-k (judged positives skipped). Held out: --eval-split
        (default test) if it exists, else --holdout-fraction of the training queries.
    jsonl: rows {"query", "document", "label"} (label 0/1 or a grade) or {"query", "positive", "negatives"}; rows of
        the same query form one group. Held out: --eval-data (same format) or --holdout-fraction of the queries.

Losses: bce (pointwise binary cross-entropy on the logit), lambda (LambdaLoss, listwise, NDCG-weighted),
listnet (ListNet, listwise) and ranknet (pairwise logistic loss on score differences: Bradley-Terry, as zELO).

Outputs in --output-dir: final/ (a complete zerank package with a model card that lists the training details; with
--lora and no --merge, the adapter), adapter/ (with --lora), checkpoints/, report.json (before/after metrics,
calibration, timings), args.json (resolved arguments and library versions), probe.json (a few held-out pairs and
the final model's logits for them, to check a copy of the package).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from beir import (
    FirstStage,
    Run,
    add_first_stage_args,
    evaluate_run,
    first_stage_from_args,
    load_beir,
    ranked,
    select_queries,
)
from calibrate import calibrate, calibration_markdown, holdout_mask, pairs_from_jsonl
from evaluate import (
    cross_encoder_scorer,
    evaluation_markdown,
    library_versions,
    load_cross_encoder,
    rerank,
    score_texts,
)
from scoring import DEFAULT_MAX_BATCH_TOKENS

logger = logging.getLogger("zerank.finetune")

LOSSES = ("bce", "lambda", "listnet", "ranknet")
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
PACKAGE_FILES = ("config.json", "modeling_zerank.py", "zerank_st.py", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "modules.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json", "README.md")


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
    """Held-out queries with first-stage candidates and judgments (the interface of evaluate's scorer)."""

    split: str = "held out"
    queries: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    candidates: Run = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    def document(self, doc_id: str) -> str:
        return self.texts[doc_id]

    def labelled_pairs(self, relevance_level: int) -> tuple[list[tuple[str, str]], np.ndarray, list[str]]:
        """(pairs, 0/1 labels, query ids): judged-relevant documents and the candidates that are not."""
        pairs, labels, groups = [], [], []
        for qid, judged in self.qrels.items():
            positives = [d for d, g in judged.items() if g >= relevance_level and d in self.texts]
            negatives = [d for d in self.candidates.get(qid, {}) if judged.get(d, 0) < relevance_level]
            for doc_id, label in [(d, 1.0) for d in positives] + [(d, 0.0) for d in negatives]:
                pairs.append((self.queries[qid], self.texts[doc_id]))
                labels.append(label)
                groups.append(qid)
        return pairs, np.asarray(labels), groups

    def evaluator_samples(self, relevance_level: int) -> list[dict]:
        """Samples for CrossEncoderRerankingEvaluator: the candidates in first-stage order and the positives."""
        samples = []
        for qid, judged in self.qrels.items():
            positives = [self.texts[d] for d, g in judged.items() if g >= relevance_level and d in self.texts]
            documents = [self.texts[d] for d, _ in ranked(self.candidates.get(qid, {}))]
            if positives and documents:
                samples.append({"query": self.queries[qid], "positive": positives, "documents": documents})
        return samples


def beir_data(ns: argparse.Namespace, first_stage: FirstStage, rng: random.Random) -> tuple[list[Group], HeldOut]:
    train = load_beir(ns.data, ns.train_split)
    train_ids = select_queries(train, ns.max_train_queries)
    eval_split_exists = (ns.data / "qrels" / f"{ns.eval_split}.tsv").exists() and ns.eval_split != ns.train_split
    if eval_split_exists:
        held = load_beir(ns.data, ns.eval_split)
        held_ids = [q for q in held.judged_query_ids if q not in set(train_ids)]
        if len(held_ids) < len(held.judged_query_ids):
            logger.warning("%d queries judged in both splits are kept out of training's held-out part",
                           len(held.judged_query_ids) - len(held_ids))
    else:
        logger.info("No split %r: holding out %.0f%% of the %r queries", ns.eval_split, 100 * ns.holdout_fraction,
                    ns.train_split)
        mask = holdout_mask(train_ids, ns.holdout_fraction, ns.seed)
        held, held_ids = train, [q for q, m in zip(train_ids, mask) if m]
        train_ids = [q for q, m in zip(train_ids, mask) if not m]
    held_ids = held_ids[: ns.eval_max_queries] if ns.eval_max_queries else held_ids

    logger.info("Mining %d hard negatives per query from the top %d of %s", ns.negatives_per_query, ns.mine_top_k,
                first_stage.describe())
    pool = first_stage.retrieve(train, train_ids, ns.mine_top_k)
    groups = []
    for qid in train_ids:
        judged = train.qrels[qid]
        positives = [d for d, g in judged.items() if g >= ns.relevance_level and d in train.corpus]
        candidates = [d for d, _ in ranked(pool.get(qid, {})) if judged.get(d, 0) < ns.relevance_level]
        negatives = rng.sample(candidates, min(ns.negatives_per_query, len(candidates)))
        if not positives or not negatives:
            continue
        docs = positives + negatives
        groups.append(Group(train.queries[qid], [train.document(d) for d in docs],
                            [float(judged.get(d, 0)) for d in docs]))

    candidates = first_stage.retrieve(held, held_ids, ns.eval_top_k)
    used = {d for q in held_ids for d in list(candidates.get(q, {})) + list(held.qrels[q]) if d in held.corpus}
    heldout = HeldOut(held.split if eval_split_exists else "held out", {q: held.queries[q] for q in held_ids},
                      {d: held.document(d) for d in used}, candidates, {q: held.qrels[q] for q in held_ids})
    return groups, heldout


def jsonl_groups(path: Path, label_threshold: float) -> tuple[list[str], dict[str, list[tuple[str, float]]]]:
    """Query order and, per query, its (document, grade) rows, from either jsonl format."""
    rows: dict[str, list[tuple[str, float]]] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "document" in row and "label" in row:
                rows.setdefault(row["query"], []).append((row["document"], float(row["label"])))
            elif "positive" in row and "negatives" in row:
                docs = rows.setdefault(row["query"], [])
                docs.append((row["positive"], max(1.0, label_threshold)))
                docs.extend((n, 0.0) for n in row["negatives"])
            else:
                raise ValueError(f"{path}:{line_no}: expected {{query, document, label}} or "
                                 f"{{query, positive, negatives}}, got keys {sorted(row)}.")
    return list(rows), rows


def jsonl_data(ns: argparse.Namespace) -> tuple[list[Group], HeldOut]:
    pairs_from_jsonl(ns.data, label_threshold=ns.relevance_level)  # validates every row with a clear error
    order, rows = jsonl_groups(ns.data, ns.relevance_level)
    if ns.eval_data:
        pairs_from_jsonl(ns.eval_data, label_threshold=ns.relevance_level)
        held_order, held_rows = jsonl_groups(ns.eval_data, ns.relevance_level)
        train_order = [q for q in order if q not in held_rows]
    else:
        mask = holdout_mask(order, ns.holdout_fraction, ns.seed)
        held_order = [q for q, m in zip(order, mask) if m]
        held_rows, train_order = rows, [q for q, m in zip(order, mask) if not m]
    train_order = train_order[: ns.max_train_queries] if ns.max_train_queries else train_order
    groups = []
    for query in train_order:
        docs = sorted(rows[query], key=lambda item: -item[1])  # relevant first
        if any(g >= ns.relevance_level for _, g in docs) and any(g < ns.relevance_level for _, g in docs):
            groups.append(Group(query, [d for d, _ in docs], [g for _, g in docs]))
    heldout = HeldOut()
    for i, query in enumerate(held_order[: ns.eval_max_queries] if ns.eval_max_queries else held_order):
        qid = f"q{i}"
        heldout.queries[qid] = query
        heldout.candidates[qid], heldout.qrels[qid] = {}, {}
        for j, (doc, grade) in enumerate(held_rows[query]):
            doc_id = f"q{i}-d{j}"
            heldout.texts[doc_id] = doc
            heldout.candidates[qid][doc_id] = float(-j)  # the file order is the first-stage order
            heldout.qrels[qid][doc_id] = int(grade)
    return groups, heldout


def training_dataset(groups: Sequence[Group], loss: str, relevance_level: int):
    """A datasets.Dataset in the layout the loss reads: pairs with 0/1 labels for bce, lists for the others."""
    from datasets import Dataset

    if loss == "bce":
        return Dataset.from_dict({
            "query": [g.query for g in groups for _ in g.documents],
            "document": [d for g in groups for d in g.documents],
            "label": [float(grade >= relevance_level) for g in groups for grade in g.grades],
        })
    return Dataset.from_dict({"query": [g.query for g in groups], "docs": [g.documents for g in groups],
                              "labels": [g.grades for g in groups]})


def make_loss(name: str, model, mini_batch_size: int | None):
    from sentence_transformers.cross_encoder import losses

    if name == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    cls = {"lambda": losses.LambdaLoss, "listnet": losses.ListNetLoss, "ranknet": losses.RankNetLoss}[name]
    return cls(model, mini_batch_size=mini_batch_size)


# ---------------------------------------------------------------------------------------------------------------
# Model: start, metrics, calibration, package
# ---------------------------------------------------------------------------------------------------------------


def read_model_config(model: str) -> dict:
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json: pass a zerank folder or a Qwen3 checkpoint.")
        return json.loads((path / "config.json").read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(model, "config.json")).read_text())


def resolve_start(model: str, out: Path, tokenizer: str | None) -> str:
    """The zerank model to start from: ``model`` itself, or ``out/base`` built from a Qwen3 causal LM."""
    config = read_model_config(model)
    if config.get("model_type") == "zerank":
        return model
    if config.get("model_type") == "qwen3" and "Qwen3ForCausalLM" in (config.get("architectures") or []):
        base = out / "base"
        if (base / "config.json").exists() and read_model_config(str(base)).get("model_type") == "zerank":
            logger.info("Reusing the zerank build of %s in %s", model, base)
            return str(base)
        from build import BuildArgs, build

        logger.info("%s is a Qwen3 causal LM: building a zerank package in %s first", model, base)
        build(BuildArgs(out=base, base=model, tokenizer=tokenizer, overwrite=True))
        return str(base)
    raise ValueError(f"{model} is neither a zerank model nor a Qwen3ForCausalLM checkpoint "
                     f"(model_type={config.get('model_type')!r}, architectures={config.get('architectures')!r}).")


def ranking_metrics(model, heldout: HeldOut, relevance_level: int, max_batch_tokens: int) -> dict[str, float]:
    """trec_eval metrics of reranking the held-out candidates with ``model``."""
    scorer = cross_encoder_scorer(model, heldout, max_batch_tokens=max_batch_tokens)
    reranked, _, _ = rerank(heldout.candidates, scorer, show_progress=False)
    return evaluate_run(heldout.qrels, reranked, relevance_level=relevance_level)[0]


def recalibrate(model, heldout: HeldOut, relevance_level: int, max_batch_tokens: int, seed: int) -> dict:
    """Fit score_temperature/score_bias on half of the held-out queries, report on the other half."""
    config = model.model.config
    pairs, labels, groups = heldout.labelled_pairs(relevance_level)
    raw = score_texts(model, pairs, output="raw", max_batch_tokens=max_batch_tokens).astype(np.float64)
    if len(set(groups)) >= 2:
        held = holdout_mask(groups, 0.5, seed)
    else:
        held = np.ones(len(labels), dtype=bool)
    fit = ~held if (~held).any() else held
    result = calibrate(raw[fit], labels[fit], raw[held], labels[held],
                       (float(config.score_temperature), float(config.score_bias)))
    result.update({"data": "the held-out queries", "fitted_by": "scripts/finetune.py",
                   "fit": {"pairs": int(fit.sum())}, "heldout": {"pairs": int(held.sum())}})
    return result


def peak_memory() -> dict:
    import torch

    memory = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        memory["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return memory


def training_markdown(ns: argparse.Namespace, start: str, report: dict) -> str:
    lora = (f"LoRA r={ns.lora_r}, alpha={ns.lora_alpha}, dropout={ns.lora_dropout} on {ns.lora_target_modules} "
            f"(+ the score row){', merged' if ns.merge else ''}") if ns.lora else "full fine-tuning"
    t = report["training"]
    before, after = report["before"], report["after"]
    rows = "\n".join(f"| {name} | {before[name]:.4f} | {after[name]:.4f} |" for name in before)
    return (
        f"Fine-tuned from `{start}` with `scripts/finetune.py` (sentence-transformers CrossEncoderTrainer): "
        f"{report['data']['train_queries']} training queries of {report['data']['source']} "
        f"({report['data']['train_examples']} examples, {ns.negatives_per_query} hard negatives per query), "
        f"loss `{ns.loss}`, {lora}, {t['steps']} steps, learning rate {ns.learning_rate}, batch size "
        f"{ns.batch_size} x {ns.gradient_accumulation_steps} accumulation, seed {ns.seed}, "
        f"{t['runtime_s']:.0f}s.\n\n"
        f"Reranking {report['data']['heldout_queries']} held-out queries (top {ns.eval_top_k} of the first stage):\n\n"
        f"| Metric | Before | After |\n|---|---:|---:|\n{rows}\n"
    )


def complete_package(folder: Path) -> list[str]:
    """Make sure a saved folder has every file of a zerank package; returns what had to be added."""
    from build import CHAT_TEMPLATE_FILE, copy_package_files

    added = [name for name in PACKAGE_FILES if name != "README.md" and not (folder / name).exists()]
    if added:
        if "config.json" in added:
            raise FileNotFoundError(f"{folder} has no config.json: the model was not saved.")
        copy_package_files(folder)
        if not (folder / "chat_template.jinja").exists():
            shutil.copy2(CHAT_TEMPLATE_FILE, folder / "chat_template.jinja")
    config = json.loads((folder / "config.json").read_text())
    if "AutoModelForSequenceClassification" not in (config.get("auto_map") or {}):
        raise ValueError(f"{folder}/config.json has no auto_map: it would not load with trust_remote_code.")
    return added


def write_model_card(folder: Path, model, ns: argparse.Namespace, start: str, report: dict) -> None:
    from build import BuildArgs, render_model_card

    base_model_id = start if not Path(start).exists() else None
    args = BuildArgs(out=folder, base=start, repo_id=ns.repo_id, base_model_id=base_model_id,
                     max_length=report["max_length"])
    calibration = calibration_markdown(report["calibration"]) if report.get("calibration_applied") else None
    evaluation = evaluation_markdown([{
        "dataset": report["data"]["heldout"], "split": report["data"]["heldout_split"],
        "queries": report["data"]["heldout_queries"],
        "first_stage_name": report["data"]["first_stage"], "top_k": ns.eval_top_k,
        "relevance_level": ns.relevance_level, "first_stage": report["first_stage"], "reranked": report["after"],
    }], Path(ns.repo_id).name)
    card = render_model_card(model.model.config, args, f"{start}, fine-tuned", training=training_markdown(
        ns, start, report), calibration=calibration, evaluation=evaluation)
    (folder / "README.md").write_text(card)


def add_lora(model, ns: argparse.Namespace) -> None:
    from peft import LoraConfig

    targets = [t.strip() for t in ns.lora_target_modules.split(",") if t.strip()]
    config = LoraConfig(r=ns.lora_r, lora_alpha=ns.lora_alpha, lora_dropout=ns.lora_dropout,
                        target_modules=targets, modules_to_save=["score"])
    model.add_adapter(config)
    trainable = sum(p.numel() for p in model.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.model.parameters())
    logger.info("LoRA adapters on %s: %d trainable parameters of %d (%.2f%%)", targets, trainable, total,
                100 * trainable / total)


def merge_lora(model, adapter_dir: Path, start: str):
    """Fold the saved adapter into the base weights (peft's merge_and_unload) inside ``model``'s Transformer."""
    from peft import PeftModel

    base = load_cross_encoder(start, device=str(model.device), dtype=str(model.model.dtype).removeprefix("torch."))
    base[0].model = PeftModel.from_pretrained(base.model, str(adapter_dir)).merge_and_unload()
    return base


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("model and data")
    io.add_argument("--model", required=True, help="zerank folder or hub id, or a Qwen3ForCausalLM checkpoint.")
    io.add_argument("--tokenizer", help="Tokenizer for building a Qwen3 checkpoint (default: the checkpoint's).")
    io.add_argument("--data", type=Path, required=True, help="BEIR folder or jsonl file of training data.")
    io.add_argument("--output-dir", type=Path, required=True, help="Where checkpoints, final/ and reports go.")
    io.add_argument("--train-split", default="train", help="BEIR: qrels split to train on (default: train).")
    io.add_argument("--eval-split", default="test", help="BEIR: held-out split (default: test, if it exists).")
    io.add_argument("--eval-data", type=Path, help="jsonl: held-out file (default: --holdout-fraction of --data).")
    io.add_argument("--holdout-fraction", type=float, default=0.2,
                    help="Share of the training queries held out when there is no held-out split or file.")
    io.add_argument("--max-train-queries", type=int, help="Train on the first N training queries only.")
    io.add_argument("--eval-max-queries", type=int, help="Evaluate and calibrate on the first N held-out queries.")
    io.add_argument("--relevance-level", type=int, default=1, help="Smallest grade counted as relevant.")
    io.add_argument("--repo-id", default="your-org/zerank-finetuned", help="Repo id named in the model card.")

    mining = parser.add_argument_group("hard negatives and evaluation")
    add_first_stage_args(mining)
    mining.add_argument("--negatives-per-query", type=int, default=7, help="Hard negatives per training query.")
    mining.add_argument("--mine-top-k", type=int, default=30, help="Sample negatives from this first-stage top k.")
    mining.add_argument("--eval-top-k", type=int, default=100, help="Held-out candidates reranked per query.")
    mining.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS,
                        help="Token budget of one scoring batch for the before/after evaluation.")

    train = parser.add_argument_group("training (CrossEncoderTrainingArguments)")
    train.add_argument("--loss", choices=LOSSES, default="bce", help="Training loss (default: bce).")
    train.add_argument("--mini-batch-size", type=int, help="List losses: pairs per forward pass (memory).")
    train.add_argument("--max-steps", type=int, default=-1, help="Optimizer steps (default: --epochs).")
    train.add_argument("--epochs", type=float, default=1.0, help="Epochs when --max-steps is not given.")
    train.add_argument("--learning-rate", type=float, default=2e-5, help="Peak learning rate.")
    train.add_argument("--batch-size", type=int, default=16, help="Rows per device per step (pairs or queries).")
    train.add_argument("--gradient-accumulation-steps", type=int, default=1, help="Steps accumulated per update.")
    train.add_argument("--warmup-ratio", type=float, default=0.1, help="Share of the steps spent warming up.")
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay.")
    train.add_argument("--optim", default="adamw_torch",
                       help="transformers optimizer name (adamw_torch, adamw_torch_fused, adafactor, "
                            "adamw_8bit with bitsandbytes, ...).")
    train.add_argument("--max-length", type=int, default=1024,
                       help="Cut training pairs to this many tokens (the saved model keeps its own context).")
    train.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                       help="Mixed precision: auto = bf16 on GPUs that support it, fp32 otherwise.")
    train.add_argument("--model-dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                       help="Weights' dtype: auto = float32, or bfloat16 for --lora on a GPU.")
    train.add_argument("--gradient-checkpointing", action="store_true", help="Trade compute for activation memory.")
    train.add_argument("--freeze-embeddings", action="store_true",
                       help="Keep the input embeddings fixed (151,936 rows: ~10%% of a 4B model's weights) to save "
                            "their gradients and optimizer state.")
    train.add_argument("--eval-steps", type=int, help="Run the reranking evaluator every N steps (default: 4 times).")
    train.add_argument("--eval-batch-size", type=int, default=32, help="Pairs per batch of the reranking evaluator.")
    train.add_argument("--save-steps", type=int, help="Checkpoint every N steps (default: as --eval-steps).")
    train.add_argument("--save-total-limit", type=int, default=2, help="Checkpoints kept.")
    train.add_argument("--logging-steps", type=int, default=10, help="Log the loss every N steps.")
    train.add_argument("--resume", nargs="?", const="latest",
                       help="Resume from the latest checkpoint in --output-dir (or from the given checkpoint).")
    train.add_argument("--report-to", default="none", help="Trainer loggers (none, tensorboard, wandb, ...).")
    train.add_argument("--device", choices=("cpu",),
                       help="cpu forces the CPU; by default the Trainer uses the GPUs (pick them with "
                            "CUDA_VISIBLE_DEVICES, launch several with accelerate or torchrun).")
    train.add_argument("--seed", type=int, default=0, help="Seed of sampling, splits and training.")

    lora = parser.add_argument_group("LoRA (peft)")
    lora.add_argument("--lora", action="store_true", help="Train LoRA adapters instead of all weights.")
    lora.add_argument("--lora-r", type=int, default=16, help="LoRA rank.")
    lora.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha.")
    lora.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout.")
    lora.add_argument("--lora-target-modules", default=LORA_TARGETS, help="Comma-separated module names.")
    lora.add_argument("--merge", action="store_true", help="With --lora: save final/ with the adapter merged in.")
    ns = parser.parse_args(argv)
    if ns.merge and not ns.lora:
        parser.error("--merge needs --lora")
    for name in ("negatives_per_query", "mine_top_k", "eval_top_k", "batch_size", "gradient_accumulation_steps"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not ns.data.exists():
        parser.error(f"--data {ns.data} does not exist")
    if not ns.data.is_dir() and ns.data.suffix != ".jsonl":
        parser.error(f"--data must be a BEIR folder or a .jsonl file, got {ns.data}")
    return ns


def training_arguments(ns: argparse.Namespace, steps_hint: int, has_evaluator: bool):
    import torch
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    on_gpu = torch.cuda.is_available() and ns.device != "cpu"
    precision = ns.precision
    if precision == "auto":
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    every = ns.eval_steps or max(1, steps_hint // 4)
    return CrossEncoderTrainingArguments(
        output_dir=str(ns.output_dir / "checkpoints"),
        max_steps=ns.max_steps,
        num_train_epochs=ns.epochs,
        per_device_train_batch_size=ns.batch_size,
        per_device_eval_batch_size=ns.batch_size,
        gradient_accumulation_steps=ns.gradient_accumulation_steps,
        learning_rate=ns.learning_rate,
        warmup_steps=ns.warmup_ratio,
        weight_decay=ns.weight_decay,
        optim=ns.optim,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=ns.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if ns.gradient_checkpointing else None,
        eval_strategy="steps" if has_evaluator else "no",
        eval_steps=every,
        save_strategy="steps",
        save_steps=ns.save_steps or every,
        save_total_limit=ns.save_total_limit,
        logging_steps=ns.logging_steps,
        seed=ns.seed,
        data_seed=ns.seed,
        report_to=ns.report_to,
        use_cpu=ns.device == "cpu",
        ddp_find_unused_parameters=False,
    )


def main(argv: list[str] | None = None) -> dict:
    ns = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch
    from accelerate import PartialState
    from sentence_transformers.cross_encoder import CrossEncoderTrainer
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from transformers import set_seed

    began = time.perf_counter()
    state = PartialState()
    set_seed(ns.seed)
    out = ns.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with state.main_process_first():
        start = resolve_start(ns.model, out, ns.tokenizer)

    rng = random.Random(ns.seed)
    first_stage = first_stage_from_args(ns)
    groups, heldout = beir_data(ns, first_stage, rng) if ns.data.is_dir() else jsonl_data(ns)
    if not groups:
        raise ValueError(f"No training query of {ns.data} has both a relevant document and a negative.")
    if not heldout.qrels:
        raise ValueError("The held-out part is empty: add an --eval-split / --eval-data or raise --holdout-fraction.")
    train_dataset = training_dataset(groups, ns.loss, ns.relevance_level)
    logger.info("Training on %d queries (%d rows for %s); %d held-out queries", len(groups), len(train_dataset),
                ns.loss, len(heldout.qrels))

    dtype = ns.model_dtype
    if dtype == "auto":
        dtype = "bfloat16" if ns.lora and torch.cuda.is_available() and ns.device != "cpu" else "float32"
    # Each process loads its copy on its own device (cuda:<local rank> under accelerate/torchrun).
    model = load_cross_encoder(start, device="cpu" if ns.device == "cpu" else str(state.device), dtype=dtype)
    context = model.max_seq_length
    model.max_seq_length = min(ns.max_length, context or ns.max_length)

    report: dict = {"model": ns.model, "start": start, "max_length": context}
    report["data"] = {"source": ns.data.name, "train_queries": len(groups), "train_examples": len(train_dataset),
                      "heldout": (ns.eval_data or ns.data).name, "heldout_split": heldout.split,
                      "heldout_queries": len(heldout.qrels),
                      "heldout_candidates": sum(len(c) for c in heldout.candidates.values()),
                      "first_stage": first_stage.describe() if ns.data.is_dir() else "file order"}
    if state.is_main_process:
        resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(ns).items()}
        (out / "args.json").write_text(json.dumps({"args": resolved, "start": start, "processes": state.num_processes,
                                                   "first_stage": first_stage.settings(),
                                                   "versions": library_versions()}, indent=2) + "\n")
        logger.info("Evaluating the starting model on the held-out queries")
        report["first_stage"] = evaluate_run(heldout.qrels, heldout.candidates,
                                             relevance_level=ns.relevance_level)[0]
        report["before"] = ranking_metrics(model, heldout, ns.relevance_level, ns.max_batch_tokens)
        logger.info("Before: %s", report["before"])
    state.wait_for_everyone()

    if ns.freeze_embeddings:
        model.model.get_input_embeddings().weight.requires_grad_(False)
    if ns.lora:
        add_lora(model, ns)
    samples = heldout.evaluator_samples(ns.relevance_level)
    evaluator = CrossEncoderRerankingEvaluator(samples, at_k=10, always_rerank_positives=False, name="heldout",
                                               batch_size=ns.eval_batch_size) if samples else None
    rows_per_step = ns.batch_size * ns.gradient_accumulation_steps * state.num_processes
    steps_hint = ns.max_steps if ns.max_steps > 0 else int(ns.epochs * np.ceil(len(train_dataset) / rows_per_step))
    args = training_arguments(ns, steps_hint, evaluator is not None)
    loss = make_loss(ns.loss, model, ns.mini_batch_size)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train_dataset, loss=loss,
                                     evaluator=evaluator)
    resume = None if ns.resume is None else (True if ns.resume == "latest" else ns.resume)
    train_began = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    report["training"] = {"steps": output.global_step, "train_loss": output.training_loss,
                          "runtime_s": time.perf_counter() - train_began, **output.metrics, **peak_memory(),
                          "log_history": trainer.state.log_history}
    if not state.is_main_process:
        return report

    model = trainer.model
    model.eval()
    model.max_seq_length = context
    if ns.lora:
        adapter_dir = out / "adapter"
        model.save_pretrained(str(adapter_dir))
        if ns.merge:
            del trainer
            model = merge_lora(model, adapter_dir, start)

    logger.info("Evaluating and recalibrating the fine-tuned model on the held-out queries")
    report["after"] = ranking_metrics(model, heldout, ns.relevance_level, ns.max_batch_tokens)
    report["calibration"] = recalibrate(model, heldout, ns.relevance_level, ns.max_batch_tokens, ns.seed)
    # An unmerged adapter loads the base model's config, so it cannot carry a new temperature and bias.
    report["calibration_applied"] = not (ns.lora and not ns.merge)
    if report["calibration_applied"]:
        model.model.config.score_temperature = report["calibration"]["temperature"]
        model.model.config.score_bias = report["calibration"]["bias"]
    else:
        logger.warning("The adapter keeps the base model's score_temperature/score_bias; use --merge to ship the "
                       "refitted T=%.4g, b=%.4g", report["calibration"]["temperature"], report["calibration"]["bias"])

    final = out / "final"
    if final.exists():
        shutil.rmtree(final)
    if ns.lora and not ns.merge:
        shutil.copytree(out / "adapter", final)
    else:
        model.save_pretrained(str(final))
        report["package_files_added"] = complete_package(final)
    write_model_card(final, model, ns, start, report)

    # The saved folder must score as the in-memory model does.
    probe = heldout.labelled_pairs(ns.relevance_level)[0][:16]
    expected = score_texts(model, probe, output="logit")
    reloaded = load_cross_encoder(str(final), device=str(model.device), dtype=str(model.model.dtype).split(".")[-1])
    report["reload_max_abs_diff"] = float(np.abs(score_texts(reloaded, probe, output="logit") - expected).max())
    logger.info("Reloaded %s: max |logit difference| %.3g", final, report["reload_max_abs_diff"])
    (out / "probe.json").write_text(json.dumps({"pairs": probe, "logits": expected.tolist()}) + "\n")

    report["wall_time_s"] = time.perf_counter() - began
    report["memory"] = peak_memory()
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    logger.info("NDCG@10 on the held-out queries: %.4f -> %.4f (first stage %.4f); T=%.4g b=%.4g; wrote %s",
                report["before"]["ndcg@10"], report["after"]["ndcg@10"], report["first_stage"]["ndcg@10"],
                report["calibration"]["temperature"], report["calibration"]["bias"], final)
    return report


if __name__ == "__main__":
    main()
