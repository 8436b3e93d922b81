"""Shared fixtures: the real Qwen3 tokenizer, tiny random Qwen3 checkpoints and built zerank folders.

The package is installed (``pip install -e .``), so tests import ``zerank`` and the remote-code modules directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

# Pairs for parity checks: mixed lengths, two queries sharing a prefix, non-Latin text, an empty query.
PARITY_PAIRS = [
    ("What is 2+2?", "4"),
    ("What is 2+2?", "The answer is definitely 1 million, as every mathematician has agreed for centuries."),
    ("side effects of ibuprofen", "Heartburn, nausea and dizziness."),
    ("日本の首都はどこですか？", "日本の首都は東京です。"),
    ("", "An empty query still renders a valid prompt."),
]


def shared_dir() -> Path:
    """`../shared` beside the checkout (or $ZERANK_SHARED): the real IR data sets, never committed."""
    return Path(os.environ.get("ZERANK_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    from zerank.utils.resources import default_tokenizer_dir

    return default_tokenizer_dir()


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    from zerank.utils.resources import CHAT_TEMPLATE_FILE

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = CHAT_TEMPLATE_FILE.read_text()
    return tok


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """A random Qwen3ForCausalLM with config/tiny.json's shape (tied embeddings), saved as safetensors."""
    from zerank.packaging.convert import make_random_base
    from zerank.utils.resources import shape_config

    return make_random_base(shape_config("tiny"), tmp_path_factory.mktemp("tiny-base"), 0, 2000)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_base_dir, tokenizer_dir, tmp_path_factory) -> Path:
    """A zerank folder built from ``tiny_base_dir`` by ``zerank build`` (verified against the causal LM)."""
    from zerank.packaging.arguments import BuildArguments
    from zerank.packaging.convert import build

    out = tmp_path_factory.mktemp("tiny-zerank") / "model"
    report = build(BuildArguments(out=out, base=str(tiny_base_dir), tokenizer=str(tokenizer_dir)))
    assert report["max_abs_logit_error"] <= 1e-4
    return out


@pytest.fixture(scope="session")
def tiny_vllm_export(tiny_model_dir, tmp_path_factory) -> tuple[Path, dict]:
    """``zerank export --format vllm`` of ``tiny_model_dir`` (read-only for the tests): (folder, report)."""
    from zerank.export.arguments import ExportArguments
    from zerank.export.exporter import export

    out = tmp_path_factory.mktemp("vllm-export") / "model"
    return out, export(ExportArguments(model=str(tiny_model_dir), out=out))


@pytest.fixture(scope="session")
def tiny_cross_encoder(tiny_model_dir):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(tiny_model_dir), trust_remote_code=True, device="cpu")
