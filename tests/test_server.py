"""zerank.serving (`zerank serve`): every rerank shape checked with its official client (zeroentropy, cohere,
langchain-zerank) or plain HTTP (TEI), and the server's behaviour under load: cancellation, the bounded queue,
draining on SIGTERM, read timeouts, invalid JSON values, metrics."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import cohere
import httpx
import numpy as np
import pytest
import torch
import zeroentropy
from fastapi.testclient import TestClient
from langchain_core.documents import Document
from langchain_zerank import ZeroEntropyRerank
from uvicorn_thread import running_server

from zerank import cli
from zerank.serving.arguments import ServeArguments
from zerank.utils.arguments import ModelArguments
from zerank.bench.serve_load import free_port, wait_for_health
from zerank.model.loading import load_from_arguments
from zerank.serving.app import create_app
from zerank.serving.engine import RerankEngine
from zerank.serving.middleware import invalid_json_field
from zerank.serving.schemas import RERANK_PATH

KEY = "test-key"
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower is in Paris.",
    "",
    "Berlin is the capital of Germany, " * 12,
    "日本の首都は東京です。",
]


def sdk(base_url: str, api_key: str = KEY) -> zeroentropy.ZeroEntropy:
    return zeroentropy.ZeroEntropy(api_key=api_key, base_url=f"{base_url}/v1", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def server_url(tiny_model_dir, tiny_cross_encoder):
    args = ServeArguments(api_key=KEY)
    app = create_app(args, ModelArguments(model=str(tiny_model_dir)), model=tiny_cross_encoder)
    with running_server(app, args) as (url, _, _):
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
    settings = {"api_key": KEY, "served_model_name": ["zerank-tiny"], "zeroentropy_aliases": False,
                "max_documents": 4, "max_request_bytes": 2000, "max_document_tokens": 8}
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
    assert set(components["ZeroEntropyRerankRequest"]["required"]) == {"model", "query", "documents"}
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/models", "/metrics", "/health"} <= set(schema["paths"])
    assert "429" in schema["paths"]["/v2/rerank"]["post"]["responses"]
    assert set(components["RerankResponse"]["properties"]) == {
        "results", "actual_latency_mode", "e2e_latency", "inference_latency", "total_bytes", "total_tokens"}
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# --- the batching engine ---


def test_engine_merges_pending_requests_and_splits_results(tiny_cross_encoder):
    requests = [("q1", ["a", "bb " * 10, "c"]), ("a second query", ["d " * 30]), ("q3", ["e", "f " * 5])]
    engine = RerankEngine(tiny_cross_encoder, ServeArguments(max_round_tokens=10_000))

    def submit_all():
        # Queued before the worker starts, so they are all pending when it looks.
        return [engine.submit([(q, d) for d in docs], [100 // len(docs)] * len(docs)).future for q, docs in requests]

    try:
        futures = submit_all()
        engine.start()
        for future, (q, docs) in zip(futures, requests):
            logits, _ = future.result(timeout=60)
            expected = tiny_cross_encoder.predict([(q, d) for d in docs], activation_fn=torch.nn.Identity())
            np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
        assert engine.scoring_rounds == 1 and engine.requests_scored == 3
        # Under a budget of 250 tokens, the third request (~100 tokens) waits for the next round.
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
    args, model_args, *_ = cli.parse("serve", argv)  # then the long-document (chunk) arguments
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
    args, model_args, *_ = cli.parse("serve", ["--model", "m", "--served-model-name", "a", "b",
                                           "--max-round-tokens", "1000", "--max-batch-tokens", "512"])
    assert args.served_model_name == ["a", "b"] and args.max_round_tokens == 1000
    assert model_args.max_batch_tokens == 512
    assert cli.parse("serve", ["--model", "m"])[0].max_round_tokens == 65536
    with pytest.raises(SystemExit):
        cli.parse("serve", ["--model", "m", "--max-round-tokens", "0"])


@pytest.mark.slow
def test_command_line_server_round_trip(tiny_model_dir, tiny_cross_encoder):
    """`zerank serve` in a subprocess, called through the SDK."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "zerank.cli", "serve", "--model", str(tiny_model_dir), "--port", str(port),
         "--api-key", KEY, "--served-model-name", "zerank-tiny", "zerank-1", "--log-level", "warning"],
    )
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, timeout=180)
        response = sdk(f"http://127.0.0.1:{port}").models.rerank(model="zerank-1", query=QUERY, documents=DOCUMENTS)
        expected = tiny_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
        for result in response.results:
            assert abs(result.relevance_score - float(expected[result.index])) <= 1e-5
    finally:
        process.terminate()
        process.wait(30)


