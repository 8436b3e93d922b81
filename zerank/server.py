"""Serve a zerank model over HTTP with ZeroEntropy's rerank API (FastAPI + uvicorn).

``POST /v1/models/rerank`` takes and returns the same JSON as ZeroEntropy's hosted endpoint, so the official SDK
works against it unchanged (``ZeroEntropy(api_key=KEY, base_url="http://127.0.0.1:8000/v1")``)::

    request:  {"model": "zerank-1", "query": "...", "documents": ["...", ...], "top_n": 3, "latency": "fast"}
    response: {"results": [{"index": 2, "relevance_score": 0.93}, ...],       # most relevant first
               "actual_latency_mode": "fast", "e2e_latency": 0.012, "inference_latency": 0.009,
               "total_bytes": 1234, "total_tokens": 456}

``relevance_score`` is zerank's calibrated 0..1 score, the same number as ``CrossEncoder.predict`` gives for the pair.
``GET /health`` reports the model and queue counters (no key needed); the OpenAPI schema is at ``/openapi.json``
and interactive docs at ``/docs``.

One model instance is served by one worker thread: requests that arrive while it is busy are merged (up to
``--max-round-tokens`` tokens) and scored together by ``zerank.scoring.score_pairs``, whose forward batches stay
under ``--max-batch-tokens`` (default: the model config's budget for the device kind), off the event loop. A
request's scores do not depend on what it was batched with (to float rounding: <= 1e-5 in fp32).

Limits (all answered with a JSON ``{"detail": "..."}`` error):
    401  missing or wrong bearer token (when a key is set)
    404  ``model`` is not one of ``--served-model-name`` (when given; by default any name is accepted)
    400  more than ``--max-documents`` documents, a query longer than the model's ``max_query_tokens``, or (with
         ``--long-documents error``) a document longer than ``--max-document-tokens``
    411  POST without a Content-Length header
    413  request body larger than ``--max-request-bytes``
    422  malformed request (missing field, wrong type, top_n < 1)
Documents longer than ``--max-document-tokens`` are cut to their first tokens by default; pairs longer than the
model's context are truncated by the model itself (the document's end is cut, never the query or the template suffix).

Command:
    zerank serve --model build/tiny --host 127.0.0.1 --port 8000
    ZERANK_API_KEY=secret zerank serve --model zeroentropy/zerank-1 --host 0.0.0.0 --port 8000

Binding a non-loopback address needs an API key (``--api-key`` or $ZERANK_API_KEY); the server refuses to start
without one.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import queue
import secrets
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sentence_transformers import CrossEncoder
from starlette.concurrency import run_in_threadpool

from zerank.arguments import ModelArguments, ServeArguments
from zerank.loading import load_from_arguments
from zerank.scoring import score_pairs, template_overhead_tokens

logger = logging.getLogger(__name__)

RERANK_PATH = "/v1/models/rerank"


# --- API schema: the field names and meanings of the zeroentropy SDK's ModelRerankParams / ModelRerankResponse ---


class RerankRequest(BaseModel):
    model: str = Field(description="Model id. Any id is accepted unless the server was started with "
                                   "--served-model-name.", examples=["zerank-1"])
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


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    served_model_names: list[str]
    device: str
    dtype: str
    max_seq_length: int
    requests_scored: int
    scoring_rounds: int
    pairs_scored: int
    queued: int


# --- scoring engine ---


class RequestError(ValueError):
    """A request that breaks a limit: answered with ``status`` and this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """Pairs waiting to be scored; the future resolves to (float32 scores, inference seconds)."""

    pairs: list[tuple[str, str]]
    tokens: int
    future: Future = field(default_factory=Future)


@dataclass
class Prepared:
    """A checked request: its pairs (long documents cut) and the counts the response reports."""

    pairs: list[tuple[str, str]]
    total_tokens: int
    total_bytes: int


_STOP = object()


