"""zerank.bench.serve_load (`zerank bench-serve`): the load test of the rerank server, on a `zerank serve` subprocess
(which also shows that the real command obeys SIGTERM: the fixture's exit fails if it does not)."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from zerank import cli
from zerank.bench.arguments import BenchServeArguments
from zerank.bench.serve_load import check_local, ensure_model, make_workload, run_level, started_server, summarize
from zerank.serving.schemas import RERANK_PATH

KEY = "bench-key"


@pytest.fixture(scope="module")
def server_url(tiny_model_dir):
    """`zerank serve` of the tiny model in a subprocess (as `zerank bench-serve` starts it), with a small batch."""
    with started_server(tiny_model_dir, KEY, max_batch_tokens=512, timeout=300,
                        extra=["--drain-timeout", "5"]) as (url, process):
        yield url
    # Exited by itself on SIGTERM, after draining (uvicorn re-raises the signal once it has shut down; a server that
    # hangs is killed after 60 s and started_server raises).
    assert process.returncode in (0, -signal.SIGTERM)


def test_bench_serve_measures_every_request(server_url):
    bodies = make_workload(6, documents=3, document_words=(0, 30), query_words=4, seed=1)
    assert bodies == make_workload(6, documents=3, document_words=(0, 30), query_words=4, seed=1)
    level = run_level(server_url, KEY, bodies, concurrency=3, progress=False)
    assert level["concurrency"] == 3 and level["requests"] == 6
    assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["max_ms"]
    with pytest.raises(RuntimeError, match="401"):
        run_level(server_url, "wrong", bodies[:1], concurrency=1, progress=False)
    summary = summarize([0.01 * i for i in range(1, 101)], wall=4.0)
    assert summary["requests_per_s"] == 25.0
    assert summary["p50_ms"] == pytest.approx(505.0) and summary["p95_ms"] == pytest.approx(950.5)
    assert summary["p99_ms"] == pytest.approx(990.1)


def posts_answered(url: str) -> int:
    """The POST requests the server has answered so far, any route and status (from /metrics): a request whose
    client left is answered too (499), whether it was dropped while its body was read or cancelled in the engine."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return int(sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "zerank_http_requests_total" and sample.labels["method"] == "POST"))


def wait_for(url: str, condition, timeout: float = 120) -> dict:
    """The first /health report that meets ``condition`` (it fails after ``timeout`` s, only if the server is stuck)."""
    deadline = time.monotonic() + timeout
    while not condition(health := httpx.get(f"{url}/health").json()):
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    return health


