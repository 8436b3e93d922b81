"""Head-of-line load check and one adversarial pass against ``zerank serve`` in a subprocess (issue 27).

``small_request_latencies`` measures the p95 latency of many small rerank requests, first alone, then while one client
keeps sending a huge document (about 4.5 MB: a ZeroEntropy rerank that is cut, and a TEI ``truncate: false`` rerank
that is refused). ``adversarial_pass`` sends a fixed set of hostile requests to every route and counts the answers.
The slow test in ``tests/test_hostile.py`` runs both; this file also runs alone, e.g. against another checkout::

    .venv/bin/python tests/hostile_load.py --model build/tiny [--pythonpath /tmp/before-27]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil

from zerank.bench.serve_load import free_port, wait_for_health

KEY = "load-key"
WORDS = ["the", "a", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from", "that", "this", "it", "paris", "france", "capital", "river", "city", "history", "science", "protein", "cell", "energy", "climate", "water", "market", "price", "data", "network", "learning", "language", "system"]
HUGE_BYTES = 4_500_000
PAUSE_S = 0.5
"""The huge-document client's pause between its requests (one huge document among many small requests)."""


@contextmanager
def serve(model: Path, pythonpath: str | None = None, store: Path | None = None,
          extra: tuple[str, ...] = ()) -> Iterator[tuple[str, psutil.Process]]:
    """``zerank serve`` in a subprocess (``pythonpath``: another checkout's zerank); yields (url, process)."""
    port = free_port()
    env = {**os.environ, "ZERANK_API_KEY": KEY, "CUDA_VISIBLE_DEVICES": ""}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, "-m", "zerank.cli", "serve", "--model", str(model), "--port", str(port),
               "--log-level", "error", "--drain-timeout", "2", *extra]
    if store is not None:
        command += ["--store", str(store)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, timeout=180, poll_s=0.3)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def small_bodies(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"model": "zerank-1", "query": text(rng, 8),
             "documents": [text(rng, rng.randint(20, 60)) for _ in range(8)]} for _ in range(n)]


