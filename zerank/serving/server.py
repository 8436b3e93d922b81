"""Serve a zerank model over HTTP with every rerank API that clients already speak (FastAPI + uvicorn).

One scoring core answers four request shapes; every score is zerank's calibrated 0..1 score, the same number as
``CrossEncoder.predict`` gives for the pair::

    POST /v1/models/rerank   ZeroEntropy (official SDKs: ZeroEntropy(base_url="http://HOST:PORT/v1"), langchain-zerank)
        {"model", "query", "documents": [str], "top_n"?, "latency"?}
        -> {"results": [{"index", "relevance_score"}], "actual_latency_mode", "e2e_latency", "inference_latency",
            "total_bytes", "total_tokens"}
    POST /v1/rerank, /v2/rerank   Cohere / Jina / vLLM (cohere.ClientV2(base_url="http://HOST:PORT"), LangChain,
                                  LlamaIndex, Haystack, Dify, Open WebUI, RAGFlow)
        {"model"?, "query", "documents": [str | {"text"}], "top_n"?, "return_documents"?, "max_tokens_per_doc"?}
        -> {"id", "model", "results": [{"index", "relevance_score", "document"?: {"text"}}], "meta", "usage"}
    POST /rerank             Hugging Face text-embeddings-inference
        {"query", "texts": [str], "raw_scores"?, "return_text"?, "truncate"?, "truncation_direction"?}
        -> [{"index", "score", "text"?}]
    GET /v1/models           the served model's names (OpenAI list shape)

Results come most relevant first (ties keep request order). ``model`` must be one of the served names: the model's
own name (``--served-model-name``, default the folder or hub name) and, unless ``--no-zeroentropy-aliases``,
ZeroEntropy's model names (``zerank-1``, ``zerank-1-small``, ``zerank-2``), which its SDKs and langchain-zerank send.

No lost or wasted work under load:
    * one worker thread scores every request; requests that arrive while it is busy are merged (up to
      ``--max-round-tokens``) and scored in chunks of one forward batch; between chunks the pairs of requests whose
      client disconnected or whose ``--request-timeout`` passed are dropped, so abandoned work stops within a batch;
    * the queue is bounded in pairs (``--max-queued-pairs``): beyond it a request gets 429 with ``Retry-After`` (the
      seconds the queue needs at the measured pairs/s); while shutting down, 503 with ``Retry-After``;
    * SIGTERM stops accepting connections, lets in-flight requests finish for ``--drain-timeout`` seconds, cancels
      the rest and exits;
    * a connection that does not send its request headers within ``--header-timeout`` is closed; a body not received
      within ``--body-timeout`` gets 408;
    * documents are cut to what the model can read (its context minus the query and the template; lower with
      ``--max-document-tokens`` or a request's ``max_tokens_per_doc``), so a huge document costs one context;
    * ``NaN``/``Infinity`` literals and lone surrogates (``"\\ud800"``) get a JSON 400 naming the field.

Errors are JSON ``{"detail": ...}``: 400 (a limit or bad JSON), 401 (key), 404 (model), 408 (slow body), 411 (no
Content-Length), 413 (body too large), 422 (malformed request), 429/503 (overloaded, draining; ``Retry-After``).

Operations: ``GET /health`` (no key; status and queue counters, never the model's path), ``GET /metrics``
(Prometheus text; key needed when one is set), one JSON log line per request on the ``zerank.access`` logger
(method, route, status, seconds, documents, pairs, tokens; never the key, the query or document text). The OpenAPI
schema is at ``/openapi.json``, interactive docs at ``/docs``.

Command:
    zerank serve --model build/tiny --host 127.0.0.1 --port 8000
    ZERANK_API_KEY=secret zerank serve --model zeroentropy/zerank-1 --host 0.0.0.0 --port 8000

Binding a non-loopback address needs an API key (``--api-key`` or $ZERANK_API_KEY); the server refuses to start
without one.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import queue
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h11
import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from pydantic import BaseModel, Field
from sentence_transformers import CrossEncoder
from starlette.concurrency import run_in_threadpool
from uvicorn.protocols.http.h11_impl import H11Protocol

from zerank.serving.arguments import ServeArguments
from zerank.utils.arguments import ModelArguments
from zerank.model.loading import load_from_arguments
from zerank.model.scoring import batch_token_budget, calibrated_score, score_pairs, template_overhead_tokens

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("zerank.access")

RERANK_PATH = "/v1/models/rerank"
ZEROENTROPY_MODELS = ("zerank-1", "zerank-1-small", "zerank-2")
"""Model names ZeroEntropy's SDKs and integrations send (langchain-zerank: zerank-1-small): served as aliases."""


