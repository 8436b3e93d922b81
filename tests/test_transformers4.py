"""The vLLM export in a transformers 4.57 environment scores like zerank, through plain transformers and Infinity.

Slow: the first run builds the environment under ``$ZERANK_TRANSFORMERS4_VENV`` (default
``~/.cache/zerank/transformers-4.57``: torch 2.13 CPU, transformers 4.57, infinity-emb, which pins transformers
< 5), a few minutes; later runs reuse it. The package itself (remote code for transformers >= 5.18) must refuse
that environment with one line naming the version it needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

TRANSFORMERS4 = "transformers==4.57.6"
INFINITY = "infinity-emb[torch,server]==0.0.78"
CLIENTS = Path(__file__).parent / "clients"
PAIRS = [
    ("What is the capital of France?", "Paris is the capital and largest city of France."),
    ("What is the capital of France?", "Berlin is the capital of Germany."),
    ("What is the capital of France?", ""),
    ("What is the capital of France?", "日本の首都は東京です。"),
    ("What is the capital of France?", "The Eiffel Tower was completed in 1889. " * 240),
    ("capital", "Die Hauptstadt Frankreichs ist Paris."),
]


def transformers4_venv() -> Path:
    venv = Path(os.environ.get("ZERANK_TRANSFORMERS4_VENV", Path.home() / ".cache" / "zerank" / "transformers-4.57"))
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "torch==2.13.0", TRANSFORMERS4, INFINITY],
                       check=True)
        (venv / ".complete").touch()
    return venv


@pytest.fixture(scope="module")
def venv_python() -> Path:
    return transformers4_venv() / "bin" / "python"


@pytest.fixture(scope="module")
def vllm_export(tiny_vllm_export) -> Path:
    return tiny_vllm_export[0]


@pytest.fixture(scope="module")
def reference(tiny_cross_encoder) -> np.ndarray:
    return tiny_cross_encoder.predict(PAIRS)


def run_client(python: Path, script: str, model: Path, tmp_path: Path) -> np.ndarray:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(PAIRS, ensure_ascii=False), encoding="utf-8")
    done = subprocess.run([python, CLIENTS / script, str(model), str(pairs)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.asarray(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_export_config_reads_the_same_in_transformers4(venv_python, vllm_export):
    code = ("import sys, json; from transformers import AutoConfig, AutoTokenizer; "
            "c = AutoConfig.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]); "
            "print(json.dumps([c.rope_theta, c.num_labels, c.pad_token_id, len(t.all_special_ids)]))")
    done = subprocess.run([venv_python, "-c", code, str(vllm_export)], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1000000.0, 1, 151643, 14]


def test_the_export_scores_like_zerank_in_transformers4(venv_python, vllm_export, reference, tmp_path):
    scores = run_client(venv_python, "score_pairs_transformers.py", vllm_export, tmp_path)
    # One call per pair: transformers drops an empty text_pair, so the empty document is the query alone.
    keep = [i for i, (_, d) in enumerate(PAIRS) if d]
    scores, reference = scores[keep], reference[keep]
    assert np.abs(scores - reference).max() <= 1e-5
    assert list(np.argsort(-scores)) == list(np.argsort(-reference))


def test_infinity_serves_the_export_with_zeranks_scores(venv_python, vllm_export, tiny_cross_encoder, tmp_path):
    scores = run_client(venv_python, "score_pairs_infinity.py", vllm_export, tmp_path)
    # Infinity runs sentence-transformers 3.x, whose CrossEncoder strips both texts before tokenizing.
    reference = tiny_cross_encoder.predict([(q.strip(), d.strip()) for q, d in PAIRS])
    assert np.abs(scores - reference).max() <= 1e-5
    assert list(np.argsort(-scores)) == list(np.argsort(-reference))


def test_the_package_names_the_transformers_it_needs(venv_python, tiny_model_dir):
    code = ("import sys; from transformers import AutoModelForSequenceClassification as A; "
            "A.from_pretrained(sys.argv[1], trust_remote_code=True)")
    done = subprocess.run([venv_python, "-c", code, str(tiny_model_dir)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "zerank's remote code needs transformers>=5.18, found 4.57" in done.stderr.strip().splitlines()[-1]
