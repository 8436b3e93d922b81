"""The `zerank` command: subcommands, fast help (no torch import before parsing), usage errors."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from zerank.cli import COMMANDS, main, parse

PROBE = """
import json, sys
from zerank.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "sentence_transformers":
                  "sentence_transformers" in sys.modules}))
"""


def run_cli(*argv):
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("build", "evaluate", "calibrate", "finetune", "publish", "serve", "export", "bench"):
        assert name in COMMANDS and f"\n  {name} " in out


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - {"finetune"}))  # finetune's trainer arguments need torch
def test_subcommand_help_imports_no_torch(name):
    status, result = run_cli(name, "--help")
    assert status == {"code": 0, "torch": False, "sentence_transformers": False}, result.stderr[-2000:]
    assert f"usage: zerank {name}" in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["build", "--out", "x"], "exactly one of --base and --random"),
        (["evaluate", "--data", "d", "--output-dir", "o"], "the following arguments are required: --model"),
        (["serve", "--model", "m", "--host", "0.0.0.0"], "is not a loopback address"),
        (["publish", "--folder", "f", "--repo", "not a repo"], "--repo must look like org/name"),
        (["build", "--random", "tiny", "--tokenizer", "t", "--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_arguments_are_usage_errors_before_any_heavy_import(argv, message):
    status, result = run_cli(*argv)
    assert status["code"] == 2 and not status["torch"], result.stderr[-2000:]
    assert message in result.stderr


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "zerank"  # beside the interpreter of this environment
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("zerank ")


def test_finetune_help_lists_the_trainer_flags_itself():
    result = subprocess.run([sys.executable, "-m", "zerank.cli", "finetune", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--per-device-train-batch-size" in result.stdout and "--learning-rate" in result.stdout
    assert "--trainer-help" not in result.stdout


# --- --config FILE: a file's values are the defaults, the command line overrides them ---


def bm25_folder(root: Path) -> Path:
    """A two-document BEIR folder (enough for parsing: the arguments only check that files exist)."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "cats"}\n{"_id": "d2", "text": "dogs"}\n')
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "cats"}\n')
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


def test_args_json_runs_the_same_command_again(tmp_path):
    data = bm25_folder(tmp_path / "beir")
    first = parse("bm25", ["--data", str(data), "--top-k", "7", "--bm25-k1", "0.9", "--output", str(tmp_path / "r")])
    args = {k: str(v) if isinstance(v, Path) else v for obj in first for k, v in dataclasses.asdict(obj).items()}
    (tmp_path / "args.json").write_text(json.dumps({"args": args, "versions": {"zerank": "0"}}))
    assert parse("bm25", ["--config", str(tmp_path / "args.json")]) == first


def test_config_values_are_defaults_the_command_line_overrides(tmp_path):
    data = bm25_folder(tmp_path / "beir")
    (tmp_path / "recipe.yaml").write_text(f"data: {data}\ntop-k: 5\nbm25_b: 0.5\n")
    bm25, first_stage = parse("bm25", ["--config", str(tmp_path / "recipe.yaml"), "--top-k", "9"])
    assert (bm25.data, bm25.top_k, first_stage.bm25_b, first_stage.bm25_k1) == (data, 9, 0.5, 1.2)


def test_config_unknown_key_is_a_usage_error_naming_it(tmp_path):
    (tmp_path / "recipe.json").write_text(json.dumps({"data": str(tmp_path), "top_kk": 5}))
    status, result = run_cli("bm25", "--config", str(tmp_path / "recipe.json"))
    assert status["code"] == 2 and not status["torch"], result.stderr[-2000:]
    assert "unknown key 'top_kk'" in result.stderr