# --- API schemas ---


class ZeroEntropyRerankRequest(BaseModel):
    """The zeroentropy SDK's ModelRerankParams."""

    model: str = Field(description="A served model name (see GET /v1/models).", examples=["zerank-1"])
    query: str = Field(description="The query to rerank the documents by.")
    documents: list[str] = Field(description="The documents to rerank, each a string. May be empty.")
    top_n: int | None = Field(None, ge=1, description="Return only the n most relevant documents (default: all).")
    latency: Literal["fast", "slow"] | None = Field(
        None, description="Accepted for compatibility with ZeroEntropy's API; a self-hosted server has one mode."
    )



class RerankResult(BaseModel):
    index: int = Field(description="Index of the document in the request's `documents`.")
    relevance_score: float = Field(description="Calibrated relevance in [0, 1]; depends only on the query and "
                                               "this document.")


class RerankResponse(BaseModel):
    results: list[RerankResult] = Field(description="Results by descending relevance (ties keep request order).")
    actual_latency_mode: Literal["fast", "slow"] = Field(description="The requested mode, `fast` by default.")
    e2e_latency: float = Field(description="Seconds from receiving the request to sending the response.")
    inference_latency: float = Field(description="Seconds of model scoring for the batch this request was in.")
    total_bytes: int = Field(description="UTF-8 bytes of the query and documents.")
    total_tokens: int = Field(description="Tokens scored: every (query, document) prompt, template included.")


class TextDocument(BaseModel):
    text: str = Field(description="The document's text.")


class CohereRerankRequest(BaseModel):
    """Cohere's /v1 and /v2 rerank request, as Jina, vLLM, Infinity and SGLang also accept it."""

    model: str | None = Field(None, description="A served model name (default: the served model).")
    query: str = Field(description="The query to rerank the documents by.")
    documents: list[str | TextDocument] = Field(description="Strings or {\"text\": ...} objects. May be empty.")
    top_n: int | None = Field(None, ge=1, description="Return only the n most relevant documents (default: all).")
    return_documents: bool | None = Field(
        None, description="Echo each document's text as `document.text` (default: true on /v1 as Jina and vLLM "
                          "do, false on /v2 as Cohere does).")
    max_tokens_per_doc: int | None = Field(None, ge=1, description="Cut documents to their first tokens.")


class CohereDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int = Field(description="Index of the document in the request's `documents`.")
    relevance_score: float = Field(description="Calibrated relevance in [0, 1].")
    document: CohereDocument | None = Field(None, description="The document, with `return_documents`.")


class Usage(BaseModel):
    total_tokens: int = Field(description="Tokens scored: every (query, document) prompt, template included.")
    prompt_tokens: int = Field(description="The same count (there are no completion tokens).")


class CohereRerankResponse(BaseModel):
    id: str = Field(description="A fresh id for this response.")
    model: str = Field(description="The served model's name.")
    results: list[CohereResult] = Field(description="Results by descending relevance (ties keep request order).")
    meta: dict[str, Any] = Field(description="Cohere's `meta`: api_version and billed_units.")
    usage: Usage