class RerankEngine:
    """One ``CrossEncoder`` and one worker thread that scores every request.

    The worker takes the oldest pending job, adds the jobs queued behind it while their tokens fit in
    ``args.max_round_tokens``, and scores all their pairs with ``score_pairs`` (forward batches under
    ``max_batch_tokens``, default: the model's budget for its device kind); each job's future then gets its own slice
    of the scores, in its own order.
    """

    def __init__(self, model: CrossEncoder, args: ServeArguments, max_batch_tokens: int | None = None):
        self.model = model
        self.args = args
        self.max_batch_tokens = max_batch_tokens
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
        self.requests_scored = 0
        self.scoring_rounds = 0
        self.pairs_scored = 0

    # request side

    def prepare(self, query: str, documents: list[str]) -> Prepared:
        """Check the query, cut long documents, and count tokens (raises ``RequestError``)."""
        cap = self.args.max_document_tokens
        with self._tokenizer_lock:
            query_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
            if query_tokens > self.max_query_tokens:
                raise RequestError(f"The query has {query_tokens} tokens; this model accepts at most "
                                   f"{self.max_query_tokens} (max_query_tokens).")
            if not documents:
                return Prepared(pairs=[], total_tokens=0, total_bytes=len(query.encode()))
            encoded = self.tokenizer(documents, add_special_tokens=False, return_offsets_mapping=cap is not None)
            documents = list(documents)
            document_tokens = [len(ids) for ids in encoded["input_ids"]]
            for i, n in enumerate(document_tokens):
                if cap is None or n <= cap:
                    continue
                if self.args.long_documents == "error":
                    raise RequestError(f"Document {i} has {n} tokens; this server accepts at most {cap} "
                                       "(--max-document-tokens).")
                # Keep the text of the first `cap` tokens (offsets are character spans of the original text).
                documents[i] = documents[i][: encoded["offset_mapping"][i][cap - 1][1]]
                document_tokens[i] = len(self.tokenizer(documents[i], add_special_tokens=False)["input_ids"])
        lengths = [min(query_tokens + n + self.template_tokens, self.max_seq_length) for n in document_tokens]
        query_bytes = len(query.encode())
        return Prepared(
            pairs=[(query, document) for document in documents],
            total_tokens=sum(lengths),
            total_bytes=query_bytes + sum(len(document.encode()) for document in documents),
        )

    def submit(self, pairs: list[tuple[str, str]], tokens: int) -> Future:
        """Queue pairs for scoring; the future resolves to (float32 scores, inference seconds).

        Jobs queued before ``start`` wait for it (and are merged in its first rounds).
        """
        job = Job(pairs, tokens)
        self._queue.put(job)
        return job.future

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker."""
        return self._queue.qsize()

    # worker side

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="zerank-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker once the jobs queued before this call are scored."""
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
                if pending is _STOP or tokens + pending.tokens > self.args.max_round_tokens:
                    carry = pending
                    break
                jobs.append(pending)
                tokens += pending.tokens
            self._score(jobs)

    def _score(self, jobs: list[Job]) -> None:
        # A job whose client went away was cancelled: skip it. The others can no longer be cancelled.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        pairs = [pair for job in jobs for pair in job.pairs]
        start = time.perf_counter()
        try:
            scores = score_pairs(self.model, pairs, max_batch_tokens=self.max_batch_tokens)
        except Exception as exc:  # answered as a 500 to every request of the round, the worker goes on
            logger.exception("Scoring %d pairs of %d request(s) failed", len(pairs), len(jobs))
            for job in jobs:
                job.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - start
        self.scoring_rounds += 1
        self.requests_scored += len(jobs)
        self.pairs_scored += len(pairs)
        logger.debug("Scored %d pairs of %d request(s) in %.3fs", len(pairs), len(jobs), elapsed)
        offset = 0
        for job in jobs:
            job.future.set_result((scores[offset : offset + len(job.pairs)], elapsed))
            offset += len(job.pairs)


