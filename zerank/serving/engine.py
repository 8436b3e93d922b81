"""The scoring core of ``zerank serve``: request checks and document cutting, the bounded queue, the one worker thread
that merges and scores requests in chunks of one forward batch, and cancellation (client gone, timeout, shutdown)."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from fastapi import HTTPException, Request
from sentence_transformers import CrossEncoder

from zerank.model.long_documents import ChunkSettings, DocumentWindows, PromptFormat, aggregate, plan_windows
from zerank.model.scoring import batch_token_budget, calibrated_score, score_pairs
from zerank.serving.arguments import ServeArguments
from zerank.serving.tokens import TokenCounter

logger = logging.getLogger(__name__)


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
    # --long-documents chunk: each document's windows (``pairs`` are the windows), and once scored its best window's
    # (start, end, windows) (see RerankEngine.prepare_windows).
    windows: list[DocumentWindows] | None = None
    spans: list[tuple[int, int, int]] | None = None

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
WINDOW_PLANNERS = 2  # tokenizer copies for planning the windows of requests (--long-documents chunk)


class RerankEngine:
    """One ``CrossEncoder`` and one worker thread that scores every request.

    The worker takes the oldest pending job, adds the jobs queued behind it while their tokens fit in
    ``args.max_round_tokens``, and scores their pairs in chunks of one forward batch (``max_batch_tokens``, default:
    the model's budget for its device kind) with ``score_pairs``; before each chunk it drops the pairs of cancelled
    jobs. Each job's future then gets its own scores, in its own order. The pairs of unfinished jobs are bounded by
    ``args.max_queued_pairs``.
    """

    def __init__(self, model: CrossEncoder, args: ServeArguments, max_batch_tokens: int | None = None,
                 chunking: ChunkSettings | None = None):
        self.model = model
        self.args = args
        # --long-documents chunk: how documents are windowed (prepare_windows), with a tokenizer of its own.
        self.chunking = (chunking or ChunkSettings()) if args.long_documents == "chunk" else None
        if self.chunking is not None and self.chunking.max_tokens > model.max_seq_length:
            raise ValueError(f"--chunk-tokens {self.chunking.max_tokens} is larger than the model's context "
                             f"({model.max_seq_length} tokens).")
        # Request threads plan windows with a few tokenizer copies of their own (a fast tokenizer must not be used
        # by two threads at once), so one request's large documents do not hold up the others' planning.
        self._window_formats: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(WINDOW_PLANNERS if self.chunking is not None else 0):
            self._window_formats.put(PromptFormat.of(model, tokenizer=copy.deepcopy(model.tokenizer)))
        self.max_batch_tokens = max_batch_tokens
        self.chunk_tokens = max_batch_tokens or batch_token_budget(model)
        self.max_seq_length = int(model.max_seq_length)
        module = model[0]
        self.max_query_tokens = int(getattr(module, "max_query_tokens", self.max_seq_length // 2))
        # Request preparation runs in request threads: they count with their own tokenizer copies (never the
        # worker's), exactly as the model tokenizes content (special-token strings split or not, as its config says).
        self.counter = TokenCounter(model.tokenizer, bool(getattr(module, "split_special_tokens_in_content", True)))
        self.template_tokens = self.counter.empty_pair
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
        if self.chunking is not None:
            return self.prepare_windows(query, documents, max_document_tokens=max_document_tokens,
                                        truncate=truncate, direction=direction)
        truncate = self.args.long_documents == "truncate" if truncate is None else truncate
        self._check_query(query)
        query_tokens = self.counter.query_tokens(query)  # with the template
        caps = [self.max_seq_length - query_tokens, self.args.max_document_tokens, max_document_tokens]
        cap = max(1, min(c for c in caps if c is not None))
        documents = list(documents)
        document_tokens = self._cut_documents(documents, cap, truncate, direction)
        lengths = [min(query_tokens + n, self.max_seq_length) for n in document_tokens]
        return Prepared(
            pairs=[(query, document) for document in documents],
            lengths=lengths,
            total_bytes=len(query.encode()) + sum(len(document.encode()) for document in documents),
        )

    def _check_query(self, query: str) -> None:
        """400 for a query over ``max_query_tokens`` (counted as the model counts it, on a bounded prefix)."""
        head, whole = self.counter.head(query, self.max_query_tokens)
        tokens = self.counter.tokens(head)
        if not whole or tokens > self.max_query_tokens:
            raise RequestError(f"The query has {tokens if whole else 'more than ' + str(self.max_query_tokens)} "
                               f"tokens; this model accepts at most {self.max_query_tokens} (max_query_tokens).")

    def _cut_documents(self, documents: list[str], cap: int, truncate: bool, direction: str) -> list[int]:
        """Each document's tokens in its prompt, cutting (in place) or refusing those over ``cap``; no document is
        tokenized much past ``cap`` tokens."""
        heads = [self.counter.head(document, cap, direction) for document in documents]
        counts = self.counter.document_tokens([head for head, _ in heads])
        for i, ((head, whole), n) in enumerate(zip(heads, counts)):
            if whole and n <= cap:
                continue
            if not truncate:
                raise RequestError(f"Document {i} has {n if whole else 'more than ' + str(cap)} tokens; this server "
                                   f"accepts at most {cap} for this query (the model's context, "
                                   "--max-document-tokens, max_tokens_per_doc).")
            documents[i], counts[i] = self.counter.cut(head, cap, direction)
        return counts

    def prepare_windows(self, query: str, documents: list[str], *, max_document_tokens: int | None = None,
                        truncate: bool | None = None, direction: Literal["left", "right"] = "right") -> Prepared:
        """``prepare`` under ``--long-documents chunk``: each document becomes its windows
        (:func:`zerank.model.long_documents.plan_windows`; a document that fits is one window, itself), and the
        windows are the pairs scored, so they count against ``--max-queued-pairs`` and ``--max-round-tokens``.

        The model's context no longer cuts a document; the explicit caps (``args.max_document_tokens``,
        ``max_document_tokens``) still do (or refuse it with 400 when ``truncate`` is False). A request of more
        windows than ``args.max_queued_pairs`` is refused with 400."""
        self._check_query(query)
        documents = list(documents)
        caps = [cap for cap in (self.args.max_document_tokens, max_document_tokens) if cap is not None]
        if caps and documents:
            self._cut_documents(documents, min(caps), truncate is not False, direction)
        fmt = self._window_formats.get()
        try:
            plans = plan_windows(fmt, query, documents, self.chunking)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        finally:
            self._window_formats.put(fmt)
        pairs = [(query, document[s:e]) for document, plan in zip(documents, plans) for s, e in plan.spans]
        if len(pairs) > self.args.max_queued_pairs:
            raise RequestError(f"The request's documents make {len(pairs)} windows; this server queues at most "
                               f"{self.args.max_queued_pairs} pairs (--max-queued-pairs): send fewer or shorter "
                               "documents.")
        return Prepared(pairs=pairs, lengths=[n for plan in plans for n in plan.lengths],
                        total_bytes=len(query.encode()) + sum(len(document.encode()) for document in documents),
                        windows=plans)

    def document_logits(self, prepared: Prepared, logits: np.ndarray) -> np.ndarray:
        """Each document's calibrated logit from its windows' (``prepared.windows``; as is without), and its best
        window in ``prepared.spans``."""
        if prepared.windows is None:
            return logits
        values, spans, position = [], [], 0
        for plan in prepared.windows:
            value, best = aggregate(logits[position: position + len(plan.spans)], self.chunking)
            position += len(plan.spans)
            values.append(value)
            spans.append((*plan.spans[best], len(plan.spans)))
        prepared.spans = spans
        return np.asarray(values, dtype=np.float32)

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
                                   retry_after=max(1, math.ceil(self.args.drain_timeout)))  # it is gone by then
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
            logits, seconds = scoring.result()
            return self.document_logits(prepared, logits), seconds
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
