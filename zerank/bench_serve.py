"""Load-test the rerank server: requests/s and p50/p95 latency at several client concurrencies.

By default ``zerank serve`` is started on a free 127.0.0.1 port in a subprocess (the tiny random model is built into
build/tiny first if it is missing), the same seeded synthetic workload is sent at each concurrency, a table is
printed and ``bench_serve.json`` is written to --output-dir. With --url a server that is already running is measured.

Each request has one query and --documents documents whose lengths are drawn uniformly from --document-words
(words of a small vocabulary, one token each). Latency is measured by the client, from sending the request
to reading the whole response; requests/s is completed requests over the wall time of the level; req/round is how
many requests the server merged into one scoring round on average (from its /health counters).

Command:
    zerank bench-serve                                             # tiny model, concurrency 1, 4 and 16
    zerank bench-serve --model build/zerank-1 --requests 500 --documents 32
    zerank bench-serve --url http://127.0.0.1:8000 --api-key KEY
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from tqdm.auto import tqdm

from zerank.arguments import BenchServeArguments, BuildArguments
from zerank.convert import build
from zerank.package import stale_remote_code
from zerank.resources import default_tokenizer_dir
from zerank.server import RERANK_PATH
from zerank.system import atomic_write_json

logger = logging.getLogger(__name__)

VOCABULARY = (
    "the a of and to in is for on with as by at from that this it be are was an or which model query document "
    "search ranking relevance paris france capital river city history science protein cell energy climate "
    "water market price data network learning language system result study effect patient treatment"
).split()


def make_workload(n: int, documents: int, document_words: tuple[int, int], query_words: int, seed: int) -> list[dict]:
    """``n`` request bodies of seeded random text."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(VOCABULARY) for _ in range(words))

    return [
        {"model": "zerank", "query": text(query_words),
         "documents": [text(rng.randint(*document_words)) for _ in range(documents)]}
        for _ in range(n)
    ]


def summarize(latencies: list[float], wall: float) -> dict:
    """Requests/s and latency percentiles (milliseconds) of one level."""
    values = np.asarray(latencies, dtype=np.float64) * 1000
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "mean_ms": float(values.mean()),
        "max_ms": float(values.max()),
        "wall_s": wall,
    }


def run_level(url: str, api_key: str | None, bodies: list[dict], concurrency: int, progress: bool = True) -> dict:
    """Send ``bodies`` from ``concurrency`` threads (each takes the next body when free); return the summary.

    Raises ``RuntimeError`` if any request is not answered with 200.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    pending = iter(range(len(bodies)))
    bar = tqdm(total=len(bodies), desc=f"concurrency {concurrency}", unit="req", disable=not progress)

    def worker():
        with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
            while True:
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                start = time.perf_counter()
                try:
                    response = client.post(RERANK_PATH, json=bodies[index])
                except httpx.HTTPError as exc:  # counted as a failed request, reported below
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        bar.update()
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                    bar.update()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    bar.close()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed at concurrency {concurrency}, e.g. {errors[0]}")
    return {"concurrency": concurrency, **summarize(latencies, wall)}


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def started_server(model: Path, api_key: str, max_batch_tokens: int | None = None,
                   timeout: float = 300) -> Iterator[str]:
    """``zerank serve`` in a subprocess on 127.0.0.1; yields its base URL once /health answers."""
    port = free_port()
    command = [sys.executable, "-m", "zerank.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    if max_batch_tokens:
        command += ["--max-batch-tokens", str(max_batch_tokens)]
    logger.info("Starting %s", " ".join(command))
    process = subprocess.Popen(command, env={**os.environ, "ZERANK_API_KEY": api_key})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"The server exited with code {process.returncode} before answering /health.")
            if time.monotonic() > deadline:
                raise TimeoutError(f"The server did not answer {url}/health within {timeout:.0f}s.")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def default_model() -> Path:
    """The default ``--model`` (the only folder this command builds when it is missing)."""
    return next(f.default for f in dataclasses.fields(BenchServeArguments) if f.name == "model")


def ensure_model(model: Path) -> Path:
    """``model`` if it holds a model; the default folder is built (tiny random weights) when missing."""
    if (model / "config.json").exists():
        stale = stale_remote_code(model)
        if stale:
            logger.warning("%s was built with other %s than this installation's: the benchmark measures that copy "
                           "(delete the folder to rebuild the default tiny model).", model, ", ".join(stale))
        return model
    if Path(model).resolve() != default_model().resolve():
        raise FileNotFoundError(f"--model {model} has no config.json (only the default {default_model()} is built "
                                "here).")
    logger.info("Building the tiny random model into %s", model)
    build(BuildArguments(out=model, random="tiny", tokenizer=str(default_tokenizer_dir()),
                         repo_id="zerank-tiny-demo", overwrite=True))
    return model


def benchmark(url: str, api_key: str | None, args: BenchServeArguments) -> dict:
    """Warm up, then run every concurrency level of ``args`` against the server at ``url``; the report."""
    total = args.warmup + args.requests * len(args.concurrency)
    bodies = make_workload(total, args.documents, tuple(args.document_words), args.query_words, args.seed)
    if args.warmup:
        logger.info("Warming up with %d request(s)", args.warmup)
        run_level(url, api_key, bodies[: args.warmup], 1, progress=False)
    health = httpx.get(f"{url}/health", timeout=30).json()
    levels = []
    offset = args.warmup
    for concurrency in args.concurrency:
        level = run_level(url, api_key, bodies[offset : offset + args.requests], concurrency)
        offset += args.requests
        after = httpx.get(f"{url}/health", timeout=30).json()
        # Requests merged per scoring round by the server's worker (1.0: no batching across requests).
        rounds = after["scoring_rounds"] - health["scoring_rounds"]
        level["requests_per_round"] = (after["requests_scored"] - health["requests_scored"]) / max(rounds, 1)
        levels.append(level)
        health = after
    return {
        "server": health,
        "workload": {"requests_per_level": args.requests, "documents_per_request": args.documents,
                     "document_words": list(args.document_words), "query_words": args.query_words,
                     "seed": args.seed},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "levels": levels,
    }


def print_table(report: dict, documents: int) -> None:
    """The levels of ``report`` as a table on stdout."""
    server = report["server"]
    print(f"\n{server['model']} on {server['device']} ({server['dtype']}), {documents} documents/request")
    print(f"{'concurrency':>11} {'req/s':>8} {'docs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'req/round':>9}")
    for level in report["levels"]:
        print(f"{level['concurrency']:>11} {level['requests_per_s']:>8.1f} "
              f"{level['requests_per_s'] * documents:>8.0f} {level['p50_ms']:>8.1f} {level['p95_ms']:>8.1f} "
              f"{level['requests_per_round']:>9.2f}")


def main(args: BenchServeArguments) -> dict:
    """``zerank bench-serve``: measure a started (or --url) server; write ``bench_serve.json``; the report."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.url:
        report = benchmark(args.url.rstrip("/"), args.api_key, args)
    else:
        api_key = secrets.token_urlsafe(16)
        with started_server(ensure_model(args.model), api_key, args.max_batch_tokens) as url:
            report = benchmark(url, api_key, args)
    path = atomic_write_json(Path(args.output_dir) / "bench_serve.json", report)
    print_table(report, args.documents)
    logger.info("Wrote %s", path)
    return report
