"""What ``zerank serve`` does around the routes: strict JSON, body size and body timeout checks, Prometheus metrics and
one JSON log line per request on the ``zerank.access`` logger (one pure ASGI middleware), and uvicorn's h11 protocol
with a request-header timeout."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import h11
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from uvicorn.protocols.http.h11_impl import H11Protocol

from zerank.serving.arguments import ServeArguments
from zerank.serving.engine import RerankEngine

access_logger = logging.getLogger("zerank.access")


class _Constant:
    def __init__(self, literal: str):
        self.literal = literal


MAX_JSON_DEPTH = 128
"""Deepest nesting of arrays and objects a JSON body may have (deeper bodies get 400 before any parsing that
recurses: pydantic, the routes)."""
MAX_HEADER_BYTES = 16 * 1024
"""Largest request head (h11's default limit for an incomplete one); larger ones get 431."""


def invalid_json_field(body: bytes) -> str | None:
    """Where a JSON body holds a NaN/Infinity literal or a lone surrogate, or nests deeper than ``MAX_JSON_DEPTH``,
    as ``field: reason``; None if nowhere (also for malformed JSON, which FastAPI answers itself)."""
    try:
        value = json.loads(body, parse_constant=_Constant)
    except RecursionError:
        return f"body: the JSON nests deeper than {MAX_JSON_DEPTH} levels"
    except UnicodeDecodeError:
        return "body: the JSON is not valid UTF-8"
    except ValueError:
        return None
    stack: list[tuple[str, Any, int]] = [("body", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, _Constant):
            return f"{path}: {item.literal} is not valid JSON (JSON has no NaN or Infinity)"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{path}: the string holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode"
        elif isinstance(item, (dict, list)) and depth >= MAX_JSON_DEPTH:
            return f"{path}: the JSON nests deeper than {MAX_JSON_DEPTH} levels"
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((f"{path}.{_printable(key)}", key, depth + 1))
                stack.append((f"{path}.{_printable(key)}", child, depth + 1))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))
    return None


def _printable(key: str, limit: int = 64) -> str:
    """A JSON key as it can appear in a message: lone surrogates escaped, at most ``limit`` characters."""
    key = key.encode("utf-8", "backslashreplace").decode("utf-8")
    return key if len(key) <= limit else key[: limit - 3] + "..."


class ServerMetrics:
    """The Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self, engine: RerankEngine):
        self.registry = CollectorRegistry()
        self.requests = Counter("zerank_http_requests", "HTTP requests answered, by route and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("zerank_http_request_duration_seconds", "Seconds from request to response.",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.documents = Histogram("zerank_request_documents", "Documents per rerank request.",
                                   registry=self.registry, buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
        self.rejected = Counter("zerank_rejected_requests", "Requests refused before scoring, by reason.", ["reason"],
                                registry=self.registry)
        Gauge("zerank_queue_requests", "Requests waiting for or being scored.", registry=self.registry
              ).set_function(lambda: engine.queued_jobs)
        Gauge("zerank_queue_pairs", "Pairs of the requests waiting for or being scored.", registry=self.registry
              ).set_function(lambda: engine.queued_pairs)
        self.registry.register(_EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """The engine's own counters as Prometheus counters (the engine keeps one count of each)."""

    def __init__(self, engine: RerankEngine):
        self.engine = engine

    def collect(self):
        engine = self.engine
        for name, help_text, value in (
            ("zerank_requests_scored", "Requests whose pairs were all scored.", engine.requests_scored),
            ("zerank_pairs_scored", "(query, document) pairs scored.", engine.pairs_scored),
            ("zerank_scoring_rounds", "Scoring rounds (requests merged into one).", engine.scoring_rounds),
            ("zerank_requests_cancelled", "Requests cancelled (client gone, timeout, shutdown).",
             engine.requests_cancelled),
            ("zerank_pairs_cancelled", "Pairs of cancelled requests that were never scored.", engine.pairs_cancelled),
            ("zerank_scoring_seconds", "Seconds the worker spent scoring.", engine.scoring_seconds),
        ):
            yield CounterMetricFamily(name, help_text, value=value)


REJECTIONS = {408: "body_timeout", 413: "too_large", 429: "queue_full", 503: "unavailable"}
"""The statuses counted as rejections, by the reason label of zerank_rejected_requests_total."""


