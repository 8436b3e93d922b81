"""The run's final folder: a complete zerank package (or the LoRA adapter) with a model card that lists the
training, the refitted calibration and the held-out evaluation."""

from __future__ import annotations

import shutil
from pathlib import Path

from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

from zerank.evaluation.calibration import calibration_markdown
from zerank.evaluation.evaluate import evaluation_markdown
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
from zerank.training.arguments import FinetuneArguments
from zerank.utils.system import atomic_write_bytes, atomic_write_text


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
