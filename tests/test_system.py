"""zerank.utils.system: atomic writes and staged output folders, including processes killed (SIGKILL) midway.

The kill tests run the real commands in subprocesses and kill them by PID at chosen points. A point is reached
deterministically: the subprocess wraps one function on the path (say ``convert.load_reranker``, called by the
build's verification) so that it announces itself and waits, and the test kills it there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zerank.utils.system import STAGING_MARK, atomic_write_bytes, staged_output_dir


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def staging_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}{STAGING_MARK}"))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- staged_output_dir, in-process ---


def test_staged_output_dir_renames_only_a_finished_block(tmp_path):
    out = tmp_path / "out"
    with staged_output_dir(out, overwrite=False) as staging:
        (staging / "a.txt").write_text("new")
        assert not out.exists() and staging.parent == out.parent and staging.name.startswith(".out.staging-")
    assert (out / "a.txt").read_text() == "new" and staging_folders(out) == []

    with pytest.raises(FileExistsError, match="--overwrite"), staged_output_dir(out, overwrite=False):
        pass
    with pytest.raises(RuntimeError, match="verification failed"), staged_output_dir(out, overwrite=True) as staging:
        (staging / "a.txt").write_text("unverified")
        assert (out / "a.txt").read_text() == "new"  # the old folder stays until the new one is done
        raise RuntimeError("verification failed")
    assert snapshot(out) == {"a.txt": hashlib.sha256(b"new").hexdigest()} and staging_folders(out) == []

    with pytest.raises(RuntimeError), staged_output_dir(tmp_path / "fresh", overwrite=False) as staging:
        (staging / "a.txt").write_text("unverified")
        raise RuntimeError("verification failed")
    assert not (tmp_path / "fresh").exists() and staging_folders(tmp_path / "fresh") == []

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"), staged_output_dir(tmp_path / "file", overwrite=True):
        pass


def test_staged_output_dir_cleans_up_after_killed_runs_only(tmp_path):
    out = tmp_path / "out[1]"  # glob characters in the name
    out.mkdir()
    (out / "a.txt").write_text("old")
    dead, alive = dead_pid(), os.getppid()
    left_by_killed = tmp_path / f".out[1]{STAGING_MARK}{dead}-0000abcd"
    in_progress = tmp_path / f".out[1]{STAGING_MARK}{alive}-0000abcd"
    for folder in (left_by_killed, in_progress):
        folder.mkdir()
        (folder / "a.txt").write_text("partial")
    with staged_output_dir(out, overwrite=True) as staging:
        (staging / "a.txt").write_text("new")
    assert not left_by_killed.exists(), "a killed run's staging folder is removed by the next run"
    assert in_progress.exists(), "a running process's staging folder is left alone"
    assert (out / "a.txt").read_text() == "new"


def test_a_run_killed_between_its_two_renames_gets_the_old_folder_back(tmp_path):
    out = tmp_path / "out"
    dead = dead_pid()
    moved_aside = tmp_path / f".out{STAGING_MARK}old-{dead}-0000abcd"  # the previous out, moved aside
    finished = tmp_path / f".out{STAGING_MARK}{dead}-1111abcd"  # the new folder, not yet renamed
    for folder, text in ((moved_aside, "old"), (finished, "new")):
        folder.mkdir()
        (folder / "a.txt").write_text(text)
    with pytest.raises(FileExistsError, match="--overwrite"), staged_output_dir(out, overwrite=False):
        pass
    assert (out / "a.txt").read_text() == "old" and staging_folders(out) == []


# --- atomic writes under SIGKILL ---

WRITER = r"""
import sys
from zerank.utils.system import atomic_write_bytes
target, size = sys.argv[1], int(sys.argv[2])
payloads = [bytes([i]) * size for i in (1, 2)]
atomic_write_bytes(target, payloads[0])
print("READY", flush=True)
i = 0
while True:
    i += 1
    atomic_write_bytes(target, payloads[i % 2])
"""


def test_atomic_write_leaves_the_old_or_the_new_file_when_killed(tmp_path):
    """A writer rewrites an 8 MB file in a loop; killed at three moments, the file is always one whole payload."""
    target, size = tmp_path / "data.bin", 8 << 20
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.05, 0.3, size=3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(size)], stdout=subprocess.PIPE,
                                  text=True)
        assert writer.stdout.readline().strip() == "READY"
        try:
            writer.wait(timeout=delay)  # let it write for a random moment: the kill lands mid-write
        except subprocess.TimeoutExpired:
            pass
        os.kill(writer.pid, signal.SIGKILL)
        assert writer.wait() == -signal.SIGKILL
        data = target.read_bytes()
        assert len(data) == size and data in (b"\1" * size, b"\2" * size)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["data.bin"]


def test_atomic_write_bytes_replaces_and_cleans_up(tmp_path):
    path = atomic_write_bytes(tmp_path / "sub" / "x.json", b"{}")
    assert path.read_bytes() == b"{}" and list(path.parent.iterdir()) == [path]
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")
    assert path.read_bytes() == b"{}" and list(path.parent.iterdir()) == [path]


# --- zerank build killed at several points ---

# A process that imports zerank once, then for each line `POINT ARGS...` on stdin forks a child that runs
# `zerank build ARGS...` with one function of the build paused at its Nth call (counting only the calls whose
# first argument's file name starts with PREFIX, when one is given): the child prints `PAUSED PID` and waits to be
# killed. The parent prints `EXIT STATUS` when the child is gone.
PAUSING_BUILDS = r"""
import os, shlex, signal, sys
import zerank.cli
import zerank.packaging.convert
import zerank.utils.system