def huge_document() -> str:
    return text(random.Random(1), HUGE_BYTES // 5)[:HUGE_BYTES]


def run_small(url: str, bodies: list[dict], clients: int) -> tuple[list[float], Counter]:
    """Send ``bodies`` from ``clients`` threads; (latencies of the 200s, status counts)."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock = threading.Lock()
    pending = list(bodies)

    def client():
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as http:
            while True:
                with lock:
                    if not pending:
                        return
                    body = pending.pop()
                start = time.perf_counter()
                status = http.post(f"{url}/v1/models/rerank", json=body).status_code
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, statuses


def huge_sender(url: str, stop: threading.Event, log: list) -> threading.Thread:
    """A client that posts the huge document until ``stop``, pausing ``PAUSE_S`` between requests: cut (ZeroEntropy)
    and refused (TEI truncate: false)."""
    document = huge_document()
    bodies = [
        ("/v1/models/rerank", json.dumps({"model": "zerank-1", "query": "paris", "documents": [document]}).encode()),
        ("/rerank", json.dumps({"query": "paris", "texts": [document], "truncate": False}).encode()),
    ]

    def run():
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
                          timeout=300) as http:
            i = 0
            while not stop.is_set():
                route, body = bodies[i % 2]
                start = time.perf_counter()
                status = http.post(f"{url}{route}", content=body).status_code
                log.append((route, status, time.perf_counter() - start))
                i += 1
                stop.wait(PAUSE_S)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


def small_request_latencies(url: str, requests: int = 80, clients: int = 4) -> dict:
    """p95 of small requests without, then with, a client sending a huge document (same server, one run)."""
    run_small(url, small_bodies(8, seed=99), clients)  # warm-up
    alone, alone_status = run_small(url, small_bodies(requests, seed=1), clients)
    stop, huge_log = threading.Event(), []
    sender = huge_sender(url, stop, huge_log)
    time.sleep(0.5)  # the first huge request is in flight
    loaded, loaded_status = run_small(url, small_bodies(requests, seed=2), clients)
    stop.set()
    sender.join()
    return {
        "p95_alone_s": round(p95(alone), 3), "p95_with_huge_s": round(p95(loaded), 3),
        "p50_alone_s": round(float(np.median(alone)), 3), "p50_with_huge_s": round(float(np.median(loaded)), 3),
        "small_statuses": dict(alone_status + loaded_status),
        "huge_requests": [(route, status, round(seconds, 2)) for route, status, seconds in huge_log],
    }


# --- one adversarial pass ---


def deep(n: int, leaf="x") -> str:
    return "[" * n + json.dumps(leaf) + "]" * n


def hostile_requests() -> Iterator[tuple[str, str, dict | None, bytes | None, dict]]:
    """(method, path, json body or None, raw body or None, extra headers) of the pass."""
    specials = "<|endoftext|>" * 1000
    rerank_routes = ["/v1/models/rerank", "/v1/rerank", "/v2/rerank", "/rerank"]
    for route in rerank_routes:
        docs_key = "texts" if route == "/rerank" else "documents"
        yield "POST", route, None, ('{{"query": "q", "{}": {}}}'.format(docs_key, deep(5000))).encode(), {}
        yield "POST", route, None, ('{{"query": "q", "\\ud800": 1, "{}": []}}'.format(docs_key)).encode(), {}
        yield "POST", route, {"model": "zerank-1", "query": "q", docs_key: [specials]}, None, {}
        yield "POST", route, {"model": "zerank-1", "query": specials, docs_key: ["d"]}, None, {}
        yield "POST", route, {"model": "zerank-1", "query": "q", docs_key: ["d"], "top_n": True}, None, {}
        yield "POST", route, {"model": "zerank-1", "query": "q", docs_key: ["d"]}, None, \
            {"Authorization": "Bearer " + "k" * 60_000}
    yield "POST", "/v1/collections/add-collection", {"collection_name": "c"}, None, {}
    yield "POST", "/v1/collections/add-collection", {"collection_name": "x" * 5000}, None, {}
    yield "POST", "/v1/documents/add-document", {"collection_name": "c", "path": "p" * 1_000_000,
                                                 "content": {"type": "text", "text": "t"}}, None, {}
    for i in range(20):
        yield "POST", "/v1/documents/add-document", {"collection_name": "c", "path": f"doc{i}_x",
                                                     "content": {"type": "text", "text": text(random.Random(i), 50)},
                                                     "metadata": {"lang": "en"}}, None, {}
    nested: dict = {"lang": {"$eq": "en"}}
    for _ in range(400):
        nested = {"$and": [nested]}
    for route in ("/v1/queries/top-documents", "/v1/queries/top-pages", "/v1/queries/top-snippets"):
        yield "POST", route, {"collection_name": "c", "query": "paris", "k": 5, "filter": nested}, None, {}
        yield "POST", route, {"collection_name": "c", "query": 'paris" OR x NEAR(', "k": 5}, None, {}
        yield "POST", route, {"collection_name": "c", "query": "doc1_x", "k": 5, "reranker": "zerank-1"}, None, {}
        yield "POST", route, {"collection_name": "c", "query": "é" * 3000, "k": 5}, None, {}
    yield "POST", "/v1/queries/top-documents", {"collection_name": "c", "query": "paris", "k": 2048,
                                                "reranker": "zerank-1"}, None, {}
    yield "POST", "/v1/documents/get-document-info-list", {"collection_name": "c"}, None, {}
    yield "POST", "/v1/status/get-status", None, b"[" * 100_000, {}
    yield "GET", "/v1/documents/file?collection_name=c&path=" + "%41" * 15_000, None, None, {}


def adversarial_pass(url: str, process: psutil.Process, rounds: int = 3) -> dict:
    """Every hostile request ``rounds`` times; requests, 5xx answers and connection errors, and the RSS."""
    rss_start = process.memory_info().rss
    statuses: Counter = Counter()
    errors: list[str] = []
    peak = rss_start
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as http:
        for _ in range(rounds):
            for method, path, body, raw, headers in hostile_requests():
                try:
                    if raw is not None:
                        response = http.request(method, f"{url}{path}", content=raw,
                                                headers={"Content-Type": "application/json", **headers})
                    else:
                        response = http.request(method, f"{url}{path}", json=body, headers=headers)
                    statuses[response.status_code] += 1
                    if response.status_code >= 500:
                        errors.append(f"{response.status_code} {method} {path[:60]}: {response.text[:200]}")
                    elif response.status_code >= 400:
                        response.json()  # every refusal is JSON
                except (httpx.HTTPError, ValueError) as exc:
                    statuses[type(exc).__name__] += 1
                    errors.append(f"{type(exc).__name__} {method} {path[:60]}")
                peak = max(peak, process.memory_info().rss)
    return {"requests": sum(statuses.values()), "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "errors": errors, "rss_start_mb": round(rss_start / 1e6), "rss_peak_mb": round(peak / 1e6),
            "rss_end_mb": round(process.memory_info().rss / 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--pythonpath", default=None, help="import zerank from this checkout")
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-document-tokens", type=int, default=256)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-adversarial", action="store_true")
    args = parser.parse_args()
    import tempfile

    report = {}
    with tempfile.TemporaryDirectory() as tmp, serve(args.model, args.pythonpath, Path(tmp) / "store.sqlite3", (
            "--max-document-tokens", str(args.max_document_tokens))) as (url, process):
        if not args.skip_load:
            report["load"] = small_request_latencies(url, args.requests, args.clients)
            print(json.dumps(report["load"]), flush=True)
        if not args.skip_adversarial:
            report["adversarial"] = adversarial_pass(url, process)
            print(json.dumps(report["adversarial"], indent=1), flush=True)


if __name__ == "__main__":
    main()
