"""zerank.server (`zerank serve`): the ZeroEntropy-compatible rerank API, checked with the official zeroentropy SDK."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn
import zeroentropy
from fastapi.testclient import TestClient

from zerank import cli
from zerank.arguments import ModelArguments, ServeArguments
from zerank.loading import load_from_arguments
from zerank.server import RERANK_PATH, RerankEngine, create_app

KEY = "test-key"
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower is in Paris.",
    "",
    "Berlin is the capital of Germany, " * 12,
    "日本の首都は東京です。",
]


@contextmanager
def running_server(app, timeout: float = 60.0):
    """uvicorn serving ``app`` on 127.0.0.1 and a free port, in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def sdk(base_url: str, api_key: str = KEY) -> zeroentropy.ZeroEntropy:
    return zeroentropy.ZeroEntropy(api_key=api_key, base_url=f"{base_url}/v1", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def server_url(tiny_model_dir, tiny_cross_encoder):
    app = create_app(ServeArguments(api_key=KEY), ModelArguments(model=str(tiny_model_dir)), model=tiny_cross_encoder)
    with running_server(app) as url:
        yield url


# --- the SDK round trip ---


def test_sdk_rerank_matches_crossencoder_predict(server_url, tiny_cross_encoder):
    expected = tiny_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    response = sdk(server_url).models.rerank(model="zerank-1", query=QUERY, documents=DOCUMENTS)

    assert sorted(r.index for r in response.results) == list(range(len(DOCUMENTS)))
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    for result in response.results:
        assert abs(result.relevance_score - float(expected[result.index])) <= 1e-5
    lengths = [len(tiny_cross_encoder.preprocess([(QUERY, d)])["input_ids"][0]) for d in DOCUMENTS]
    assert response.total_tokens == sum(lengths)
    assert response.total_bytes == len(QUERY.encode()) + sum(len(d.encode()) for d in DOCUMENTS)
    assert response.actual_latency_mode == "fast"
    assert 0 <= response.inference_latency <= response.e2e_latency


def test_top_n_returns_the_best_documents_in_order(server_url):
    client = sdk(server_url)
    full = client.models.rerank(model="zerank-1", query=QUERY, documents=DOCUMENTS)
    top = client.models.rerank(model="zerank-1", query=QUERY, documents=DOCUMENTS, top_n=2, latency="slow")
    assert [r.index for r in top.results] == [r.index for r in full.results[:2]]
    assert [r.relevance_score for r in top.results] == [r.relevance_score for r in full.results[:2]]
    assert top.actual_latency_mode == "slow"
    many = client.models.rerank(model="zerank-1", query=QUERY, documents=DOCUMENTS, top_n=100)
    assert len(many.results) == len(DOCUMENTS)


def test_empty_documents_give_empty_results(server_url):
    response = sdk(server_url).models.rerank(model="zerank-1", query=QUERY, documents=[])
    assert response.results == [] and response.total_tokens == 0


def test_bearer_token_is_required(server_url):
    with pytest.raises(zeroentropy.AuthenticationError, match="API key"):
        sdk(server_url, api_key="wrong").models.rerank(model="zerank-1", query=QUERY, documents=DOCUMENTS)
    body = {"model": "m", "query": "q", "documents": []}
    assert httpx.post(f"{server_url}{RERANK_PATH}", json=body).status_code == 401
    health = httpx.get(f"{server_url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_concurrent_clients_get_their_own_results(server_url, tiny_cross_encoder):
    """8 clients x 20 requests of varied sizes: nothing lost, nothing mixed up, scores as if scored alone."""
    rng = random.Random(0)
    words = "alpha beta gamma delta rerank query document paris france city tower river bank model".split()

    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    clients, per_client = 8, 20
    requests = [
        [(f"client {c} request {r}: {text(rng.randint(1, 8))}",
          [text(rng.randint(0, 60)) for _ in range(rng.randint(1, 6))])
         for r in range(per_client)]
        for c in range(clients)
    ]
    expected = {(c, r): tiny_cross_encoder.predict([(q, d) for d in docs])
                for c in range(clients) for r, (q, docs) in enumerate(requests[c])}
    results, errors = {}, []

    def run(c):
        client = sdk(server_url)
        try:
            for r, (query, docs) in enumerate(requests[c]):
                response = client.models.rerank(model="zerank-1", query=query, documents=docs)
                results[c, r] = {x.index: x.relevance_score for x in response.results}
        except Exception as exc:  # surfaced below, with the client that failed
            errors.append((c, exc))

    before = httpx.get(f"{server_url}/health").json()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(results) == clients * per_client
    for key, scores in results.items():
        assert sorted(scores) == list(range(len(expected[key])))
        np.testing.assert_allclose([scores[i] for i in range(len(scores))], expected[key], atol=1e-5, rtol=0)
    after = httpx.get(f"{server_url}/health").json()
    assert after["requests_scored"] - before["requests_scored"] == clients * per_client
    assert after["scoring_rounds"] - before["scoring_rounds"] <= clients * per_client


# --- limits and errors (in-process, through FastAPI's TestClient) ---


@pytest.fixture(scope="module")
def short_context_model(tiny_model_dir):
    """The tiny model with a 64-token context, so the query cap (half the context) is 32 tokens."""
    return load_from_arguments(ModelArguments(model=str(tiny_model_dir), max_length=64, device="cpu"))


def limited_client(model, **overrides) -> TestClient:
    settings = {"api_key": KEY, "served_model_name": ["zerank-tiny"], "max_documents": 4,
                "max_request_bytes": 2000, "max_document_tokens": 8}
    app = create_app(ServeArguments(**(settings | overrides)), ModelArguments(model="tiny"), model=model)
    return TestClient(app, headers={"Authorization": f"Bearer {KEY}"})


def post(client, **body):
    return client.post(RERANK_PATH, json={"model": "zerank-tiny", "query": "q", "documents": ["d"]} | body)


def test_limits_give_clear_errors(short_context_model):
    with limited_client(short_context_model) as client:
        assert post(client).status_code == 200
        response = post(client, documents=["d"] * 5)
        assert response.status_code == 400 and "at most 4" in response.json()["detail"]
        response = post(client, documents=["x" * 2500])
        assert response.status_code == 413 and "2000" in response.json()["detail"]
        response = post(client, query="word " * 40)
        assert response.status_code == 400 and "max_query_tokens" in response.json()["detail"]
        response = post(client, model="zerank-1")
        assert response.status_code == 404 and "zerank-tiny" in response.json()["detail"]
        response = client.post(RERANK_PATH, content=iter([b'{"model": "zerank-tiny"}']),
                               headers={"content-type": "application/json"})
        assert response.status_code == 411
        for bad in ({"documents": "not a list"}, {"documents": [1, 2]}, {"top_n": 0}, {"query": None}):
            assert post(client, **bad).status_code == 422, bad
        assert client.post(RERANK_PATH, json={"query": "q", "documents": []}).status_code == 422
        no_auth = client.post(RERANK_PATH, json={"model": "zerank-tiny", "query": "q", "documents": []},
                              headers={"Authorization": ""})
        assert no_auth.status_code == 401 and no_auth.headers["www-authenticate"] == "Bearer"


def test_long_documents_are_cut_to_their_first_tokens(short_context_model):
    document = "Paris is the capital and the largest city of France, on the Seine."
    ids = short_context_model.tokenizer(document, add_special_tokens=False)["input_ids"]
    assert len(ids) > 8
    head = short_context_model.tokenizer.decode(ids[:8])
    expected = short_context_model.predict([("q", head), ("q", document)])
    assert abs(expected[0] - expected[1]) > 1e-6  # truncation changes the score, so the check below can fail
    with limited_client(short_context_model) as client:
        response = post(client, documents=[document, "short"])
        assert response.status_code == 200
        scores = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
        assert abs(scores[0] - expected[0]) <= 1e-5
        assert response.json()["total_tokens"] == 1 + 8 + 13 + 1 + 1 + 13
    with limited_client(short_context_model, long_documents="error") as client:
        response = post(client, documents=["short", document])
        assert response.status_code == 400 and "Document 1" in response.json()["detail"]


def test_pairs_over_the_context_are_truncated_as_the_model_does(short_context_model):
    document = "The Seine flows through Paris. " * 30  # far over the 64-token context
    expected = short_context_model.predict([("q", document)])
    with limited_client(short_context_model, max_document_tokens=None, max_request_bytes=10_000) as client:
        response = post(client, documents=[document])
    assert response.status_code == 200
    assert abs(response.json()["results"][0]["relevance_score"] - expected[0]) <= 1e-5
    assert response.json()["total_tokens"] == 64


def test_openapi_schema_documents_the_api(short_context_model):
    with limited_client(short_context_model) as client:
        schema = client.get("/openapi.json").json()
    operation = schema["paths"][RERANK_PATH]["post"]
    assert {"400", "401", "413", "422"} <= set(operation["responses"])
    components = schema["components"]["schemas"]
    assert set(components["RerankRequest"]["required"]) == {"model", "query", "documents"}
    assert set(components["RerankResponse"]["properties"]) == {
        "results", "actual_latency_mode", "e2e_latency", "inference_latency", "total_bytes", "total_tokens"}
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --- the batching engine ---


def test_engine_merges_pending_requests_and_splits_results(tiny_cross_encoder):
    requests = [("q1", ["a", "bb " * 10, "c"]), ("a second query", ["d " * 30]), ("q3", ["e", "f " * 5])]
    engine = RerankEngine(tiny_cross_encoder, ServeArguments(max_round_tokens=10_000))

    def submit_all():
        # Queued before the worker starts, so they are all pending when it looks.
        return [engine.submit([(q, d) for d in docs], tokens=100) for q, docs in requests]

    try:
        futures = submit_all()
        engine.start()
        for future, (q, docs) in zip(futures, requests):
            scores, _ = future.result(timeout=60)
            np.testing.assert_allclose(scores, tiny_cross_encoder.predict([(q, d) for d in docs]), atol=1e-5, rtol=0)
        assert engine.scoring_rounds == 1 and engine.requests_scored == 3
        # Under a budget of 250 tokens, the third request (100 tokens) waits for the next round.
        engine.stop()
        engine.args.max_round_tokens = 250
        futures = submit_all()
        engine.start()
        for future in futures:
            future.result(timeout=60)
        assert engine.scoring_rounds == 3 and engine.requests_scored == 6
    finally:
        engine.stop()


# --- the command line ---


def parse_args(argv: list[str]) -> ServeArguments:
    args, model_args = cli.parse("serve", argv)
    assert model_args.model == "m"
    return args


def test_refuses_a_public_address_without_an_api_key(monkeypatch, capsys):
    monkeypatch.delenv("ZERANK_API_KEY", raising=False)
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--host", "0.0.0.0"])
    assert "api-key" in capsys.readouterr().err
    assert parse_args(["--model", "m", "--host", "127.0.0.1"]).api_key is None
    monkeypatch.setenv("ZERANK_API_KEY", "from-env")
    config = parse_args(["--model", "m", "--host", "0.0.0.0", "--max-documents", "7"])
    assert config.api_key == "from-env" and config.max_documents == 7
    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--max-documents", "0"])


def test_command_line_flags(monkeypatch):
    """--served-model-name takes space-separated ids; the round budget is apart from the model's batch budget."""
    monkeypatch.delenv("ZERANK_API_KEY", raising=False)
    args, model_args = cli.parse("serve", ["--model", "m", "--served-model-name", "a", "b",
                                           "--max-round-tokens", "1000", "--max-batch-tokens", "512"])
    assert args.served_model_name == ["a", "b"] and args.max_round_tokens == 1000
    assert model_args.max_batch_tokens == 512
    assert cli.parse("serve", ["--model", "m"])[0].max_round_tokens == 65536
    with pytest.raises(SystemExit):
        cli.parse("serve", ["--model", "m", "--max-round-tokens", "0"])


@pytest.mark.slow
def test_command_line_server_round_trip(tiny_model_dir, tiny_cross_encoder):
    """`zerank serve` in a subprocess, called through the SDK."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "zerank.cli", "serve", "--model", str(tiny_model_dir), "--port", str(port),
         "--api-key", KEY, "--served-model-name", "zerank-tiny", "zerank-1", "--log-level", "warning"],
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        response = sdk(f"http://127.0.0.1:{port}").models.rerank(model="zerank-1", query=QUERY, documents=DOCUMENTS)
        expected = tiny_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
        for result in response.results:
            assert abs(result.relevance_score - float(expected[result.index])) <= 1e-5
    finally:
        process.terminate()
        process.wait(30)