def run_paused(point, argv):
    module, name, nth, prefix = (point + ":").split(":")[:4]
    owner = {"convert": zerank.packaging.convert, "os": zerank.utils.system.os}[module]
    original, calls = getattr(owner, name), []

    def paused(*args, **kwargs):
        if os.path.basename(str(args[0] if args else "")).startswith(prefix):
            calls.append(args)
            if len(calls) == int(nth):
                print("PAUSED", os.getpid(), flush=True)
                signal.pause()
        return original(*args, **kwargs)

    setattr(owner, name, paused)
    sys.argv = ["zerank", "build", *argv]
    zerank.cli.entry_point()

for line in sys.stdin:
    point, *argv = shlex.split(line)
    pid = os.fork()
    if pid == 0:
        try:
            run_paused(point, argv)
        finally:
            os._exit(0)
    print("EXIT", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class PausingBuilds:
    """Runs `zerank build --random tiny ... --overwrite` to a point, then kills it by PID (SIGKILL)."""

    def __init__(self, tokenizer_dir: Path, tmp: Path):
        self.args = ["--random", "tiny", "--tokenizer", str(tokenizer_dir), "--overwrite", "--max-shard-size-mb", "1"]
        self.log = tmp / "builds.log"
        env = {**os.environ, "TMPDIR": str(tmp)}  # the random base's temporary folder, left behind by a kill
        self.process = subprocess.Popen([sys.executable, "-c", PAUSING_BUILDS], env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("w"))

    def kill_at(self, point: str, out: Path) -> None:
        """``point``: module:function:call number[:file name prefix], where the build is killed."""
        self.process.stdin.write(shlex.join([point, *self.args, "--out", str(out)]) + "\n")
        self.process.stdin.flush()
        word, value = self.process.stdout.readline().split()
        if word != "PAUSED":
            pytest.fail(f"the build never reached {point} (exit {value}):\n{self.log.read_text()[-3000:]}")
        os.kill(int(value), signal.SIGKILL)
        assert self.process.stdout.readline().split() == ["EXIT", str(-signal.SIGKILL)]

    def close(self) -> None:
        self.process.stdin.close()
        assert self.process.wait() == 0


def test_killed_builds_leave_the_previous_build_in_place(tiny_model_dir, tokenizer_dir, tmp_path, monkeypatch):
    """SIGKILL during weight writing, during verification and between the final two renames: --out keeps the
    previous build (or, after the last, gets it back on the next run), no unverified folder is ever at --out, and
    the next run removes what the killed one left. A later build whose verification fails changes nothing."""
    from sentence_transformers import CrossEncoder

    from zerank.packaging import convert
    from zerank.packaging.arguments import BuildArguments

    out = tmp_path / "release" / "model"
    shutil.copytree(tiny_model_dir, out)
    previous = snapshot(out)
    builds = PausingBuilds(tokenizer_dir, tmp_path)

    builds.kill_at("convert:save_file:2", out)  # one shard written, more to come
    assert snapshot(out) == previous
    (left,) = staging_folders(out)
    assert list(left.glob("model-00001-of-*.safetensors")) and not (left / "README.md").exists()

    builds.kill_at("convert:load_reranker:1", out)  # the parity check has begun
    assert snapshot(out) == previous
    assert not left.exists(), "the second run removed the first one's staging folder"
    (left,) = staging_folders(out)
    assert (left / "README.md").exists() and not (left / "build_report.json").exists()  # complete, unverified

    # The old build moved aside, the new one about to be renamed to --out.
    builds.kill_at(f"os:replace:1:.{out.name}{STAGING_MARK}", out)
    assert not out.exists(), "no folder at --out rather than an unverified one"
    assert len(staging_folders(out)) == 2
    builds.close()

    monkeypatch.setattr(convert, "verify", lambda *args, **kwargs: 1.0)  # a parity failure
    args = {"random": "tiny", "tokenizer": str(tokenizer_dir), "overwrite": True, "max_shard_size_mb": 1}
    with pytest.raises(RuntimeError, match="disagrees with the source causal LM"):
        convert.build(BuildArguments(out=out, **args))
    assert snapshot(out) == previous, "the previous build came back and the failed one did not replace it"
    assert staging_folders(out) == []
    with pytest.raises(RuntimeError, match="disagrees with the source causal LM"):
        convert.build(BuildArguments(out=tmp_path / "fresh", **args))
    assert not (tmp_path / "fresh").exists() and staging_folders(tmp_path / "fresh") == []

    model = CrossEncoder(str(out), trust_remote_code=True, device="cpu")
    assert np.isfinite(model.predict([("What is 2+2?", "4")])).all()
    assert json.loads((out / "build_report.json").read_text())["max_abs_logit_error"] <= 1e-4


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_built_packages_follow_the_umask(tokenizer_dir, tmp_path, umask, file_mode, dir_mode):
    """Every file and folder of a built package gets the umask's mode (not mkstemp's 0600 / mkdtemp's 0700), so a
    package copied to a shared folder or served by another account can be read."""
    from zerank.packaging.arguments import BuildArguments
    from zerank.packaging.convert import build

    out = tmp_path / "release" / "model"
    old = os.umask(umask)
    try:
        build(BuildArguments(out=out, random="tiny", tokenizer=str(tokenizer_dir)))
        (out / "extra.json").unlink(missing_ok=True)
        atomic_write_bytes(out / "extra.json", b"{}")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert (out / "model.safetensors").exists() or list(out.glob("model-*.safetensors"))
    assert "README.md" in modes and "extra.json" in modes
    assert {name: mode for name, mode in modes.items() if (out / name).is_file() and mode != file_mode} == {}
    assert {name: mode for name, mode in modes.items() if (out / name).is_dir() and mode != dir_mode} == {}
    assert out.stat().st_mode & 0o777 == dir_mode
