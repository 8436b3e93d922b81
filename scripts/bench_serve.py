"""Load-test the rerank server: requests/s and p50/p95 latency at several client concurrencies.

By default the script starts ``scripts/serve.py`` on a free 127.0.0.1 port in a subprocess (building the tiny random
model into build/tiny first if it is missing), sends the same seeded synthetic workload at each concurrency, prints
a table and writes ``bench_serve.json`` to --output-dir. With --url it measures a server that is already running.

Each request has one query and --documents documents whose lengths are drawn uniformly from --document-words
(words of a small vocabulary, one token each). Latency is measured by the client, from sending the request
to reading the whole response; requests/s is completed requests over the wall time of the level; req/round is how
many requests the server merged into one scoring round on average (from its /health counters).

Usage:
    python scripts/bench_serve.py                                  # tiny model, concurrency 1, 4 and 16
    python scripts/bench_serve.py --model build/zerank-1 --requests 500 --documents 32
    python scripts/bench_serve.py --url http://127.0.0.1:8000 --api-key KEY
"""

from __future__ import annotations

import argparse
import json
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
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

logger = logging.getLogger("zerank.bench_serve")

RERANK_PATH = "/v1/models/rerank"
VOCABULARY = (
    "the a of and to in is for on with as by at from that this it be are was an or which model query document "
    "search ranking relevance paris france capital river city history science protein cell energy climate "
    "water market price data network learning language system result study effect patient treatment"
).split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--model", type=Path, default=ROOT / "build" / "tiny",
                        help="zerank folder to serve (default: build/tiny, built if missing).")
    target.add_argument("--url", help="Base URL of a running server (e.g. http://127.0.0.1:8000).")
    parser.add_argument("--api-key", help="Bearer token for --url (a started server gets a random one).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="Client threads per level.")
    parser.add_argument("--requests", type=int, default=200, help="Requests per concurrency level.")
    parser.add_argument("--warmup", type=int, default=10, help="Unmeasured requests before the first level.")
    parser.add_argument("--documents", type=int, default=16, help="Documents per request.")
    parser.add_argument("--document-words", type=int, nargs=2, default=[20, 200], metavar=("MIN", "MAX"),
                        help="Range of document lengths in words.")
    parser.add_argument("--query-words", type=int, default=8, help="Query length in words.")
    parser.add_argument("--max-batch-tokens", type=int, help="Passed to a started server (default: its own).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic workload.")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "bench_serve",
                        help="Where bench_serve.json is written.")
    args = parser.parse_args(argv)
    if any(c < 1 for c in args.concurrency):
        parser.error(f"--concurrency values must be at least 1, got {args.concurrency}.")
    if args.requests < 1 or args.documents < 1 or args.warmup < 0:
        parser.error("--requests and --documents must be at least 1 and --warmup at least 0.")
    low, high = args.document_words
    if not 0 <= low <= high:
        parser.error(f"--document-words needs 0 <= MIN <= MAX, got {low} {high}.")
    return args


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
    """Send ``bodies`` from ``concurrency`` threads (each takes the next body when free); return the summary."""
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
                response = client.post(RERANK_PATH, json=bodies[index])
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def started_server(model: Path, api_key: str, max_batch_tokens: int | None, timeout: float = 300):
    """``scripts/serve.py`` in a subprocess on 127.0.0.1; yields its base URL once /health answers."""
    port = free_port()
    command = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", str(model), "--host", "127.0.0.1",
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


def ensure_model(model: Path) -> Path:
    if (model / "config.json").exists():
        copied = model / "modeling_zerank.py"
        if copied.exists() and copied.read_bytes() != (ROOT / "modeling_zerank.py").read_bytes():
            logger.warning("%s was built with another modeling_zerank.py than this checkout's: the benchmark measures "
                           "that copy (delete the folder to rebuild the default tiny model).", model)
        return model
    if model != ROOT / "build" / "tiny":
        raise FileNotFoundError(f"--model {model} has no config.json (only the default build/tiny is built here).")
    from build import BuildArgs, build, default_tokenizer_dir

    logger.info("Building the tiny random model into %s", model)
    build(BuildArgs(out=model, random=ROOT / "config" / "tiny.json", tokenizer=str(default_tokenizer_dir()),
                    repo_id="zerank-tiny-demo", overwrite=True))
    return model


def benchmark(url: str, api_key: str | None, args: argparse.Namespace) -> dict:
    total = args.warmup + args.requests * len(args.concurrency)
    bodies = make_workload(total, args.documents, tuple(args.document_words), args.query_words, args.seed)
    if args.warmup:
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
                     "document_words": args.document_words, "query_words": args.query_words, "seed": args.seed},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "levels": levels,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.url:
        report = benchmark(args.url.rstrip("/"), args.api_key, args)
    else:
        api_key = secrets.token_urlsafe(16)
        with started_server(ensure_model(args.model), api_key, args.max_batch_tokens) as url:
            report = benchmark(url, api_key, args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / "bench_serve.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['server']['model']} on {report['server']['device']} ({report['server']['dtype']}), "
          f"{args.documents} documents/request")
    print(f"{'concurrency':>11} {'req/s':>8} {'docs/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'req/round':>9}")
    for level in report["levels"]:
        print(f"{level['concurrency']:>11} {level['requests_per_s']:>8.1f} "
              f"{level['requests_per_s'] * args.documents:>8.0f} {level['p50_ms']:>8.1f} {level['p95_ms']:>8.1f} "
              f"{level['requests_per_round']:>9.2f}")
    logger.info("Wrote %s", path)
    return report


if __name__ == "__main__":
    main()