# --- application ---


def create_app(args: ServeArguments, model_args: ModelArguments, model: CrossEncoder | None = None) -> FastAPI:
    """The FastAPI application. ``model`` (a loaded ``CrossEncoder``) is loaded from ``model_args`` if not given.

    The scoring worker starts and stops with the application's lifespan.
    """
    if model is None:
        model = load_from_arguments(model_args)
    engine = RerankEngine(model, args, max_batch_tokens=model_args.max_batch_tokens)
    served = list(args.served_model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        logger.info("Serving %s at %s (auth: %s)", model_args.model, RERANK_PATH, "bearer" if args.api_key else "none")
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(
        title="zerank rerank API",
        version="1.0",
        summary="ZeroEntropy-compatible reranking with a self-hosted zerank model.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    bearer = HTTPBearer(auto_error=False, description="The server's API key, as `Authorization: Bearer <key>`.")

    def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if args.api_key is None:
            return
        if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), args.api_key.encode()
        ):
            raise HTTPException(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def limit_request_bytes(request: Request, call_next):
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "A Content-Length header is required."}, status_code=411)
            if not length.isdigit():
                return JSONResponse({"detail": f"Invalid Content-Length header {length!r}."}, status_code=400)
            if int(length) > args.max_request_bytes:
                return JSONResponse(
                    {"detail": f"The request body has {int(length)} bytes; this server accepts at most "
                               f"{args.max_request_bytes} (--max-request-bytes)."},
                    status_code=413,
                )
        return await call_next(request)

    error_responses = {
        400: {"description": "A limit was exceeded (documents per request, query or document tokens)."},
        401: {"description": "Missing or invalid API key."},
        404: {"description": "The model is not served here."},
        411: {"description": "No Content-Length header."},
        413: {"description": "Request body too large."},
    }

    @app.post(RERANK_PATH, response_model=RerankResponse, responses=error_responses,
              dependencies=[Depends(require_api_key)], summary="Rerank documents by relevance to a query")
    async def rerank(body: RerankRequest) -> RerankResponse:
        received = time.perf_counter()
        if served and body.model not in served:
            raise HTTPException(404, f"Model {body.model!r} is not served here; use one of {served}.")
        if len(body.documents) > args.max_documents:
            raise HTTPException(400, f"The request has {len(body.documents)} documents; this server accepts at "
                                     f"most {args.max_documents} (--max-documents).")
        try:
            prepared = await run_in_threadpool(engine.prepare, body.query, body.documents)
        except RequestError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        scores, inference = [], 0.0
        if prepared.pairs:
            scores, inference = await asyncio.wrap_future(engine.submit(prepared.pairs, prepared.total_tokens))
        order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep request order
        if body.top_n is not None:
            order = order[: body.top_n]
        return RerankResponse(
            results=[RerankResult(index=i, relevance_score=float(scores[i])) for i in order],
            actual_latency_mode=body.latency or "fast",
            e2e_latency=time.perf_counter() - received,
            inference_latency=inference,
            total_bytes=prepared.total_bytes,
            total_tokens=prepared.total_tokens,
        )

    @app.get("/health", response_model=Health, summary="Liveness, model and queue counters")
    async def health() -> Health:
        return Health(
            status="ok",
            model=model_args.model,
            served_model_names=served,
            device=str(engine.model.device),
            dtype=str(next(engine.model.model.parameters()).dtype).removeprefix("torch."),
            max_seq_length=engine.max_seq_length,
            requests_scored=engine.requests_scored,
            scoring_rounds=engine.scoring_rounds,
            pairs_scored=engine.pairs_scored,
            queued=engine.queued,
        )

    return app


def main(args: ServeArguments, model_args: ModelArguments) -> None:
    """``zerank serve``: load the model and serve it with uvicorn until interrupted."""
    logging.getLogger().setLevel(args.log_level.upper())
    app = create_app(args, model_args)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
