"""The `zerank` command: subcommands, fast help (no torch import before parsing), usage errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zerank.cli import COMMANDS, main

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


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help_imports_no_torch(name):
    status, result = run_cli(name, "--help")
    assert status == {"code": 0, "torch": False, "sentence_transformers": False}, result.stderr[-2000:]
    assert f"usage: zerank {name}" in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["build", "--random", "tiny", "--out", "x"], "--random needs --tokenizer"),
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


def test_finetune_trainer_help_needs_no_other_argument():
    result = subprocess.run([sys.executable, "-m", "zerank.cli", "finetune", "--trainer-help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--per_device_train_batch_size" in result.stdout and "--learning_rate" in result.stdout
