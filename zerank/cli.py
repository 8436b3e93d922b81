"""The ``zerank`` command: one entry point, one subcommand per task.

Usage:
    zerank build --random tiny --out build/tiny
    zerank evaluate --model build/tiny --data DATA --output-dir runs/eval
    zerank evaluate --config recipe.yaml --output-dir runs/other   (the file's values, overridden by the flags)
    zerank SUBCOMMAND --help

Each command's arguments are dataclasses, named here as ``"module:Class"`` and imported only when that command is
parsed. They are standard library only (except finetune's trainer arguments), so ``--help`` and argument errors
answer without importing torch; the subcommand's library module is imported after its arguments are parsed.

:class:`CommandParser` is ``transformers.HfArgumentParser`` rendered like a hand-written CLI: dash spelling in usage
and help (the underscore spelling is still accepted), booleans as one ``--flag / --no-flag`` switch, each default
shown once, required flags marked, and ``--config FILE`` (JSON or YAML) supplying defaults, as TRL's ``--config``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerank import __version__


@dataclass(frozen=True)
class Command:
    help: str
    arguments: tuple[str, ...]  # "module:Class" of each dataclass, resolved when the command is parsed
    run: str  # "module:function", called with the parsed dataclasses
    extra_install: str | None = None  # the pip extra whose packages the command imports
    check: str | None = None  # "module:function": a check across the parsed dataclasses (raises ValueError)


MODEL = "zerank.utils.arguments:ModelArguments"
SCORING = "zerank.utils.arguments:ScoringArguments"
FIRST_STAGE = "zerank.utils.arguments:FirstStageArguments"
CHUNK = "zerank.utils.long_document_arguments:ChunkArguments"

COMMANDS: dict[str, Command] = {
    "build": Command("Convert a Qwen3 causal LM (or random weights of a shape) into a verified zerank package.",
                     ("zerank.packaging.arguments:BuildArguments",), "zerank.packaging.convert:main"),
    "export": Command("Export a zerank package for another runtime (vLLM, ONNX Runtime, OpenVINO), parity-checked.",
                      ("zerank.export.arguments:ExportArguments",), "zerank.export.exporter:main",
                      extra_install="export"),
    "evaluate": Command("Rerank a first stage's candidates on a BEIR folder and report NDCG@10, MRR@10, recall.",
                        ("zerank.evaluation.arguments:EvaluateArguments", MODEL, SCORING, FIRST_STAGE, CHUNK),
                        "zerank.evaluation.evaluate:main", extra_install="eval"),
    "calibrate": Command("Fit score_temperature and score_bias on labelled pairs; report calibration.",
                         ("zerank.evaluation.arguments:CalibrateArguments", MODEL, SCORING, FIRST_STAGE),
                         "zerank.evaluation.calibration:main", extra_install="eval",
                         check="zerank.evaluation.arguments:check_calibrate"),
    "rerank": Command("Rerank a big candidate set in resumable shards, in one process or on a Ray Data actor pool.",
                      ("zerank.rerank.arguments:RerankArguments", MODEL, SCORING, CHUNK), "zerank.rerank.batch:main",
                      extra_install="rerank"),
    "finetune": Command("Fine-tune on your data (CrossEncoderTrainer), refit the calibration, write a complete "
                        "package.",
                        ("zerank.training.arguments:FinetuneArguments", FIRST_STAGE,
                         "zerank.training.training_args:ZerankTrainingArguments"),
                        "zerank.training.trainer:main", extra_install="eval,train"),
    "publish": Command("Validate a built folder, upload it in one commit, verify the commit and tag it.",
                       ("zerank.packaging.arguments:PublishArguments",), "zerank.packaging.publish:main"),
    "serve": Command("Serve a zerank model with ZeroEntropy's rerank API.",
                     ("zerank.serving.arguments:ServeArguments", MODEL, CHUNK), "zerank.serving.app:main",
                     extra_install="serve"),
    "bench": Command("Benchmark zerank against sentence-transformers' native reranker on identical weights.",
                     ("zerank.bench.arguments:BenchArguments",), "zerank.bench.speed:main"),
    "bench-serve": Command("Benchmark a rerank server under concurrent clients.",
                           ("zerank.bench.arguments:BenchServeArguments",), "zerank.bench.serve_load:main",
                           extra_install="serve"),
    "bm25": Command("BM25 first-stage figures of a BEIR folder.",
                    ("zerank.evaluation.arguments:Bm25Arguments", FIRST_STAGE), "zerank.evaluation.first_stage:main",
                    extra_install="eval"),
    "demo": Command("Build the tiny random model and score an example through CrossEncoder (offline).",
                    ("zerank.packaging.arguments:DemoArguments",), "zerank.packaging.demo:main"),
    "pairs": Command("zELO step 1: the document pairs to judge per query (random cycles over first-stage candidates).",
                     ("zerank.training.arguments:PairsArguments", FIRST_STAGE),
                     "zerank.training.zelo_commands:pairs_main", extra_install="eval"),
    "judge": Command("zELO step 2 (built-in judge): judge the pairs with a zerank model's pointwise scores.",
                     ("zerank.training.arguments:JudgeArguments", MODEL, SCORING),
                     "zerank.training.zelo_commands:judge_main", extra_install="eval"),
    "elo": Command("zELO step 3: Elo scores with standard errors from pairwise judgments, on one scale across queries.",
                   ("zerank.training.arguments:EloArguments",), "zerank.training.zelo_commands:elo_main",
                   extra_install="eval"),
}


class Switch(argparse.Action):
    """A boolean flag: ``--name`` sets it, ``--no-name`` clears it (both spellings of each are accepted)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs):
        names = [option[2:] for option in option_strings]
        self.negations = list(dict.fromkeys([f"--no-{name}" for name in names]
                                            + [f"--no_{name}" for name in names if "-" not in name]))
        super().__init__([*option_strings, *self.negations], dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string not in self.negations)

    def format_usage(self) -> str:
        return f"{self.option_strings[0]} | {self.negations[0]}"