class ServingMiddleware:
    """Body size, body timeout and strict-JSON checks, then metrics and one JSON log line per request.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``), so the app's ``receive`` still reports a client's
    disconnect while its request is being scored.
    """

    def __init__(self, app, args: ServeArguments, metrics: ServerMetrics):
        self.app = app
        self.args = args
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        info: dict[str, Any] = {}
        scope.setdefault("state", {})["log"] = info  # handlers add counts (documents, pairs, tokens) to the log line
        status = [0]

        async def send_recording(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            error, receive = await self._read_body(scope, receive)
            if error is not None:
                await error(scope, receive, send_recording)
            else:
                await self.app(scope, receive, send_recording)
        except asyncio.CancelledError:
            # The drain time after SIGTERM is over: say so and end the request (re-raising would make uvicorn log
            # a traceback for every request cut off by a shutdown; the access log line says "cancelled").
            info["cancelled"] = "shutdown"
            if not status[0]:
                await JSONResponse({"detail": "The server shut down before this request was scored; retry on "
                                              "another replica or later."}, status_code=503,
                                   headers={"Retry-After": "1", "Connection": "close"})(scope, receive, send_recording)
        finally:
            status[0] = status[0] or 500
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(scope["method"], label, str(status[0])).inc()
            self.metrics.latency.labels(label).observe(elapsed)
            if status[0] in REJECTIONS:
                self.metrics.rejected.labels(REJECTIONS[status[0]]).inc()
            if "documents" in info:
                self.metrics.documents.observe(info["documents"])
            access_logger.info(json.dumps({"method": scope["method"], "route": label, "status": status[0],
                                           "seconds": round(elapsed, 4), **info}))

    async def _read_body(self, scope, receive):
        """(an error response or None, the receive the app gets): the request head is checked for size, POST bodies
        are read here, within the size and time limits, checked for invalid JSON values, and replayed to the app."""
        head = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) + sum(
            len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > MAX_HEADER_BYTES:
            return JSONResponse({"detail": f"The request line and headers have {head} bytes; this server accepts at "
                                           f"most {MAX_HEADER_BYTES}."}, status_code=431,
                                headers={"Connection": "close"}), receive
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return None, receive
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is None:
            return JSONResponse({"detail": "A Content-Length header is required."}, status_code=411), receive
        if not length.isdigit():
            return JSONResponse({"detail": f"Invalid Content-Length header {length.decode()!r}."},
                                status_code=400), receive
        if int(length) > self.args.max_request_bytes:
            return JSONResponse({"detail": f"The request body has {int(length)} bytes; this server accepts at most "
                                           f"{self.args.max_request_bytes} (--max-request-bytes)."},
                                status_code=413, headers={"Connection": "close"}), receive
        chunks = []
        try:
            async with asyncio.timeout(self.args.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return PlainTextResponse("", status_code=499), receive
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return JSONResponse({"detail": f"The request body was not received within {self.args.body_timeout:g}s "
                                           "(--body-timeout)."}, status_code=408,
                                headers={"Connection": "close"}), receive
        body = b"".join(chunks)
        if b"json" in headers.get(b"content-type", b"json"):
            problem = invalid_json_field(body)
            if problem is not None:
                return JSONResponse({"detail": f"Invalid JSON value at {problem}."}, status_code=400), receive
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request headers take longer than ``header_timeout``
    (uvicorn bounds idle keep-alive connections but not slowly sent headers), and answers a request h11 cannot read
    with JSON: 431 for headers over ``MAX_HEADER_BYTES``, else 400, reading and dropping the rest of the request
    before it closes (a close with unread data would reset the connection before the client reads the answer)."""

    header_timeout: float = 10.0
    _discarding: bool = False

    def send_400_response(self, msg: str) -> None:
        too_large = len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES
        status = 431 if too_large else 400
        detail = (f"The request line and headers are over {MAX_HEADER_BYTES} bytes." if too_large
                  else "Invalid HTTP request: it could not be parsed as HTTP/1.1.")
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers)))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self._cancel_header_timer()
        self._discarding = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(2.0, self.transport.close)  # a client that keeps sending gets 2 s, then the close

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        # The next request's headers get the same time (uvicorn's keep-alive timeout closes an idle connection
        # sooner, but stops counting at the first byte).
        super().on_response_complete()
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
        self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("Closing a connection whose request headers took over %gs", self.header_timeout)
            self.transport.close()