def give_up_once_queued(url: str, body: dict) -> None:
    """Send ``body`` on a raw connection and close it once the request is in the engine's queue (waiting or being
    scored): its client is certainly gone while its work is under way, however busy the machine is."""
    data = json.dumps(body).encode()
    head = (f"POST {RERANK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port), timeout=120) as connection:
        connection.sendall(head + data)
        wait_for(url, lambda health: health["queued"] >= 1)


def answered(url: str, route: str = RERANK_PATH) -> int:
    """Requests to ``route`` the server has finished with, whatever their status (from /metrics)."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("zerank_http_requests_total{") and f'route="{route}"' in line))


def at_rest(url: str, before: dict, answered_before: int, requests: int, documents: int) -> dict:
    """/health once the server has finished with ``requests`` more requests and its worker has ended the round it
    was in (a cancelled request leaves the queue at once, its unscored pairs are counted when the round ends)."""
    deadline = time.monotonic() + 300  # only a hung server gets there
    while True:
        after = httpx.get(f"{url}/health").json()
        delta = {key: after[key] - before[key] for key in ("requests_scored", "requests_cancelled", "pairs_scored",
                                                           "pairs_cancelled")}
        if (answered(url) >= answered_before + requests and after["queued"] == 0
                and delta["pairs_scored"] + delta["pairs_cancelled"] == documents * delta["requests_cancelled"]):
            return after
        assert time.monotonic() < deadline, ("the server did not come to rest", after, delta)
        time.sleep(0.05)


def submitted(health: dict) -> int:
    """Requests that reached the engine's queue: waiting, being scored, scored or cancelled."""
    return health["queued"] + health["requests_scored"] + health["requests_cancelled"]


def leave_once_queued(url: str, body: dict) -> None:
    """Send ``body`` on a raw connection and close it as soon as the server has queued the request (without
    reading the answer), as a client that gives up does, but never before the server has read its body."""
    start = submitted(httpx.get(f"{url}/health").json())
    data = json.dumps(body).encode()
    head = (f"POST {RERANK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    deadline = time.monotonic() + 300  # only a hung server gets there
    with socket.create_connection((httpx.URL(url).host, httpx.URL(url).port)) as connection:
        connection.sendall(head + data)
        while submitted(httpx.get(f"{url}/health").json()) == start:
            assert time.monotonic() < deadline, "the server did not queue the request"
            time.sleep(0.01)


def test_clients_that_give_up_are_counted_and_their_work_dropped(server_url):
    """Every client of a 400-document request gives up early (each request takes the tiny model over a second, even
    on a quiet machine): the server drops what it had not scored (a client that leaves before its body is read
    costs nothing at all).

    Whether run_level's clients leave before or after the server has read their bodies depends on the machine's
    load, so the server-side checks also use clients that leave only once their request is in the queue; and the
    counters are read only once the server has finished with every request (none can reach the engine later)."""
    before = httpx.get(f"{server_url}/health").json()
    answered_before = answered(server_url)
    bodies = make_workload(4, documents=400, document_words=(150, 200), query_words=4, seed=2)
    level = run_level(server_url, KEY, bodies, concurrency=4, progress=False, give_up=[True] * 4,
                      disconnect_after=0.2)
    assert level["gave_up"] == 4 and level["requests"] == 0 and level["rejected"] == 0
    at_rest(server_url, before, answered_before, requests=4, documents=400)
    for body in bodies:
        leave_once_queued(server_url, body)
    after = at_rest(server_url, before, answered_before, requests=8, documents=400)
    delta = {key: after[key] - before[key] for key in ("requests_scored", "requests_cancelled", "pairs_scored",
                                                       "pairs_cancelled")}
    assert after["queued"] == 0 and delta["requests_scored"] == 0 and delta["requests_cancelled"] >= 4, delta
    assert delta["pairs_scored"] + delta["pairs_cancelled"] == 400 * delta["requests_cancelled"], delta
    assert delta["pairs_cancelled"] > 0, delta
    with pytest.raises(ValueError, match="127.0.0.1"):
        check_local("http://example.com:8000")
    assert check_local("http://localhost:8000/") == "http://localhost:8000"


def test_main_reports_one_level_of_a_running_server(server_url, tmp_path):
    """A tiny run through the command line: every request answered, the report written as JSON."""
    before = httpx.get(f"{server_url}/health").json()
    report = cli.main(["bench-serve", "--url", server_url + "/", "--api-key", KEY, "--concurrency", "2",
                       "--requests", "5", "--warmup", "1", "--documents", "2", "--document-words", "0", "10",
                       "--disconnect-fraction", "0", "--output-dir", str(tmp_path)])
    assert set(report) == {"server", "workload", "machine", "levels"}
    assert report["workload"] == {"requests_per_level": 5, "documents_per_request": 2, "document_words": [0, 10],
                                  "query_words": 8, "disconnect_fraction": 0.0, "disconnect_after_s": 0.1,
                                  "seed": 0}
    [level] = report["levels"]
    assert level["concurrency"] == 2 and level["requests"] == 5 and level["sent"] == 5
    assert level["rejected"] == level["gave_up"] == level["wasted_pairs"] == 0 and level["peak_rss_mb"] is None
    assert 1.0 <= level["requests_per_round"] <= 2.0
    assert 0 < level["p50_ms"] <= level["p95_ms"] <= level["max_ms"] and level["requests_per_s"] > 0
    server = report["server"]
    assert server["status"] == "ok" and server["queued"] == 0
    assert server["requests_scored"] - before["requests_scored"] == 1 + 5  # warm-up and measured requests
    assert server["pairs_scored"] - before["pairs_scored"] == (1 + 5) * 2
    assert json.loads((tmp_path / "bench_serve.json").read_text()) == report


def test_only_the_default_model_is_built(tiny_model_dir, tmp_path):
    assert ensure_model(tiny_model_dir) == tiny_model_dir
    with pytest.raises(FileNotFoundError, match="config.json"):
        ensure_model(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="document-words"):
        BenchServeArguments(document_words=[5, 1])


@pytest.mark.slow
def test_default_run_builds_the_tiny_model_and_starts_a_server(tmp_path, monkeypatch):
    """`zerank bench-serve` with its defaults but a tiny workload: builds build/tiny, starts and stops the server."""
    monkeypatch.chdir(tmp_path)
    report = cli.main(["bench-serve", "--concurrency", "1", "2", "--requests", "3", "--warmup", "0",
                       "--documents", "2", "--max-batch-tokens", "256", "--output-dir", "out"])
    assert (tmp_path / "build" / "tiny" / "config.json").exists()
    assert [level["sent"] for level in report["levels"]] == [3, 3]
    assert all(level["peak_rss_mb"] > 0 for level in report["levels"])
    assert report["server"]["requests_scored"] + report["server"]["requests_cancelled"] == 6
    assert (tmp_path / "out" / "bench_serve.json").exists()
