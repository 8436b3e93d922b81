"""What identifies a model's scores: one fingerprint for every cache and manifest that must notice a changed model
(``zerank calibrate``'s raw-logit cache, ``zerank rerank``'s resumable output)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

# Files of a package that never change a score.
UNSCORED_FILES = ("README.md",)


def model_fingerprint(model: str | Path, *, ignored_config_fields: Iterable[str] = ()) -> str:
    """sha256 of every file of a model folder that can change its scores (weights, config, remote code, tokenizer,
    template; not the card or hidden files), ``config.json`` read without ``ignored_config_fields`` (fields the
    caller's numbers do not depend on, e.g. the calibration for raw logits). A hub id or any other non-folder is
    identified by its name alone."""
    folder = Path(model)
    if not folder.is_dir():
        return hashlib.sha256(f"name\0{model}".encode()).hexdigest()
    ignored = set(ignored_config_fields)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if relative.name in UNSCORED_FILES or any(part.startswith(".") for part in relative.parts):
            continue
        h.update(f"{relative.as_posix()}\0".encode())
        if relative.as_posix() == "config.json":
            config = {k: v for k, v in json.loads(path.read_text()).items() if k not in ignored}
            h.update(json.dumps(config, sort_keys=True).encode())
            continue
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()
