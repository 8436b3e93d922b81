"""The process and the file system: peak memory, library versions, atomic writes, output folders.

Standard library only (no torch), so that light commands can use it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "sentence-transformers", "huggingface_hub", "safetensors", "bm25s",
             "pytrec-eval-terrier", "PyStemmer", "peft", "accelerate", "datasets", "numpy")


def peak_rss_mb() -> float:
    """Peak resident memory of this process image, in MB.

    Linux's ru_maxrss survives fork + exec (a child started by a large parent reports the parent's size), so the
    address space's own high-water mark, VmHWM, is read where there is one.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the high-water mark (Linux), so the next ``peak_rss_mb`` covers what runs from now on."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        return False
    clear_refs.write_text("5")
    return True


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    """Python's and the installed libraries' versions, for reports."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def current_umask() -> int:
    """The process's file mode creation mask, read without changing it where the system says it (Linux's
    ``/proc/self/status``, "Umask:"); elsewhere set and restored at once (``os.umask`` only answers by replacing it)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_file_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` gives a new file: 0o666 less the umask (0o644 under umask 022).

    ``tempfile.mkstemp`` creates its files at 0o600 whatever the umask, so a file written through one and renamed
    into place would be unreadable to other users (a package copied to a shared folder, a server run by another
    account); ``atomic_write_bytes`` sets this mode on its temporary file before the rename."""
    return 0o666 & ~current_umask()


def _apply_default_modes(root: Path) -> None:
    """Give every file under ``root`` the umask's file mode (executables the umask's 0o777 mode) and every folder
    the umask's folder mode: writers that go through temporary files (``mkstemp``: 0o600, as safetensors'
    ``save_file`` does) would otherwise leave a staged package readable by its owner only."""
    umask = current_umask()
    for folder, _, names in os.walk(root):
        os.chmod(folder, 0o777 & ~umask)
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, (0o777 if executable else 0o666) & ~umask)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part:
    a temporary file in the same folder, flushed and fsynced, then renamed over ``path``. The file gets the mode
    that the umask gives new files (``default_file_mode``), not ``mkstemp``'s 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = default_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a crash
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Create ``out``; an existing non-empty folder is replaced only with ``overwrite``."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


STAGING_MARK = ".staging-"
OLD_MARK = "old-"


@contextmanager
def staged_output_dir(out: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden staging folder beside ``out``; when the block ends without an error, rename it to ``out``.

    Readers never see a folder that the block did not finish (and verify): a failure deletes the staging folder, a
    killed process leaves only a hidden ``.NAME.staging-PID-*`` folder, which the next run removes once that process
    is gone (a run in progress is left alone). An existing ``out`` is refused unless ``overwrite``; then it is kept
    until the new folder is complete, moved aside, and deleted only after the new one has been renamed into place
    (at no moment is neither of them on disk; a run killed between the two renames gets the old folder back on the
    next run). The staged files are fsynced before the rename, so the rename never outlives their content, and given
    the modes the umask gives new files and folders (0o644 / 0o755 under umask 022), whatever wrote them.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it.")
    staging = out.parent / f".{out.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        _apply_default_modes(staging)
        _fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}{STAGING_MARK}{OLD_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staging, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Delete the staging folders of ``out`` left by killed runs; put back a previous ``out`` that a run killed
    between its two renames had moved aside."""
    prefix = f".{out.name}{STAGING_MARK}"
    stale = [p for p in out.parent.iterdir() if p.name.startswith(prefix)]
    # Staging folders first, then the moved-aside previous folders.
    for path in sorted(stale, key=lambda p: p.name[len(prefix):].startswith(OLD_MARK)):
        tail = path.name[len(prefix):]
        if _process_alive(tail.removeprefix(OLD_MARK).split("-")[0]):
            continue
        if tail.startswith(OLD_MARK) and not out.exists():
            os.replace(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: str) -> bool:
    """Whether the process ``pid`` (a decimal string; anything else counts as gone) is running. A reused pid only
    delays a clean-up to a later run."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