class HelpFormatter(argparse.HelpFormatter):
    """One spelling per flag (the dashed one), ``--flag / --no-flag`` for switches, the default shown once (unless
    the help text states it), "(required)" on required flags."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        if isinstance(action, Switch):
            return f"{action.option_strings[0]} / {action.negations[0]}"
        invocation = ", ".join([option for option in action.option_strings if "_" not in option]
                               or action.option_strings[:1])
        if action.nargs != 0:
            invocation += " " + self._format_args(action, self._get_default_metavar_for_optional(action))
        return invocation

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return f"{text} (required)".strip()
        default = action.default
        unstated = default is None or default is False or default == argparse.SUPPRESS or default in ([], {})
        if "default" in text.lower() or unstated or not action.option_strings:
            return text
        shown = "on" if default is True else "%(default)s"
        return f"{text} (default: {shown})".strip()


class _DashFirst:
    """What ``HfArgumentParser`` adds a field to, seen through: the dashed spelling first (usage and help show the
    first), and a boolean field's ``--name [BOOL]`` (plus ``--no_name``) as one :class:`Switch`."""

    def __init__(self, container):
        self.container = container
        self.switched = False

    def add_argument(self, *names: str, **kwargs):
        names = tuple(sorted(names, key=lambda name: "_" in name))
        if kwargs.get("action") == "store_false" and self.switched:
            return None  # the --no-name complement: the switch already has it
        default = kwargs.get("default")
        is_bool = kwargs.get("nargs") == "?" and kwargs.get("const") is True
        if is_bool and (default is None or isinstance(default, bool)):
            self.switched = True  # a bool field (a `bool | None` one keeps None, "auto", when neither is given)
            kwargs = {k: v for k, v in kwargs.items() if k not in ("nargs", "const", "type")}
            return self.container.add_argument(*names, action=Switch, **kwargs)
        return self.container.add_argument(*names, **kwargs)


