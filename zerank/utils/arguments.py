"""The arguments of every ``zerank`` command, as dataclasses (parsed by ``transformers.HfArgumentParser``).

Each default is written here once; the library functions take these objects. This module imports only the
standard library, so ``zerank SUB --help`` answers without importing torch. Validation that needs no I/O happens in
``__post_init__`` and raises ``ValueError`` (the command line turns it into a usage error, exit code 2).

Flags are the field names with dashes (``--max-batch-tokens``; the underscore spelling is accepted too); a boolean
field is a ``--name / --no-name`` switch. ``zerank.cli`` renders the help: a field's default is shown once, by the
formatter, unless its help text explains a computed default ("Default: ...").
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_positive(obj, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and (value < 0 if allow_zero else value < 1):
            bound = "at least 0" if allow_zero else "at least 1"
            raise ValueError(f"--{name.replace('_', '-')} must be {bound}, got {value}.")


def check_existing_file(name: str, path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"--{name.replace('_', '-')} {path} does not exist.")


def check_fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}.")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (a host name other than localhost may resolve to anything)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    """zerank's folder for persistent data: %LOCALAPPDATA%\\zerank on Windows, else $XDG_DATA_HOME/zerank
    (default ~/.local/share/zerank)."""
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "zerank"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "zerank"


@dataclass
class ModelArguments:
    """Which reranker to load and how to run it."""

    _argument_group_name = "model"

    model: str = field(metadata={"help": "zerank folder or hub id (remote code), or any CrossEncoder model."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Weights' dtype; auto = bfloat16 on a GPU that supports it, else float32."}
    )
    max_length: int | None = field(default=None, metadata={"help": "Context length in tokens (default: the model's)."})
    max_batch_tokens: int | None = field(
        default=None,
        metadata={"help": "Token budget of one forward batch (rows x longest row): the main knob for speed and memory. "
                          "Default: 512 on CPU, 32768 on a GPU."},
    )

    def __post_init__(self):
        check_positive(self, "max_batch_tokens")
        if self.max_length is not None and self.max_length < 16:
            raise ValueError(f"--max-length must be at least 16 tokens, got {self.max_length}.")


@dataclass
class ScoringArguments:
    """How pairs are scored."""

    _argument_group_name = "scoring"

    batch_size: int | None = field(
        default=None, metadata={"help": "Also cap each batch at this many pairs (default: the token budget decides)."}
    )
    instruction: str | None = field(default=None, metadata={"help": "zerank only: an instruction rendered with "
                                                                    "every query."})

    def __post_init__(self):
        check_positive(self, "batch_size")


@dataclass
class FirstStageArguments:
    """Where the candidates come from."""

    _argument_group_name = "first stage"

    first_stage: str = field(
        default="bm25",
        metadata={"help": "'bm25' (bm25s over title + text) or a TREC run file (qid Q0 docid rank score tag)."},
    )
    bm25_k1: float = field(default=1.2, metadata={"help": "BM25 k1, as in Elasticsearch."})
    bm25_b: float = field(default=0.75, metadata={"help": "BM25 b, as in Elasticsearch."})
    bm25_stemmer: str = field(
        default="english", metadata={"help": "PyStemmer algorithm for BM25 ('english', 'porter', ...) or 'none'."}
    )

    def __post_init__(self):
        if self.first_stage != "bm25" and not Path(self.first_stage).is_file():
            raise ValueError(f"--first-stage must be 'bm25' or a TREC run file; {self.first_stage} does not exist.")
