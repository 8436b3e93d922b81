"""Load-test the rerank server: requests/s, p50/p95/p99 latency, rejected and cancelled requests, wasted work and the
server's peak RSS at several client concurrencies, with clients that give up.

By default ``zerank serve`` is started on a free 127.0.0.1 port in a subprocess (the tiny random model is built into
build/tiny first if it is missing), the same seeded synthetic workload is sent at each concurrency, a table is
printed and ``bench_serve.json`` is written to --output-dir. With --url a server that is already running is measured
(its peak RSS only with --server-pid). Only 127.0.0.1/localhost URLs are accepted: this is a load generator.

Each request has one query and --documents documents whose lengths are drawn uniformly from --document-words
(words of a small vocabulary, one token each). A seeded --disconnect-fraction of the requests come from clients
that give up after --disconnect-after seconds (they close the connection, as a client timeout does). Per level:
    req/s      completed requests (200) over the wall time of the level
    p50..p99   latency of the completed requests, measured by the client (send to last byte)
    rejected   answers 429/503 (queue full, draining; the server says when to retry)
    gave up    requests whose client disconnected before the answer
    wasted     pairs the server scored that no client received: pairs scored (from /health) minus the pairs of the
               completed requests; a server that cancels abandoned work keeps it near zero
    RSS MB     the server process's peak resident memory during the level (sampled every 20 ms)
    req/round  requests merged into one scoring round (from /health)

Command:
    zerank bench-serve                                             # tiny model, concurrency 1, 16 and 64
    zerank bench-serve --model build/zerank-1 --requests 500 --documents 32
    zerank bench-serve --url http://127.0.0.1:8000 --api-key KEY --server-pid 1234
"""

from __future__ import annotations

import dataclasses
import logging
import math
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
from typing import Self

import httpx
import numpy as np
import psutil
from tqdm.auto import tqdm

from zerank.bench.arguments import BenchServeArguments
from zerank.packaging.arguments import BuildArguments
from zerank.packaging.convert import build
from zerank.model.package import stale_remote_code
from zerank.utils.resources import default_tokenizer_dir
from zerank.serving.schemas import RERANK_PATH
from zerank.utils.system import atomic_write_json

logger = logging.getLogger(__name__)

VOCABULARY = (
    "the a of and to in is for on with as by at from that this it be are was an or which model query document "
    "search ranking relevance paris france capital river city history science protein cell energy climate "
    "water market price data network learning language system result study effect patient treatment"
).split()


def make_workload(n: int, documents: int, document_words: tuple[int, int], query_words: int, seed: int,
                  model: str = "zerank-1") -> list[dict]:
    """``n`` request bodies of seeded random text for ``model``."""
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(VOCABULARY) for _ in range(words))

    return [
        {"model": model, "query": text(query_words),
         "documents": [text(rng.randint(*document_words)) for _ in range(documents)]}
        for _ in range(n)
    ]


def summarize(latencies: list[float], wall: float) -> dict:
    """Requests/s and latency percentiles (milliseconds) of the completed requests of one level."""
    values = np.asarray(latencies, dtype=np.float64) * 1000
    if not len(values):
        values = np.asarray([math.nan])
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "max_ms": float(values.max()),
        "wall_s": wall,
    }


class RssSampler:
    """The peak resident memory (MB) of a process, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int | None, interval: float = 0.02):
        self.process = psutil.Process(pid) if pid else None
        self.interval = interval
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                rss = self.process.memory_info().rss / 2**20
            except psutil.Error:
                return
            self.peak_mb = max(self.peak_mb or 0.0, rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        if self.process is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.process is not None:
            self._thread.join()


def run_level(url: str, api_key: str | None, bodies: list[dict], concurrency: int, progress: bool = True,
              give_up: list[bool] | None = None, disconnect_after: float = 0.1) -> dict:
    """Send ``bodies`` from ``concurrency`` threads (each takes the next body when free); return the summary.

    The clients of the bodies marked in ``give_up`` close their connection after ``disconnect_after`` seconds.
    429/503 answers are counted as rejected; any other failure raises ``RuntimeError``.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    give_up = give_up or [False] * len(bodies)
    latencies: list[float] = []
    errors: list[str] = []
    counts = {"completed": 0, "rejected": 0, "gave_up": 0}
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
                timeout = disconnect_after if give_up[index] else 300
                start = time.perf_counter()
                try:
                    response = client.post(RERANK_PATH, json=bodies[index], timeout=timeout)
                except httpx.TimeoutException:
                    with lock:
                        counts["gave_up" if give_up[index] else "rejected"] += 1
                        if not give_up[index]:
                            errors.append(f"timeout after {timeout}s")
                        bar.update()
                    continue
                except httpx.HTTPError as exc:  # counted as a failed request, reported below
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        bar.update()
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                        counts["completed"] += 1
                    elif response.status_code in (429, 503):
                        counts["rejected"] += 1
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
    return {"concurrency": concurrency, **summarize(latencies, wall), "sent": len(bodies),
            "rejected": counts["rejected"], "gave_up": counts["gave_up"]}


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float, poll_s: float = 0.5,
                    log: str | None = None) -> None:
    """Poll ``url``/health until it answers 200. RuntimeError if ``process`` exits first, TimeoutError after
    ``timeout`` seconds; both name ``log`` (the server's output) when given."""
    see = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"The server exited with code {process.returncode} before answering /health{see}.")
        if time.monotonic() > deadline:
            raise TimeoutError(f"The server did not answer {url}/health within {timeout:.0f}s{see}.")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(poll_s)


