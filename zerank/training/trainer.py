"""Fine-tune zerank on your data with sentence-transformers' CrossEncoderTrainer, then recalibrate and package it.

Starts from a zerank folder or hub id (or a Qwen3 causal-LM checkpoint, which is first built into <out>/base by
:func:`zerank.packaging.convert.build`). Training examples (:mod:`zerank.training.examples`) are queries with their
relevant documents and hard negatives, mined from a first stage (BM25 by default) of a BEIR folder, or read from
jsonl. A held-out part is kept aside: NDCG@10 of reranking its first-stage candidates is measured before and after
training (trec_eval, as ``zerank evaluate``), it drives the CrossEncoderRerankingEvaluator during training, and the
score temperature and bias are refitted on it at the end (as ``zerank calibrate``), so a score keeps its meaning
after fine-tuning.

Command:
    zerank finetune --model build/zerank-1 --data ../shared/data/ir/scifact --output-dir runs/ft \\
        [--max-steps 1000] [--loss bce|lambda|listnet|ranknet|elo-mse --elo elo.jsonl] [--lora [--merge]]
    # one or many GPUs: the usual launchers, nothing custom
    accelerate launch -m zerank.cli finetune --model ... --data ... --output-dir ...
    torchrun --nproc-per-node 8 -m zerank.cli finetune --model ... --data ... --output-dir ...

Every field of sentence-transformers' ``CrossEncoderTrainingArguments`` is a flag as well (``--max-steps``,
``--num-train-epochs``, ``--learning-rate``, ``--per-device-train-batch-size``, ``--warmup-steps``, ``--bf16``,
``--gradient-checkpointing``, ``--resume-from-checkpoint latest``, ``--use-cpu``, ``--seed``, ...; ``zerank finetune
--help`` lists them), parsed in one pass with the command's own flags into
:class:`zerank.training.training_args.ZerankTrainingArguments`, which holds the defaults that differ from the
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
document of --elo's training queries is an example, no labels or negatives needed; see
:mod:`zerank.training.zelo_commands`); :mod:`zerank.training.losses` builds them.

Outputs in --output-dir (files written atomically): final/ (a complete zerank package with a model card that lists
the training details; with --lora and no --merge, the adapter), adapter/ (with --lora), checkpoints/, report.json
(before/after metrics, calibration, timings), args.json (resolved arguments and library versions), probe.json (a
few held-out pairs and the final model's logits for them, to check a copy of the package).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, PeftModel
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from transformers import set_seed

from zerank.data.readers import holdout_mask
from zerank.evaluation.calibration import calibrate
from zerank.evaluation.evaluate import cross_encoder_scorer, rerank
from zerank.evaluation.first_stage import FirstStage
from zerank.evaluation.metrics import evaluate_run
from zerank.model.loading import load_reranker, peak_memory, resolve_dtype
from zerank.model.package import read_config
from zerank.model.scoring import score_pairs
from zerank.packaging.arguments import BuildArguments
from zerank.packaging.convert import build
from zerank.training.arguments import FinetuneArguments
from zerank.training.examples import HeldOut, beir_data, elo_data, jsonl_data
from zerank.training.final_package import save_final
from zerank.training.losses import make_loss, training_dataset
from zerank.training.training_args import ZerankTrainingArguments, resume_target
from zerank.utils.arguments import FirstStageArguments
from zerank.utils.system import atomic_write_json, library_versions

logger = logging.getLogger(__name__)

PROBE_SIZE = 16  # held-out pairs scored by the final model and its reloaded copy (probe.json)


# ---------------------------------------------------------------------------------------------------------------
# Model: start, metrics, calibration, LoRA
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



# ---------------------------------------------------------------------------------------------------------------
# Main: the steps of a run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneRun:
    """What the steps of one ``zerank finetune`` run share."""

    args: FinetuneArguments
    training_args: ZerankTrainingArguments
    state: PartialState  # this process among the run's processes
    start: str  # the zerank model training starts from (see resolve_start)
    heldout: HeldOut
    began: float  # time.perf_counter() when the run began

    @property
    def out(self) -> Path:
        return self.training_args.run_dir

    @property
    def seed(self) -> int:
        return self.training_args.seed


def set_up(args: FinetuneArguments, training_args: ZerankTrainingArguments) -> tuple[PartialState, str]:
    """This process's state (everything seeded), the output folder and the zerank model to start from.

    A Qwen3 causal LM is built into ``<output-dir>/base`` by the main process first; the others then reuse it.
    """
    state = PartialState(cpu=bool(training_args.use_cpu))
    set_seed(training_args.seed)
    training_args.run_dir.mkdir(parents=True, exist_ok=True)
    with state.main_process_first():
        start = resolve_start(args.model, training_args.run_dir, args.tokenizer)
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


def load_model(run: FinetuneRun) -> tuple[CrossEncoder, int | None]:
    """The start model on this process's device, truncating at --max-length (embeddings frozen with
    --freeze-embeddings), with its own max_seq_length, which the package keeps."""
    args = run.args
    # Full fine-tuning keeps float32 weights (--bf16 is mixed precision); LoRA trains in the usual "auto" dtype.
    device = "cpu" if run.training_args.use_cpu else str(run.state.device)
    dtype = resolve_dtype(args.model_dtype if args.model_dtype != "auto" or args.lora else "float32", device)
    # Each process loads its copy on its own device (cuda:<local rank> under accelerate/torchrun).
    model = load_reranker(run.start, device=device, dtype=dtype)
    context = model.max_seq_length
    model.max_seq_length = min(args.max_length, context or args.max_length)
    if args.freeze_embeddings:
        model.model.get_input_embeddings().weight.requires_grad_(False)
    return model, context


def trainer_setup(run: FinetuneRun, train_rows: int) -> tuple[CrossEncoderTrainingArguments,
                                                             CrossEncoderRerankingEvaluator | None]:
    """The trainer's arguments and the held-out evaluator (None when no held-out query has a positive to rank).

    Without --max-steps, the steps of --num-train-epochs over ``train_rows`` rows set the evaluation and checkpoint
    interval (see ZerankTrainingArguments.trainer_arguments).
    """
    training_args = run.training_args
    samples = run.heldout.evaluator_samples(run.args.relevance_level)
    evaluator = CrossEncoderRerankingEvaluator(samples, at_k=10, always_rerank_positives=False, name="heldout",
                                               batch_size=training_args.per_device_eval_batch_size) \
        if samples else None
    rows_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                     * run.state.num_processes)
    steps = training_args.max_steps if training_args.max_steps > 0 else \
        int(training_args.num_train_epochs * np.ceil(train_rows / rows_per_step))
    return training_args.trainer_arguments(steps, evaluator is not None), evaluator


def write_args(run: FinetuneRun, trainer_args: CrossEncoderTrainingArguments, first_stage_args: FirstStageArguments,
               first_stage: FirstStage) -> None:
    """args.json: the command's arguments (all three dataclasses, as parsed), the trainer's settings of the run (with
    the intervals and the checkpoint folder chosen), the start model, the number of processes, the first stage and
    the library versions."""
    parsed = {**dataclasses.asdict(run.args), **dataclasses.asdict(first_stage_args)}
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in parsed.items()}
    # to_dict() masks the *_token fields ("<HUB_TOKEN>"): left out, so the file can be run again with --config.
    resolved.update({k: v for k, v in run.training_args.to_dict().items() if not k.endswith("_token")})
    atomic_write_json(run.out / "args.json", {
        "args": resolved, "trainer": trainer_args.to_dict(), "start": run.start,
        "processes": run.state.num_processes, "first_stage": first_stage.settings(), "versions": library_versions(),
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


def evaluate_and_recalibrate(run: FinetuneRun, model: CrossEncoder) -> dict:
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


def main(args: FinetuneArguments, first_stage_args: FirstStageArguments,
         training_args: ZerankTrainingArguments) -> dict:
    """``zerank finetune``: train, evaluate before and after, recalibrate, write the package; returns the report.

    Every process trains; the main process alone evaluates and writes the files.
    """
    began = time.perf_counter()
    state, start = set_up(args, training_args)
    first_stage = FirstStage.from_arguments(first_stage_args)
    train_dataset, heldout, data = load_data(args, first_stage, training_args.seed)
    run = FinetuneRun(args, training_args, state, start, heldout, began)
    model, context = load_model(run)
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
    report.update(evaluate_and_recalibrate(run, model))
    final = save_final(run.out, model, args, trainer_args, start, report)
    report["reload_max_abs_diff"] = check_reload(run, model, final)
    write_report(run, report, final)
    return report