def _command_parser_class() -> type:
    # Deferred: `zerank --help` and `zerank --version` answer without importing transformers.
    from transformers import HfArgumentParser

    class CommandParser(HfArgumentParser):
        """``HfArgumentParser`` with :class:`HelpFormatter`'s rendering and a ``--config FILE`` of defaults."""

        def __init__(self, dataclass_types, **kwargs):
            super().__init__(dataclass_types, formatter_class=HelpFormatter, **kwargs)
            self.add_argument("--config", type=Path, metavar="FILE",
                              help="JSON or YAML file of arguments (field names, underscores or dashes), for example "
                                   "a run's args.json; flags given on the command line override them.")

        @staticmethod
        def _parse_dataclass_field(parser, field):
            HfArgumentParser._parse_dataclass_field(_DashFirst(parser), field)

        def parse_command_line(self, argv: Sequence[str]) -> tuple:
            """The dataclasses of ``argv``, over the defaults of its ``--config FILE``; ValueError for a bad file."""
            path = self.config_file(argv)
            if path is not None:
                self.apply_config(path)
            *parsed, extra = self.parse_args_into_dataclasses(list(argv), return_remaining_strings=True,
                                                              look_for_args_file=False)
            if extra:
                self.error(f"unrecognized arguments: {' '.join(extra)}")
            return tuple(parsed[:len(self.dataclass_types)])  # without the namespace left holding --config

        @staticmethod
        def config_file(argv: Sequence[str]) -> Path | None:
            config = argparse.ArgumentParser(add_help=False)
            config.add_argument("--config", type=Path)
            return config.parse_known_args(list(argv))[0].config

        def apply_config(self, path: Path) -> None:
            """Make the values in ``path`` the defaults (a required flag the file gives is no longer required)."""
            values = read_config(path)
            actions = {action.dest: action for action in self._actions
                       if action.option_strings and action.dest not in ("help", "config")}
            unknown = sorted(set(values) - set(actions))
            if unknown:
                raise ValueError(f"--config {path}: unknown key {unknown[0]!r} (not an argument of {self.prog})")
            for dest in values:
                actions[dest].required = False
            self.set_defaults(**values)

    return CommandParser


def resolve(target: str) -> Any:
    """The object named ``module:name``."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``zerank NAME``: its dataclasses' flags and ``--config``."""
    command = COMMANDS[name]
    return _command_parser_class()([resolve(target) for target in command.arguments], prog=f"zerank {name}",
                                   description=command.help)


def read_config(path: Path) -> dict[str, Any]:
    """The arguments in a JSON or YAML file, keys in field spelling (an ``args.json`` a run wrote: its ``args``)."""
    if not path.is_file():
        raise ValueError(f"--config {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml  # a dependency of transformers and huggingface_hub

        values = yaml.safe_load(text)
    else:
        values = json.loads(text)
    if isinstance(values, dict) and isinstance(values.get("args"), dict) and "versions" in values:
        values = values["args"]  # the args.json of a run: {"args": ..., "versions": ..., ...}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of argument names to values")
    return {key.replace("-", "_"): value for key, value in values.items()}


def parse(name: str, argv: Sequence[str]) -> tuple:
    """The dataclasses of ``zerank NAME argv``."""
    parser = command_parser(name)
    command = COMMANDS[name]
    try:
        parsed = parser.parse_command_line(argv)
        if command.check is not None:
            resolve(command.check)(*parsed)
    except ValueError as e:  # a bad --config, a dataclass's own validation, or the command's check across them
        parser.error(str(e))
    return parsed


def main(argv: Sequence[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="zerank", description="zerank: an open, self-hostable LLM reranker.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<12} {c.help}" for name, c in COMMANDS.items())
        + "\n\n`zerank COMMAND --help` lists a command's flags; `zerank COMMAND --config FILE` reads them from a file.",
    )
    top.add_argument("--version", action="version", version=f"zerank {__version__}")
    top.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="the command to run (below)")
    top.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ns = top.parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    parsed = parse(ns.command, argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return load(ns.command, COMMANDS[ns.command].run)(*parsed)


def load(name: str, target: str) -> Callable:
    """The function ``module:function`` of command ``name``; a missing optional dependency names its pip extra."""
    try:
        return resolve(target)
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