# --- the Cohere/Jina, TEI and LangChain shapes (one scoring core: the same scores as CrossEncoder.predict) ---


def test_cohere_sdk_v2_rerank(server_url, tiny_cross_encoder):
    expected = tiny_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    client = cohere.ClientV2(base_url=server_url, api_key=KEY)
    response = client.rerank(model="zerank-1-small", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [r.index for r in response.results] == list(np.argsort(-expected, kind="stable")[:3])
    for result in response.results:
        assert abs(result.relevance_score - float(expected[result.index])) <= 1e-5
    assert response.id and response.meta.api_version.version == "2"
    with pytest.raises(cohere.core.ApiError) as error:
        client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCUMENTS)
    assert error.value.status_code == 404 and "zerank-1-small" in str(error.value.body)


def test_v1_rerank_takes_text_objects_and_echoes_documents(server_url, tiny_cross_encoder):
    """The Jina/vLLM shape: documents as {"text": ...} objects, documents echoed by default, usage counted."""
    expected = tiny_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    body = {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS[:2]] + DOCUMENTS[2:], "top_n": 4}
    response = httpx.post(f"{server_url}/v1/rerank", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    data = response.json()
    assert data["model"] == httpx.get(f"{server_url}/health").json()["model"]
    assert len(data["results"]) == 4 and data["usage"]["total_tokens"] > 0
    for result in data["results"]:
        assert result["document"]["text"] == DOCUMENTS[result["index"]]
        assert abs(result["relevance_score"] - float(expected[result["index"]])) <= 1e-5
    quiet = httpx.post(f"{server_url}/v1/rerank", json=body | {"return_documents": False},
                       headers={"Authorization": f"Bearer {KEY}"}).json()
    assert "document" not in quiet["results"][0]
    models = httpx.get(f"{server_url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    names = [m["id"] for m in models["data"]]
    assert names[0] == data["model"] and {"zerank-1", "zerank-1-small", "zerank-2"} <= set(names)


def test_tei_rerank(server_url, tiny_cross_encoder):
    texts = DOCUMENTS[:4]
    expected = tiny_cross_encoder.predict([(QUERY, d) for d in texts])
    logits = tiny_cross_encoder.predict([(QUERY, d) for d in texts], activation_fn=torch.nn.Identity())
    url = f"{server_url}/rerank"
    headers = {"Authorization": f"Bearer {KEY}"}
    ranks = httpx.post(url, json={"query": QUERY, "texts": texts}, headers=headers).json()
    assert [r["index"] for r in ranks] == list(np.argsort(-expected, kind="stable"))
    assert all(abs(r["score"] - float(expected[r["index"]])) <= 1e-5 and "text" not in r for r in ranks)
    raw = httpx.post(url, json={"query": QUERY, "texts": texts, "raw_scores": True, "return_text": True},
                     headers=headers).json()
    assert all(abs(r["score"] - float(logits[r["index"]])) <= 1e-4 and r["text"] == texts[r["index"]] for r in raw)


def test_documents_are_capped_at_what_the_model_reads(short_context_model):
    """By default a document keeps what fits the context after the query and the template (the same cut as the
    model's own truncation); TEI's truncate=false refuses it instead, as TEI does; left truncation keeps the end."""
    document = "The Seine flows through Paris. " * 30 + "The end."
    expected = short_context_model.predict([("q", document)])
    with limited_client(short_context_model, max_document_tokens=None, max_request_bytes=10_000) as client:
        refused = client.post("/rerank", json={"query": "q", "texts": [document]})
        assert refused.status_code == 400 and "Document 0" in refused.json()["detail"]
        cut = client.post("/rerank", json={"query": "q", "texts": [document], "truncate": True}).json()
        assert abs(cut[0]["score"] - expected[0]) <= 1e-5
        tail = document[-200:]
        left = client.post("/rerank", json={"query": "q", "texts": [document, tail], "truncate": True,
                                            "truncation_direction": "left"}).json()
        assert left[0]["score"] != pytest.approx(cut[0]["score"], abs=1e-6)
        response = client.post("/v1/rerank", json={"query": "q", "documents": [document], "max_tokens_per_doc": 8})
        head = short_context_model.tokenizer.decode(
            short_context_model.tokenizer(document, add_special_tokens=False)["input_ids"][:8])
        assert abs(response.json()["results"][0]["relevance_score"]
                   - short_context_model.predict([("q", head)])[0]) <= 1e-5


def test_langchain_zerank_through_zeroentropy_base_url(server_url, tiny_cross_encoder, monkeypatch):
    """langchain-zerank's ZeroEntropyRerank asks for zerank-1-small: an alias of the served model."""
    monkeypatch.setenv("ZEROENTROPY_BASE_URL", f"{server_url}/v1")
    monkeypatch.setenv("ZEROENTROPY_API_KEY", KEY)
    documents = [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(DOCUMENTS)]
    ranked = ZeroEntropyRerank(top_n=2).compress_documents(documents, QUERY)
    expected = tiny_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    assert [d.metadata["n"] for d in ranked] == list(np.argsort(-expected, kind="stable")[:2])
    assert abs(ranked[0].metadata["relevance_score"] - float(expected[ranked[0].metadata["n"]])) <= 1e-5


# --- bad input, health and metrics ---


def test_nan_infinity_and_lone_surrogates_get_a_json_400_naming_the_field(server_url):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=server_url, headers=headers) as client:  # one connection: it must survive
        cases = {
            b'{"model": "zerank-1", "query": "q", "documents": ["a", "\\ud800"]}': "body.documents[1]",
            b'{"model": "zerank-1", "query": "q", "documents": ["a"], "top_n": NaN}': "body.top_n",
            b'{"query": "\\udfff x", "texts": ["a"]}': "body.query",
            b'{"query": "q", "documents": [{"text": -Infinity}]}': "body.documents[0].text",
        }
        for (body, field), path in zip(cases.items(), [RERANK_PATH, RERANK_PATH, "/rerank", "/v2/rerank"]):
            response = client.post(path, content=body)
            assert response.status_code == 400, (body, response.text)
            assert field in response.json()["detail"], response.json()
        ok = client.post("/rerank", content=b'{"query": "\\ud83d\\ude00", "texts": ["\\u00e9t\\u00e9"]}')
        assert ok.status_code == 200  # a surrogate pair is one character, not an error
    assert invalid_json_field(b'{"a": [1, {"b": Infinity}]}').startswith("body.a[1].b: Infinity")
    assert invalid_json_field(b'{"a": 1.5}') is None and invalid_json_field(b"not json") is None


def test_health_hides_the_model_path_and_metrics_need_the_key(server_url, tiny_model_dir):
    health = httpx.get(f"{server_url}/health")
    assert health.status_code == 200 and str(tiny_model_dir) not in health.text
    assert health.json()["model"] == tiny_model_dir.name
    assert httpx.get(f"{server_url}/metrics").status_code == 401
    httpx.post(f"{server_url}/v2/rerank", json={"model": "zerank-1", "query": "q", "documents": ["a", "b"]},
               headers={"Authorization": f"Bearer {KEY}"}).raise_for_status()
    text = httpx.get(f"{server_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("zerank_http_requests_total{", "zerank_http_request_duration_seconds_bucket{",
                 "zerank_pairs_scored_total", "zerank_queue_pairs", "zerank_requests_cancelled_total",
                 "zerank_request_documents_bucket"):
        assert name in text, name
    assert 'route="/v2/rerank",status="200"' in text


def test_request_logs_are_json_without_secrets_or_text(short_context_model, caplog):
    with limited_client(short_context_model) as client, caplog.at_level("INFO", logger="zerank.access"):
        post(client, query="secret query words", documents=["secret document text"])
    [record] = [r for r in caplog.records if r.name == "zerank.access"]
    line = json.loads(record.getMessage())
    assert line["route"] == RERANK_PATH and line["status"] == 200 and line["documents"] == 1 and line["pairs"] == 1
    assert "secret" not in record.getMessage() and KEY not in record.getMessage()


# --- under load: cancellation, the bounded queue, timeouts, draining (a slowed model makes scoring take time) ---


SLOW_SECONDS = 0.1  # per predict call (one chunk of about one 64-token pair)


@pytest.fixture
def slow_model(short_context_model, monkeypatch):
    predict = short_context_model.predict

    def slow_predict(*args, **kwargs):
        time.sleep(SLOW_SECONDS)
        return predict(*args, **kwargs)

    monkeypatch.setattr(short_context_model, "predict", slow_predict)
    return short_context_model


@contextmanager
def slow_server(model, **overrides):
    args = ServeArguments(**({"api_key": KEY, "max_documents": 40, "max_queued_pairs": 50, "header_timeout": 1,
                              "body_timeout": 1, "request_timeout": 3, "drain_timeout": 1} | overrides))
    app = create_app(args, ModelArguments(model="tiny", max_batch_tokens=64), model=model)
    with running_server(app, args) as running:
        yield running


def rerank_in_thread(url: str, documents: int, timeout: float = 60) -> tuple[threading.Thread, dict]:
    """POST a rerank of ``documents`` documents from a thread; the result dict gets status (or error)."""
    outcome: dict = {}

    def run():
        try:
            response = httpx.post(f"{url}/v2/rerank", timeout=timeout, headers={"Authorization": f"Bearer {KEY}"},
                                  json={"query": "q", "documents": [f"document {i} " * 6 for i in range(documents)]})
            outcome.update(status=response.status_code, headers=response.headers, body=response.json())
        except (httpx.HTTPError, ValueError) as exc:
            outcome["error"] = type(exc).__name__

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def wait_for(url: str, condition, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{url}/health").json()
        if condition(health):
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.02)


def test_disconnects_and_timeouts_cancel_work_and_the_queue_is_bounded(slow_model):
    with slow_server(slow_model) as (url, _, _):
        # A client that gives up: its 40 pairs (about 4 s of scoring) stop within a chunk.
        thread, outcome = rerank_in_thread(url, 40, timeout=0.5)
        thread.join()
        assert outcome == {"error": "ReadTimeout"}
        # (A cancelled request leaves the queue at once; its pairs are counted when the worker ends its round.)
        health = wait_for(url, lambda h: h["queued"] == 0 and h["pairs_scored"] + h["pairs_cancelled"] == 40)
        assert health["requests_cancelled"] == 1 and health["pairs_cancelled"] >= 20
        # The queue holds 50 pairs: with 40 queued, a request of 20 gets 429 and Retry-After; one of 10 fits.
        thread, first = rerank_in_thread(url, 40)
        wait_for(url, lambda h: h["queued_pairs"] == 40)
        refused = httpx.post(f"{url}/v2/rerank", headers={"Authorization": f"Bearer {KEY}"},
                             json={"query": "q", "documents": ["d"] * 20})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "--max-queued-pairs" in refused.json()["detail"]
        # The first request outlives --request-timeout (3 s): 503, its work cancelled.
        thread.join()
        assert first["status"] == 503 and "--request-timeout" in first["body"]["detail"]
        health = wait_for(url, lambda h: h["queued"] == 0)
        assert health["requests_cancelled"] == 2 and health["requests_rejected"] == 1
        quick = httpx.post(f"{url}/v2/rerank", headers={"Authorization": f"Bearer {KEY}"},
                           json={"query": "q", "documents": ["a", "b"]})
        assert quick.status_code == 200 and len(quick.json()["results"]) == 2
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        assert 'zerank_rejected_requests_total{reason="queue_full"} 1.0' in metrics


def test_slow_headers_and_bodies_are_cut_off(slow_model):
    with slow_server(slow_model) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as headers_only, \
                socket.create_connection(("127.0.0.1", port), timeout=10) as slow_body:
            headers_only.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
            slow_body.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 100\r\n\r\n{\"query\": ")
            start = time.monotonic()
            assert headers_only.recv(1000) == b""  # closed by the server after --header-timeout (1 s)
            reply = b""
            while chunk := slow_body.recv(1000):  # the whole reply: the server closes the connection after it
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and b"--body-timeout" in reply
            assert time.monotonic() - start < 8
        assert httpx.get(f"{url}/health").status_code == 200


def test_sigterm_drains_in_flight_requests_for_a_bounded_time(slow_model):
    with slow_server(slow_model, drain_timeout=3, request_timeout=30) as (url, server, thread):
        first, first_outcome = rerank_in_thread(url, 5)  # about 0.5 s of scoring: finishes within the drain time
        wait_for(url, lambda h: h["queued"] == 1)
        second, second_outcome = rerank_in_thread(url, 40)  # over 4 s more: cut off when the drain time is over
        wait_for(url, lambda h: h["queued"] == 2)
        start = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
        thread.join(15)
        assert not thread.is_alive() and time.monotonic() - start < 8
        first.join(10)
        second.join(10)
    assert first_outcome["status"] == 200 and len(first_outcome["body"]["results"]) == 5
    assert second_outcome["status"] == 503 and "shut down" in second_outcome["body"]["detail"]
    engine = server.engine
    assert engine.requests_cancelled == 1 and 0 < engine.pairs_cancelled < 40
    with pytest.raises(ValueError, match="shutting down"):
        engine.submit([("q", "d")], [5])