@contextmanager
def started_server(model: Path, api_key: str, max_batch_tokens: int | None = None, timeout: float = 300,
                   extra: list[str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``zerank serve`` in a subprocess on 127.0.0.1 (``extra``: more flags); yields (base URL, process) once /health
    answers. On exit it is stopped with SIGTERM, which it must obey within its drain time (else RuntimeError)."""
    port = free_port()
    command = [sys.executable, "-m", "zerank.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", *(extra or [])]
    if max_batch_tokens:
        command += ["--max-batch-tokens", str(max_batch_tokens)]
    logger.info("Starting %s", " ".join(command))
    process = subprocess.Popen(command, env={**os.environ, "ZERANK_API_KEY": api_key})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, timeout)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError("The server did not exit within 60 s of SIGTERM.") from None


def check_local(url: str) -> str:
    """``url`` without a trailing slash, if it points at this machine (a load generator must not aim elsewhere)."""
    host = httpx.URL(url).host
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"--url must point at 127.0.0.1 or localhost, got {url}.")
    return url.rstrip("/")


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


def benchmark(url: str, api_key: str | None, args: BenchServeArguments, server_pid: int | None = None) -> dict:
    """Warm up, then run every concurrency level of ``args`` against the server at ``url``; the report."""
    total = args.warmup + args.requests * len(args.concurrency)
    health = httpx.get(f"{url}/health", timeout=30).json()
    model = (health.get("served_model_names") or ["zerank-1"])[0]
    bodies = make_workload(total, args.documents, tuple(args.document_words), args.query_words, args.seed, model)
    rng = random.Random(args.seed + 1)
    give_up = [rng.random() < args.disconnect_fraction for _ in bodies]
    if args.warmup:
        logger.info("Warming up with %d request(s)", args.warmup)
        run_level(url, api_key, bodies[: args.warmup], 1, progress=False)
    health = httpx.get(f"{url}/health", timeout=30).json()
    levels = []
    offset = args.warmup
    for concurrency in args.concurrency:
        chunk = slice(offset, offset + args.requests)
        with RssSampler(server_pid) as rss:
            level = run_level(url, api_key, bodies[chunk], concurrency, give_up=give_up[chunk],
                              disconnect_after=args.disconnect_after)
            # Let the server finish (or drop) what abandoned clients left behind before reading its counters.
            deadline = time.monotonic() + 600
            while (after := httpx.get(f"{url}/health", timeout=30).json())["queued"] and time.monotonic() < deadline:
                time.sleep(0.05)
        offset += args.requests
        # Requests merged per scoring round by the server's worker (1.0: no batching across requests).
        rounds = after["scoring_rounds"] - health["scoring_rounds"]
        level["requests_per_round"] = (after["requests_scored"] - health["requests_scored"]) / max(rounds, 1)
        level["wasted_pairs"] = after["pairs_scored"] - health["pairs_scored"] - level["requests"] * args.documents
        level["server_cancelled"] = after.get("requests_cancelled", 0) - health.get("requests_cancelled", 0)
        level["peak_rss_mb"] = rss.peak_mb
        levels.append(level)
        health = after
    return {
        "server": health,
        "workload": {"requests_per_level": args.requests, "documents_per_request": args.documents,
                     "document_words": list(args.document_words), "query_words": args.query_words,
                     "disconnect_fraction": args.disconnect_fraction, "disconnect_after_s": args.disconnect_after,
                     "seed": args.seed},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "levels": levels,
    }


def print_table(report: dict, documents: int) -> None:
    """The levels of ``report`` as a table on stdout."""
    server = report["server"]
    print(f"\n{server['model']} on {server['device']} ({server['dtype']}), {documents} documents/request, "
          f"{report['workload']['disconnect_fraction']:.0%} of clients give up after "
          f"{report['workload']['disconnect_after_s']:g}s")
    print(f"{'concurrency':>11} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'rejected':>8} "
          f"{'gave up':>7} {'wasted':>7} {'RSS MB':>7} {'req/round':>9}")
    for level in report["levels"]:
        rss = f"{level['peak_rss_mb']:.0f}" if level["peak_rss_mb"] else "-"
        print(f"{level['concurrency']:>11} {level['requests_per_s']:>7.1f} {level['p50_ms']:>8.1f} "
              f"{level['p95_ms']:>8.1f} {level['p99_ms']:>8.1f} {level['rejected']:>8} {level['gave_up']:>7} "
              f"{level['wasted_pairs']:>7} {rss:>7} {level['requests_per_round']:>9.2f}")


def main(args: BenchServeArguments) -> dict:
    """``zerank bench-serve``: measure a started (or --url) server; write ``bench_serve.json``; the report."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.url:
        report = benchmark(check_local(args.url), args.api_key, args, args.server_pid)
    else:
        api_key = secrets.token_urlsafe(16)
        with started_server(ensure_model(args.model), api_key, args.max_batch_tokens) as (url, process):
            report = benchmark(url, api_key, args, process.pid)
    path = atomic_write_json(Path(args.output_dir) / "bench_serve.json", report)
    print_table(report, args.documents)
    logger.info("Wrote %s", path)
    return report
