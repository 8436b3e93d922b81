"""The ``zerank`` command: one entry point, one subcommand per task.

Usage:
    zerank build --random tiny --tokenizer DIR --out build/tiny
    zerank evaluate --model build/tiny --data DATA --output-dir runs/eval
    zerank SUBCOMMAND --help

Parsing imports only the standard library and ``transformers.HfArgumentParser`` (no torch), so ``--help`` and
argument errors answer at once; the subcommand's library module is imported after its arguments are parsed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zerank import __version__
from zerank.bench import arguments as bench_arguments
from zerank.evaluation import arguments as evaluation_arguments
from zerank.export import arguments as export_arguments
from zerank.packaging import arguments as packaging_arguments
from zerank.rerank import arguments as rerank_arguments
from zerank.serving import arguments as serving_arguments
from zerank.training import arguments as training_arguments
from zerank.utils import arguments as utils_arguments


@dataclass(frozen=True)
class Command:
    help: str
    arguments: tuple[type, ...]
    run: str  # "module:function", called with the parsed dataclasses (and the unparsed strings, if it takes extras)
    takes_extra: bool = False
    epilog: str | None = None
    extra_install: str | None = None  # the pip extra whose packages the command imports
    check: Callable[..., None] | None = None  # a check across the parsed dataclasses (raises ValueError)
    extra_help: tuple[str, str] | None = None  # (flag, "module:function") printing more help, needing no arguments


COMMANDS: dict[str, Command] = {
    "build": Command("Convert a Qwen3 causal LM (or random weights of a shape) into a verified zerank package.",
                     (packaging_arguments.BuildArguments,), "zerank.packaging.convert:main"),
    "export": Command("Export a zerank package for another runtime (vLLM, ONNX Runtime, OpenVINO), parity-checked.",
                      (export_arguments.ExportArguments,), "zerank.export.exporter:main", extra_install="export"),
    "evaluate": Command("Rerank a first stage's candidates on a BEIR folder and report NDCG@10, MRR@10, recall.",
                        (evaluation_arguments.EvaluateArguments, utils_arguments.ModelArguments, utils_arguments.ScoringArguments,
                         utils_arguments.FirstStageArguments), "zerank.evaluation.evaluate:main", extra_install="eval"),
    "calibrate": Command("Fit score_temperature and score_bias on labelled pairs; report calibration.",
                         (evaluation_arguments.CalibrateArguments, utils_arguments.ModelArguments, utils_arguments.ScoringArguments,
                          utils_arguments.FirstStageArguments), "zerank.evaluation.calibration:main", extra_install="eval",
                         check=evaluation_arguments.check_calibrate),
    "rerank": Command("Rerank a big candidate set in resumable shards, in one process or on a Ray Data actor pool.",
                      (rerank_arguments.RerankArguments, utils_arguments.ModelArguments, utils_arguments.ScoringArguments),
                      "zerank.rerank.batch:main", extra_install="rerank"),
    "finetune": Command(
        "Fine-tune on your data (CrossEncoderTrainer), refit the calibration, write a complete package.",
        (training_arguments.FinetuneArguments, utils_arguments.FirstStageArguments), "zerank.training.trainer:main", takes_extra=True,
        extra_install="eval,train",
        extra_help=("--trainer-help", "zerank.training.trainer:print_trainer_help"),
        epilog="Every field of sentence-transformers' CrossEncoderTrainingArguments is a flag too, for example "
               "--max-steps, --num-train-epochs, --learning-rate (2e-5), --per-device-train-batch-size (16), "
               "--gradient-accumulation-steps, --warmup-steps (0.1: a share of the steps), --weight-decay (0.01), "
               "--optim, --bf16/--fp16 (default: bf16 on a GPU that supports it), --gradient-checkpointing, "
               "--eval-steps, --save-steps, --save-total-limit (2), --logging-steps (10), "
               "--resume-from-checkpoint (latest or a folder), --report-to (none), --use-cpu, --seed. "
               "`zerank finetune --trainer-help` lists them all (it imports torch).",
    ),
    "publish": Command("Validate a built folder, upload it in one commit, verify the commit and tag it.",
                       (packaging_arguments.PublishArguments,), "zerank.packaging.publish:main"),
    "serve": Command("Serve a zerank model with ZeroEntropy's rerank API.",
                     (serving_arguments.ServeArguments, utils_arguments.ModelArguments), "zerank.serving.server:main",
                     extra_install="serve"),
    "bench": Command("Benchmark zerank against sentence-transformers' native reranker on identical weights.",
                     (bench_arguments.BenchArguments,), "zerank.bench.speed:main"),
    "bench-serve": Command("Benchmark a rerank server under concurrent clients.",
                           (bench_arguments.BenchServeArguments,), "zerank.bench.serve_load:main", extra_install="serve"),
    "bm25": Command("BM25 first-stage figures of a BEIR folder.",
                    (evaluation_arguments.Bm25Arguments, utils_arguments.FirstStageArguments), "zerank.evaluation.first_stage:main",
                    extra_install="eval"),
    "demo": Command("Build the tiny random model and score an example through CrossEncoder (offline).",
                    (packaging_arguments.DemoArguments,), "zerank.packaging.demo:main"),
    "pairs": Command("zELO step 1: the document pairs to judge per query (random cycles over first-stage candidates).",
                     (training_arguments.PairsArguments, utils_arguments.FirstStageArguments), "zerank.training.zelo_commands:pairs_main",
                     extra_install="eval"),
    "judge": Command("zELO step 2 (built-in judge): judge the pairs with a zerank model's pointwise scores.",
                     (training_arguments.JudgeArguments, utils_arguments.ModelArguments, utils_arguments.ScoringArguments),
                     "zerank.training.zelo_commands:judge_main", extra_install="eval"),
    "elo": Command("zELO step 3: Elo scores with standard errors from pairwise judgments, on one scale across queries.",
                   (training_arguments.EloArguments,), "zerank.training.zelo_commands:elo_main", extra_install="eval"),
}


def command_parser(name: str) -> argparse.ArgumentParser:
    # Deferred: `zerank --help` and `zerank --version` answer without importing transformers.
    from transformers import HfArgumentParser

    command = COMMANDS[name]
    return HfArgumentParser(command.arguments, prog=f"zerank {name}", description=command.help,
                            epilog=command.epilog)


def parse(name: str, argv: Sequence[str]) -> tuple:
    """The dataclasses of ``zerank NAME argv`` (plus the strings left over, for commands that take extras)."""
    parser = command_parser(name)
    command = COMMANDS[name]
    try:
        *parsed, extra = parser.parse_args_into_dataclasses(list(argv), return_remaining_strings=True,
                                                           look_for_args_file=False)
        if command.check is not None:
            command.check(*parsed)
    except ValueError as e:  # a dataclass's own validation, or the command's check across them
        parser.error(str(e))
    if extra and not command.takes_extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return (*parsed, extra) if command.takes_extra else tuple(parsed)


def main(argv: Sequence[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="zerank", description="zerank: an open, self-hostable LLM reranker.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<12} {c.help}" for name, c in COMMANDS.items())
        + "\n\n`zerank COMMAND --help` lists a command's flags.",
    )
    top.add_argument("--version", action="version", version=f"zerank {__version__}")
    top.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    top.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = top.parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    command = COMMANDS[ns.command]
    if command.extra_help is not None and command.extra_help[0] in argv[1:]:
        return load(ns.command, command.extra_help[1])()
    parsed = parse(ns.command, argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return load(ns.command, command.run)(*parsed)


def load(name: str, target: str) -> Callable:
    """The function ``module:function`` of command ``name``; a missing optional dependency names its pip extra."""
    module, function = target.split(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as e:
        extra = COMMANDS[name].extra_install
        if extra is None:
            raise
        sys.exit(f"zerank {name} needs the package {e.name!r}: pip install 'zerank[{extra}]'")


def entry_point() -> None:
    """Console-script entry: a command's integer result is the exit code; bad input or an unreachable server a
    one-line error (exit 1)."""
    try:
        result = main()
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as e:
        logging.getLogger("zerank").debug("command failed", exc_info=True)
        sys.exit(f"zerank: error: {e}")
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    entry_point()