class TEIRerankRequest(BaseModel):
    """text-embeddings-inference's /rerank request."""

    query: str
    texts: list[str] = Field(description="The documents to rerank.")
    raw_scores: bool = Field(False, description="Return the calibrated logit instead of the 0..1 score.")
    return_text: bool = Field(False, description="Echo each text.")
    truncate: bool | None = Field(False, description="Cut documents longer than the server accepts (else 400).")
    truncation_direction: Literal["left", "right", "Left", "Right"] = Field(
        "right", description="Which end of a long document is kept: right cuts the end, left the beginning.")


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "zerank"
    root: str = Field(description="The canonical name of the served model this name resolves to.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "draining"]
    model: str = Field(description="The served model's name (never its local path).")
    served_model_names: list[str]
    device: str
    dtype: str
    max_seq_length: int
    requests_scored: int
    scoring_rounds: int
    pairs_scored: int
    requests_cancelled: int
    pairs_cancelled: int
    requests_rejected: int
    queued: int = Field(description="Requests waiting for or being scored.")
    queued_pairs: int = Field(description="Their pairs (bounded by --max-queued-pairs).")


# --- scoring engine ---


class RequestError(ValueError):
    """A request that breaks a limit: answered with ``status`` and this message."""

    def __init__(self, message: str, status: int = 400, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    def http(self) -> HTTPException:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return HTTPException(self.status, str(self), headers=headers)


@dataclass
class Prepared:
    """A checked request: its pairs (long documents cut), each pair's tokens and the counts responses report."""

    pairs: list[tuple[str, str]]
    lengths: list[int]
    total_bytes: int

    @property
    def total_tokens(self) -> int:
        return sum(self.lengths)


@dataclass(eq=False)
class Job:
    """Pairs waiting to be scored; the future resolves to (float32 calibrated logits, inference seconds).

    ``cancelled`` is set by the request side (client gone, timeout, shutdown); the worker drops the job's remaining
    pairs at its next chunk.
    """

    pairs: list[tuple[str, str]]
    lengths: list[int]
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    settled: bool = False  # scored, failed or cancelled: out of the queue counts

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


_STOP = object()


class RerankEngine:
    """One ``CrossEncoder`` and one worker thread that scores every request.

    The worker takes the oldest pending job, adds the jobs queued behind it while their tokens fit in
    ``args.max_round_tokens``, and scores their pairs in chunks of one forward batch (``max_batch_tokens``, default:
    the model's budget for its device kind) with ``score_pairs``; before each chunk it drops the pairs of cancelled
    jobs. Each job's future then gets its own scores, in its own order. The pairs of unfinished jobs are bounded by
    ``args.max_queued_pairs``.
    """

    def __init__(self, model: CrossEncoder, args: ServeArguments, max_batch_tokens: int | None = None):
        self.model = model
        self.args = args
        self.max_batch_tokens = max_batch_tokens
        self.chunk_tokens = max_batch_tokens or batch_token_budget(model)
        self.max_seq_length = int(model.max_seq_length)
        module = model[0]
        self.max_query_tokens = int(getattr(module, "max_query_tokens", self.max_seq_length // 2))
        # Request preparation runs in request threads: it gets its own tokenizer (a fast tokenizer must not be used
        # by two threads at once) and a lock, so it never races the worker's tokenizer.
        self.tokenizer = copy.deepcopy(model.tokenizer)
        self._tokenizer_lock = threading.Lock()
        self.template_tokens = template_overhead_tokens(self.tokenizer)
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the counters below
        self.draining = False
        self.queued_jobs = 0
        self.queued_pairs = 0
        self.requests_scored = 0
        self.scoring_rounds = 0
        self.pairs_scored = 0
        self.requests_cancelled = 0
        self.pairs_cancelled = 0
        self.requests_rejected = 0
        self.scoring_seconds = 0.0
        self._pairs_per_second: float | None = None  # moving average of the worker's speed, for Retry-After

    # request side

    def prepare(self, query: str, documents: list[str], *, max_document_tokens: int | None = None,
                truncate: bool | None = None, direction: Literal["left", "right"] = "right") -> Prepared:
        """Check the query, cut long documents and count tokens (raises ``RequestError``).

        A document may have at most the tokens the model can read after the query and the template, further capped
        by ``args.max_document_tokens`` and ``max_document_tokens``. Longer ones are cut (``direction`` right keeps
        their beginning, left their end) or refused with 400, as ``truncate`` says (default: ``args.long_documents``).
        """
        truncate = self.args.long_documents == "truncate" if truncate is None else truncate
        with self._tokenizer_lock:
            query_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
            if query_tokens > self.max_query_tokens:
                raise RequestError(f"The query has {query_tokens} tokens; this model accepts at most "
                                   f"{self.max_query_tokens} (max_query_tokens).")
            caps = [self.max_seq_length - query_tokens - self.template_tokens, self.args.max_document_tokens,
                    max_document_tokens]
            cap = max(1, min(c for c in caps if c is not None))
            documents = list(documents)
            encoded = self.tokenizer(documents, add_special_tokens=False, return_offsets_mapping=True) \
                if documents else {"input_ids": [], "offset_mapping": []}
            document_tokens = [len(ids) for ids in encoded["input_ids"]]
            for i, n in enumerate(document_tokens):
                if n <= cap:
                    continue
                if not truncate:
                    raise RequestError(f"Document {i} has {n} tokens; this server accepts at most {cap} for this "
                                       "query (the model's context, --max-document-tokens, max_tokens_per_doc).")
                # Keep the text of the first (or last) `cap` tokens: offsets are character spans of the text.
                offsets = encoded["offset_mapping"][i]
                documents[i] = (documents[i][: offsets[cap - 1][1]] if direction == "right"
                                else documents[i][offsets[n - cap][0]:])
                document_tokens[i] = len(self.tokenizer(documents[i], add_special_tokens=False)["input_ids"])
        lengths = [min(query_tokens + n + self.template_tokens, self.max_seq_length) for n in document_tokens]
        return Prepared(
            pairs=[(query, document) for document in documents],
            lengths=lengths,
            total_bytes=len(query.encode()) + sum(len(document.encode()) for document in documents),
        )

    def retry_after(self) -> int:
        """Seconds the queued pairs need at the measured speed (1..60)."""
        speed = self._pairs_per_second
        if not speed:
            return 1
        return int(min(60, max(1, math.ceil(self.queued_pairs / speed))))

    def submit(self, pairs: list[tuple[str, str]], lengths: list[int]) -> Job:
        """Queue pairs for scoring (raises ``RequestError`` 429 when the queue is full, 503 while draining).

        Jobs queued before ``start`` wait for it (and are merged in its first rounds).
        """
        job = Job(pairs, list(lengths))
        with self._lock:
            if self.draining:
                self.requests_rejected += 1
                raise RequestError("The server is shutting down; retry on another replica or later.", 503,
                                   retry_after=self.retry_after())
            if self.queued_jobs and self.queued_pairs + len(pairs) > self.args.max_queued_pairs:
                self.requests_rejected += 1
                raise RequestError(f"The server is busy: {self.queued_pairs} pairs are queued and it queues at most "
                                   f"{self.args.max_queued_pairs} (--max-queued-pairs); retry later.", 429,
                                   retry_after=self.retry_after())
            self.queued_jobs += 1
            self.queued_pairs += len(pairs)
        self._queue.put(job)
        return job

    def cancel(self, job: Job) -> None:
        """Drop ``job``: its remaining pairs are not scored (the client is gone or has given up)."""
        with self._lock:
            if job.settled:
                return
            job.cancelled = True
            self.requests_cancelled += 1
            self._settle(job)
            if job.future.cancel():  # still queued: none of its pairs will be scored, and its texts can go now
                self.pairs_cancelled += len(job.lengths)
                job.pairs = []

    def _settle(self, job: Job) -> None:
        """Take a finished or cancelled job out of the queue counts (with ``_lock`` held)."""
        job.settled = True
        self.queued_jobs -= 1
        self.queued_pairs -= len(job.lengths)

    async def score(self, prepared: Prepared,
                    disconnected: Callable[[], Awaitable[None]] | None = None) -> tuple[np.ndarray, float]:
        """Score ``prepared`` (calibrated logits, inference seconds), cancelling the job when the awaiting task is
        cancelled, when ``disconnected()`` completes first (raises ``ClientDisconnected``) or after
        ``args.request_timeout`` (raises ``RequestError`` 503)."""
        if not prepared.pairs:
            return np.zeros(0, dtype=np.float32), 0.0
        job = self.submit(prepared.pairs, prepared.lengths)
        scoring = asyncio.wrap_future(job.future)
        watch = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            done, _ = await asyncio.wait([scoring] + ([watch] if watch else []), timeout=self.args.request_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.cancel(job)
            raise
        finally:
            if watch is not None:
                watch.cancel()
        if scoring in done:
            return scoring.result()
        self.cancel(job)
        if watch is not None and watch in done:
            raise ClientDisconnected()
        raise RequestError(f"The request was not scored within {self.args.request_timeout:g}s (--request-timeout); "
                           "its work was cancelled.", 503, retry_after=self.retry_after())

    # worker side

    def start(self) -> None:
        """Start the worker thread."""
        self.draining = False
        self._thread = threading.Thread(target=self._run, name="zerank-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker once the jobs queued before this call are scored or cancelled."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        carry = None
        while True:
            job = carry if carry is not None else self._queue.get()
            carry = None
            if job is _STOP:
                return
            jobs, tokens = [job], job.tokens
            while True:
                try:
                    pending = self._queue.get_nowait()
                except queue.Empty:
                    break
                if pending is not _STOP and pending.cancelled:
                    jobs.append(pending)  # costs nothing: only counted
                    continue
                if pending is _STOP or tokens + pending.tokens > self.args.max_round_tokens:
                    carry = pending
                    break
                jobs.append(pending)
                tokens += pending.tokens
            self._score(jobs)

    def _chunks(self, jobs: list[Job]) -> Iterable[list[tuple[Job, int]]]:
        """The round's (job, pair index) in order, in chunks of about one forward batch; a job cancelled meanwhile
        loses its remaining pairs."""
        items = [(job, i) for job in jobs for i in range(len(job.pairs))]
        position = 0
        while position < len(items):
            chunk, tokens = [], 0
            while position < len(items):
                job, i = items[position]
                if job.cancelled:
                    position += 1
                    continue
                if chunk and tokens + job.lengths[i] > self.chunk_tokens:
                    break
                chunk.append((job, i))
                tokens += job.lengths[i]
                position += 1
            if chunk:
                yield chunk

    def _score(self, jobs: list[Job]) -> None:
        live = [job for job in jobs if not job.cancelled and job.future.set_running_or_notify_cancel()]
        logits = {id(job): np.zeros(len(job.lengths), dtype=np.float32) for job in live}
        done = {id(job): 0 for job in live}  # pairs scored per job
        start = time.perf_counter()
        try:
            for chunk in self._chunks(live):
                chunk_start = time.perf_counter()
                values = score_pairs(self.model, [job.pairs[i] for job, i in chunk], output="logit",
                                     max_batch_tokens=self.max_batch_tokens)
                speed = len(chunk) / max(time.perf_counter() - chunk_start, 1e-6)
                self._pairs_per_second = speed if self._pairs_per_second is None \
                    else 0.8 * self._pairs_per_second + 0.2 * speed
                for (job, i), value in zip(chunk, values):
                    logits[id(job)][i] = value
                    done[id(job)] += 1
        except Exception as exc:  # answered as a 500 to every request of the round, the worker goes on
            logger.exception("Scoring the pairs of %d request(s) failed", len(jobs))
            with self._lock:
                failed = [job for job in live if not job.settled]
                for job in failed:
                    self._settle(job)
            for job in failed:
                job.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - start
        with self._lock:
            finished = [job for job in live if not job.settled]
            for job in finished:
                self._settle(job)
            if live:
                self.scoring_rounds += 1
            self.requests_scored += len(finished)
            self.pairs_scored += sum(done.values())
            self.pairs_cancelled += sum(len(job.lengths) - done[id(job)] for job in live if job.cancelled)
            self.scoring_seconds += elapsed
        for job in finished:
            job.future.set_result((logits[id(job)], elapsed))


class ClientDisconnected(Exception):
    """The client closed its connection before its response was ready."""


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client of ``request`` (whose body was read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def scores_from_logits(logits: np.ndarray) -> np.ndarray:
    """The 0..1 scores of calibrated logits (temperature and bias are already applied)."""
    return calibrated_score(logits, 1.0, 0.0).astype(np.float32)


def ranked(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Indices by descending score, ties in request order, at most ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return order if top_n is None else order[:top_n]


# --- strict JSON, timeouts, metrics and request logs: one ASGI middleware ---


class _Constant:
    def __init__(self, literal: str):
        self.literal = literal


def invalid_json_field(body: bytes) -> str | None:
    """Where a JSON body holds a NaN/Infinity literal or a lone surrogate, as ``field: reason``; None if nowhere
    (also for malformed JSON, which FastAPI answers itself)."""
    try:
        value = json.loads(body, parse_constant=_Constant)
    except ValueError:
        return None
    stack: list[tuple[str, Any]] = [("body", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _Constant):
            return f"{path}: {item.literal} is not valid JSON (JSON has no NaN or Infinity)"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{path}: the string holds a lone surrogate (\\ud800-\\udfff), which is not valid Unicode"
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((f"{path}.{key}", key))
                stack.append((f"{path}.{key}", child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


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
        except asyncio.CancelledError:  # the drain time after SIGTERM is over: say so, then stop
            if not status[0]:
                await JSONResponse({"detail": "The server shut down before this request was scored; retry on "
                                              "another replica or later."}, status_code=503,
                                   headers={"Retry-After": "1", "Connection": "close"})(scope, receive, send_recording)
            raise
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
        """(an error response or None, the receive the app gets): POST bodies are read here, within the size and
        time limits, checked for invalid JSON values, and replayed to the app."""
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
    (uvicorn bounds idle keep-alive connections but not slowly sent headers)."""

    header_timeout: float = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def data_received(self, data: bytes) -> None:
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


# --- application ---


def served_names(args: ServeArguments, model_args: ModelArguments) -> list[str]:
    """The names ``model`` may take: the served model's own (first; a local folder's name, so its path stays
    private, or the hub id) and the ZeroEntropy aliases."""
    path = Path(model_args.model)
    names = list(args.served_model_name) or [path.resolve().name if path.exists() else model_args.model]
    if args.zeroentropy_aliases:
        names += [name for name in ZEROENTROPY_MODELS if name not in names]
    return names


def create_app(args: ServeArguments, model_args: ModelArguments, model: CrossEncoder | None = None) -> FastAPI:
    """The FastAPI application. ``model`` (a loaded ``CrossEncoder``) is loaded from ``model_args`` if not given.

    The scoring worker starts and stops with the application's lifespan. ``app.state.rerank(query, documents,
    request=None)`` is the scoring core for other routes (see ``rerank_scores``).
    """
    if model is None:
        model = load_from_arguments(model_args)
    engine = RerankEngine(model, args, max_batch_tokens=model_args.max_batch_tokens)
    served = served_names(args, model_args)
    created = int(time.time())
    metrics = ServerMetrics(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        logger.info("Serving %s as %s (auth: %s)", model_args.model, ", ".join(served),
                    "bearer" if args.api_key else "none")
        try:
            yield
        finally:
            engine.draining = True
            engine.stop(timeout=args.drain_timeout)

    app = FastAPI(
        title="zerank rerank API",
        version="2.0",
        summary="ZeroEntropy-, Cohere/Jina- and TEI-compatible reranking with a self-hosted zerank model.",
        lifespan=lifespan,
    )
    app.add_middleware(ServingMiddleware, args=args, metrics=metrics)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.served_models = served
    bearer = HTTPBearer(auto_error=False, description="The server's API key, as `Authorization: Bearer <key>`.")

    def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if args.api_key is None:
            return
        if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), args.api_key.encode()
        ):
            raise HTTPException(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                                headers={"WWW-Authenticate": "Bearer"})

    app.state.require_api_key = require_api_key

    def resolve_model(name: str | None) -> str:
        """The canonical served name of ``name`` (None: the served model); 404 naming the served ones."""
        if name is None or name in served:
            return served[0]
        raise HTTPException(404, f"Model {name!r} is not served here; use one of {served}.")

    app.state.resolve_model = resolve_model

    async def rerank_scores(query: str, documents: list[str], request: Request | None = None, *,
                            max_document_tokens: int | None = None, truncate: bool | None = None,
                            direction: Literal["left", "right"] = "right") -> tuple[np.ndarray, Prepared, float]:
        """(calibrated logits, the prepared request, inference seconds): the one scoring path of every shape.
        Raises ``HTTPException`` for limits, a full queue, a timeout; ``ClientDisconnected`` when ``request``'s
        client goes away (its work is then cancelled)."""
        if len(documents) > args.max_documents:
            raise HTTPException(400, f"The request has {len(documents)} documents; this server accepts at most "
                                     f"{args.max_documents} (--max-documents).")
        log = request.scope["state"]["log"] if request is not None else {}
        log["documents"] = len(documents)
        try:
            prepared = await run_in_threadpool(engine.prepare, query, documents,
                                               max_document_tokens=max_document_tokens, truncate=truncate,
                                               direction=direction)
            log["pairs"], log["tokens"] = len(prepared.pairs), prepared.total_tokens
            logits, inference = await engine.score(
                prepared, (lambda: wait_for_disconnect(request)) if request is not None else None)
        except RequestError as exc:
            raise exc.http() from None
        return logits, prepared, inference

    async def rerank(query: str, documents: list[str], request: Request | None = None) -> list[float]:
        """Calibrated 0..1 scores of ``documents`` for ``query``, in request order (for other routes, e.g. the
        search API). Pass the route's ``request`` to cancel the work when its client disconnects."""
        logits, _, _ = await rerank_scores(query, documents, request)
        return [float(s) for s in scores_from_logits(logits)]

    app.state.rerank = rerank

    @app.exception_handler(ClientDisconnected)
    async def client_disconnected(request: Request, exc: ClientDisconnected):
        request.scope["state"]["log"]["cancelled"] = "client disconnected"
        return PlainTextResponse("", status_code=499)  # never read: the client is gone

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logger.exception("Unhandled error")
        return JSONResponse({"detail": f"Internal server error: {type(exc).__name__}."}, status_code=500)

    error_responses = {
        400: {"description": "A limit was exceeded (documents, query or document tokens), or invalid JSON values."},
        401: {"description": "Missing or invalid API key."},
        404: {"description": "The model is not served here."},
        408: {"description": "The body was not received within --body-timeout."},
        411: {"description": "No Content-Length header."},
        413: {"description": "Request body too large."},
        429: {"description": "The queue is full; retry after `Retry-After` seconds."},
        503: {"description": "Shutting down, or not scored within --request-timeout; see `Retry-After`."},
    }
    authorized = [Depends(require_api_key)]

    @app.post(RERANK_PATH, response_model=RerankResponse, responses=error_responses, dependencies=authorized,
              summary="Rerank documents (ZeroEntropy's API)", tags=["rerank"])
    async def zeroentropy_rerank(body: ZeroEntropyRerankRequest, request: Request) -> RerankResponse:
        received = time.perf_counter()
        resolve_model(body.model)
        logits, prepared, inference = await rerank_scores(body.query, body.documents, request)
        scores = scores_from_logits(logits)
        return RerankResponse(
            results=[RerankResult(index=i, relevance_score=float(scores[i])) for i in ranked(scores, body.top_n)],
            actual_latency_mode=body.latency or "fast",
            e2e_latency=time.perf_counter() - received,
            inference_latency=inference,
            total_bytes=prepared.total_bytes,
            total_tokens=prepared.total_tokens,
        )

    async def cohere_rerank(body: CohereRerankRequest, request: Request, version: str,
                            return_documents: bool) -> CohereRerankResponse:
        name = resolve_model(body.model)
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        logits, prepared, _ = await rerank_scores(body.query, texts, request,
                                                  max_document_tokens=body.max_tokens_per_doc, truncate=True)
        scores = scores_from_logits(logits)
        echo = return_documents if body.return_documents is None else body.return_documents
        return CohereRerankResponse(
            id=str(uuid.uuid4()),
            model=name,
            results=[CohereResult(index=i, relevance_score=float(scores[i]),
                                  document=CohereDocument(text=texts[i]) if echo else None)
                     for i in ranked(scores, body.top_n)],
            meta={"api_version": {"version": version}, "billed_units": {"search_units": 1}},
            usage=Usage(total_tokens=prepared.total_tokens, prompt_tokens=prepared.total_tokens),
        )

    @app.post("/v1/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True,
              responses=error_responses, dependencies=authorized, tags=["rerank"],
              summary="Rerank documents (Cohere v1 / Jina / vLLM shape)")
    async def rerank_v1(body: CohereRerankRequest, request: Request) -> CohereRerankResponse:
        return await cohere_rerank(body, request, "1", return_documents=True)

    @app.post("/v2/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True,
              responses=error_responses, dependencies=authorized, tags=["rerank"],
              summary="Rerank documents (Cohere v2 shape)")
    async def rerank_v2(body: CohereRerankRequest, request: Request) -> CohereRerankResponse:
        return await cohere_rerank(body, request, "2", return_documents=False)

    @app.post("/rerank", response_model=list[TEIRank], response_model_exclude_none=True, responses=error_responses,
              dependencies=authorized, tags=["rerank"], summary="Rerank texts (text-embeddings-inference shape)")
    async def rerank_tei(body: TEIRerankRequest, request: Request) -> list[TEIRank]:
        direction = "left" if body.truncation_direction.lower() == "left" else "right"
        logits, _, _ = await rerank_scores(body.query, body.texts, request, truncate=bool(body.truncate),
                                           direction=direction)
        scores = scores_from_logits(logits)
        values = logits if body.raw_scores else scores
        return [TEIRank(index=i, score=float(values[i]), text=body.texts[i] if body.return_text else None)
                for i in ranked(scores, None)]

    @app.get("/v1/models", response_model=ModelList, dependencies=authorized, tags=["models"],
             summary="The served model's names")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=created, root=served[0]) for name in served])

    # ZeroEntropy search API (collections, documents, queries): zerank.serving.search.api
    from zerank.serving.search.api import make_search_router
    from zerank.serving.search.store import SQLiteStore

    app.include_router(make_search_router(SQLiteStore(args.store), rerank, resolve_model), dependencies=authorized)

    @app.get("/health", response_model=Health, tags=["operations"], summary="Liveness, model and queue counters")
    async def health() -> Health:
        return Health(
            status="draining" if engine.draining else "ok",
            model=served[0],
            served_model_names=served,
            device=str(engine.model.device),
            dtype=str(next(engine.model.model.parameters()).dtype).removeprefix("torch."),
            max_seq_length=engine.max_seq_length,
            requests_scored=engine.requests_scored,
            scoring_rounds=engine.scoring_rounds,
            pairs_scored=engine.pairs_scored,
            requests_cancelled=engine.requests_cancelled,
            pairs_cancelled=engine.pairs_cancelled,
            requests_rejected=engine.requests_rejected,
            queued=engine.queued_jobs,
            queued_pairs=engine.queued_pairs,
        )

    @app.get("/metrics", dependencies=authorized, tags=["operations"], summary="Prometheus metrics",
             response_class=PlainTextResponse)
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


class DrainingServer(uvicorn.Server):
    """uvicorn's server that, on SIGTERM/SIGINT, also makes the engine refuse new work (503 with Retry-After)
    while in-flight requests drain for ``timeout_graceful_shutdown`` seconds."""

    def __init__(self, config: uvicorn.Config, engine: RerankEngine):
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame) -> None:
        if not self.engine.draining:
            logger.info("Received %s: draining in-flight requests for up to %gs",
                        signal.Signals(sig).name if sig else "exit", self.config.timeout_graceful_shutdown)
        self.engine.draining = True
        super().handle_exit(sig, frame)


def make_server(app: FastAPI, args: ServeArguments, **config: Any) -> DrainingServer:
    """The uvicorn server of ``app`` with the serving limits of ``args`` (``config``: more ``uvicorn.Config``)."""
    protocol = type("HeaderTimeoutProtocol", (HeaderTimeoutH11Protocol,), {"header_timeout": args.header_timeout})
    settings = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": False,
                "http": protocol, "timeout_graceful_shutdown": math.ceil(args.drain_timeout)} | config
    return DrainingServer(uvicorn.Config(app, **settings), app.state.engine)


def main(args: ServeArguments, model_args: ModelArguments) -> None:
    """``zerank serve``: load the model and serve it with uvicorn until SIGTERM or Ctrl-C (then drain)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level.upper())
    app = create_app(args, model_args)
    make_server(app, args).run()
