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
      with ``--long-documents chunk`` a long document is scored as its best window instead (its windows count
      against the queue limits) and each result gets the window's ``span`` (``zerank.model.long_documents``);
    * ``NaN``/``Infinity`` literals and lone surrogates (``"\\ud800"``) get a JSON 400 naming the field.

Errors are JSON ``{"detail": ...}``: 400 (a limit or bad JSON), 401 (key), 404 (model), 408 (slow body), 411 (no
Content-Length), 413 (body too large), 422 (malformed request), 429/503 (overloaded, draining; ``Retry-After``).

Operations: ``GET /health`` (no key; status and queue counters, never the model's path), ``GET /metrics``
(Prometheus text; key needed when one is set), one JSON log line per request on the ``zerank.access`` logger
(method, route, status, seconds, documents, pairs, tokens; never the key, the query or document text). The OpenAPI
schema is at ``/openapi.json``, interactive docs at ``/docs``.

Command:
    zerank serve --model build/tiny --host 127.0.0.1 --port 8000
    ZERANK_API_KEY=secret zerank serve --model zeroentropy/zerank-1-reranker --host 0.0.0.0 --port 8000

Binding a non-loopback address needs an API key (``--api-key`` or $ZERANK_API_KEY); the server refuses to start
without one.
"""

from __future__ import annotations

import logging
import math
import secrets
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from sentence_transformers import CrossEncoder
from starlette.concurrency import run_in_threadpool

from zerank.model.long_documents import ChunkSettings
from zerank.model.loading import load_from_arguments
from zerank.serving.arguments import ServeArguments
from zerank.serving.engine import (
    ClientDisconnected,
    Prepared,
    RequestError,
    RerankEngine,
    ranked,
    scores_from_logits,
    wait_for_disconnect,
)
from zerank.serving.middleware import HeaderTimeoutH11Protocol, ServerMetrics, ServingMiddleware
from zerank.serving.schemas import (
    RERANK_PATH,
    CohereDocument,
    CohereRerankRequest,
    CohereRerankResponse,
    CohereResult,
    Health,
    ModelCard,
    ModelList,
    RerankResponse,
    RerankResult,
    Span,
    TEIRank,
    TEIRerankRequest,
    Usage,
    ZeroEntropyRerankRequest,
)
from zerank.serving.search.api import make_search_router
from zerank.serving.search.sqlite_store import SQLiteStore
from zerank.serving.search.store import StoreError
from zerank.utils.arguments import ModelArguments
from zerank.utils.long_document_arguments import ChunkArguments

logger = logging.getLogger(__name__)

ZEROENTROPY_MODELS = ("zerank-1", "zerank-1-small", "zerank-2")
"""Model names ZeroEntropy's SDKs and integrations send (langchain-zerank: zerank-1-small): served as aliases."""

ERROR_RESPONSES = {
    400: {"description": "A limit was exceeded (documents, query or document tokens), or invalid JSON values."},
    401: {"description": "Missing or invalid API key."},
    404: {"description": "The model is not served here."},
    408: {"description": "The body was not received within --body-timeout."},
    411: {"description": "No Content-Length header."},
    413: {"description": "Request body too large."},
    429: {"description": "The queue is full; retry after `Retry-After` seconds."},
    503: {"description": "Shutting down, or not scored within --request-timeout; see `Retry-After`."},
}
"""The error statuses of the rerank routes, for the OpenAPI schema."""

RerankScores = Callable[..., Awaitable[tuple[np.ndarray, Prepared, float]]]


def served_names(args: ServeArguments, model_args: ModelArguments) -> list[str]:
    """The names ``model`` may take: the served model's own (first; a local folder's name, so its path stays
    private, or the hub id) and the ZeroEntropy aliases."""
    path = Path(model_args.model)
    names = list(args.served_model_name) or [path.resolve().name if path.exists() else model_args.model]
    if args.zeroentropy_aliases:
        names += [name for name in ZEROENTROPY_MODELS if name not in names]
    return names


def make_api_key_check(api_key: str | None) -> Callable[..., None]:
    """The dependency that answers 401 unless the request carries ``Authorization: Bearer <api_key>`` (a no-op
    without a key)."""
    bearer = HTTPBearer(auto_error=False, description="The server's API key, as `Authorization: Bearer <key>`.")

    def require_api_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), api_key.encode()):
            raise HTTPException(401, "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_api_key


def make_model_resolver(served: list[str]) -> Callable[[str | None], str]:
    """``resolve_model(name)``: the canonical served name of ``name`` (None: the served model); 404 naming the
    served ones."""

    def resolve_model(name: str | None) -> str:
        if name is None or name in served:
            return served[0]
        raise HTTPException(404, f"Model {name!r} is not served here; use one of {served}.")

    return resolve_model


def make_rerank_scores(engine: RerankEngine, args: ServeArguments) -> RerankScores:
    """``rerank_scores(query, documents, request=None, *, max_document_tokens, truncate, direction)``: (calibrated
    logits, the prepared request, inference seconds), the one scoring path of every shape. It raises
    ``HTTPException`` for limits, a full queue, a timeout; ``ClientDisconnected`` when ``request``'s client goes away
    (its work is then cancelled)."""

    async def rerank_scores(query: str, documents: list[str], request: Request | None = None, *,
                            max_document_tokens: int | None = None, truncate: bool | None = None,
                            direction: Literal["left", "right"] = "right") -> tuple[np.ndarray, Prepared, float]:
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

    return rerank_scores


def span_of(prepared: Prepared, index: int) -> Span | None:
    """The best window of document ``index`` under --long-documents chunk (None otherwise)."""
    if prepared.spans is None:
        return None
    start, end, windows = prepared.spans[index]
    return Span(start=start, end=end, windows=windows)


class Scores(list):
    """Scores in request order; ``spans``: each document's best window (start, end, windows) under
    --long-documents chunk, else None."""

    spans: list[tuple[int, int, int]] | None = None


def make_rerank(rerank_scores: RerankScores) -> Callable[..., Awaitable[list[float]]]:
    """``rerank(query, documents, request=None)``: calibrated 0..1 scores of ``documents`` for ``query``, in request
    order (for other routes, e.g. the search API; a :class:`Scores` list, with the best windows under
    --long-documents chunk). Pass the route's ``request`` to cancel the work when its client disconnects."""

    async def rerank(query: str, documents: list[str], request: Request | None = None) -> list[float]:
        logits, prepared, _ = await rerank_scores(query, documents, request)
        scores = Scores(float(s) for s in scores_from_logits(logits))
        scores.spans = prepared.spans
        return scores

    return rerank


async def cohere_rerank(rerank_scores: RerankScores, resolve_model: Callable[[str | None], str],
                        body: CohereRerankRequest, request: Request, version: str,
                        return_documents: bool) -> CohereRerankResponse:
    """The Cohere ``version`` answer to ``body`` (``return_documents``: echo the texts unless the body says)."""
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
                              document=CohereDocument(text=texts[i]) if echo else None, span=span_of(prepared, i))
                 for i in ranked(scores, body.top_n)],
        meta={"api_version": {"version": version}, "billed_units": {"search_units": 1}},
        usage=Usage(total_tokens=prepared.total_tokens, prompt_tokens=prepared.total_tokens),
    )


def make_rerank_router(rerank_scores: RerankScores, resolve_model: Callable[[str | None], str],
                       served: list[str]) -> APIRouter:
    """The rerank routes of every shape (ZeroEntropy, Cohere v1/v2 / Jina / vLLM, TEI) and ``GET /v1/models``."""
    router = APIRouter()
    created = int(time.time())

    @router.post(RERANK_PATH, response_model=RerankResponse, response_model_exclude_none=True,
                 responses=ERROR_RESPONSES,
                 summary="Rerank documents (ZeroEntropy's API)", tags=["rerank"])
    async def zeroentropy_rerank(body: ZeroEntropyRerankRequest, request: Request) -> RerankResponse:
        received = time.perf_counter()
        resolve_model(body.model)
        logits, prepared, inference = await rerank_scores(body.query, body.documents, request)
        scores = scores_from_logits(logits)
        return RerankResponse(
            results=[RerankResult(index=i, relevance_score=float(scores[i]), span=span_of(prepared, i))
                     for i in ranked(scores, body.top_n)],
            actual_latency_mode=body.latency or "fast",
            e2e_latency=time.perf_counter() - received,
            inference_latency=inference,
            total_bytes=prepared.total_bytes,
            total_tokens=prepared.total_tokens,
        )

    @router.post("/v1/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True,
                 responses=ERROR_RESPONSES, tags=["rerank"], summary="Rerank documents (Cohere v1 / Jina / vLLM shape)")
    async def rerank_v1(body: CohereRerankRequest, request: Request) -> CohereRerankResponse:
        return await cohere_rerank(rerank_scores, resolve_model, body, request, "1", return_documents=True)

    @router.post("/v2/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True,
                 responses=ERROR_RESPONSES, tags=["rerank"], summary="Rerank documents (Cohere v2 shape)")
    async def rerank_v2(body: CohereRerankRequest, request: Request) -> CohereRerankResponse:
        return await cohere_rerank(rerank_scores, resolve_model, body, request, "2", return_documents=False)

    @router.post("/rerank", response_model=list[TEIRank], response_model_exclude_none=True,
                 responses=ERROR_RESPONSES, tags=["rerank"], summary="Rerank texts (text-embeddings-inference shape)")
    async def rerank_tei(body: TEIRerankRequest, request: Request) -> list[TEIRank]:
        direction = "left" if body.truncation_direction.lower() == "left" else "right"
        logits, prepared, _ = await rerank_scores(body.query, body.texts, request, truncate=bool(body.truncate),
                                                  direction=direction)
        scores = scores_from_logits(logits)
        values = logits if body.raw_scores else scores
        return [TEIRank(index=i, score=float(values[i]), text=body.texts[i] if body.return_text else None,
                        span=span_of(prepared, i))
                for i in ranked(scores, None)]

    @router.get("/v1/models", response_model=ModelList, tags=["models"], summary="The served model's names")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=created, root=served[0]) for name in served])

    return router


def make_health_router(engine: RerankEngine, served: list[str]) -> APIRouter:
    """``GET /health`` (no key: status and queue counters, never the model's path)."""
    router = APIRouter()

    @router.get("/health", response_model=Health, tags=["operations"], summary="Liveness, model and queue counters")
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

    return router


def make_metrics_router(metrics: ServerMetrics) -> APIRouter:
    """``GET /metrics``: the Prometheus text of ``metrics``."""
    router = APIRouter()

    @router.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


async def _client_disconnected(request: Request, exc: ClientDisconnected) -> PlainTextResponse:
    request.scope["state"]["log"]["cancelled"] = "client disconnected"
    return PlainTextResponse("", status_code=499)  # never read: the client is gone


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error")
    return JSONResponse({"detail": f"Internal server error: {type(exc).__name__}."}, status_code=500)


def create_app(args: ServeArguments, model_args: ModelArguments, model: CrossEncoder | None = None,
               chunk_args: ChunkArguments | None = None) -> FastAPI:
    """The FastAPI application. ``model`` (a loaded ``CrossEncoder``) is loaded from ``model_args`` if not given.

    The scoring worker starts and stops with the application's lifespan. ``app.state.engine`` is the
    ``RerankEngine`` (``make_server`` drains it on SIGTERM) and ``app.state.rerank(query, documents, request=None)``
    the scoring core for other routes (see ``make_rerank``).
    """
    if model is None:
        model = load_from_arguments(model_args)
    engine = RerankEngine(model, args, max_batch_tokens=model_args.max_batch_tokens,
                          chunking=ChunkSettings.from_arguments(chunk_args))
    served = served_names(args, model_args)
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
    app.add_exception_handler(ClientDisconnected, _client_disconnected)
    app.add_exception_handler(Exception, _internal_error)
    authorized = [Depends(make_api_key_check(args.api_key))]
    resolve_model = make_model_resolver(served)
    rerank_scores = make_rerank_scores(engine, args)
    rerank = make_rerank(rerank_scores)
    app.include_router(make_rerank_router(rerank_scores, resolve_model, served), dependencies=authorized)
    app.include_router(make_search_router(SQLiteStore(args.store), rerank, resolve_model,
                                          max_rerank=args.max_documents), dependencies=authorized)
    app.include_router(make_health_router(engine, served))
    app.include_router(make_metrics_router(metrics), dependencies=authorized)
    app.state.engine = engine
    app.state.rerank = rerank
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
    """The uvicorn server of ``app`` (from ``create_app``) with the serving limits of ``args`` (``config``: more
    ``uvicorn.Config``)."""
    protocol = type("HeaderTimeoutProtocol", (HeaderTimeoutH11Protocol,), {"header_timeout": args.header_timeout})
    settings = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": False,
                "http": protocol, "timeout_graceful_shutdown": math.ceil(args.drain_timeout)} | config
    return DrainingServer(uvicorn.Config(app, **settings), app.state.engine)


def main(serve_args: ServeArguments, model_args: ModelArguments, chunk_args: ChunkArguments | None = None) -> None:
    """``zerank serve``: check the search store, load the model and serve it with uvicorn until SIGTERM or Ctrl-C
    (then drain). A store that cannot be used stops it at once with one line naming the problem."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(serve_args.log_level.upper())
    try:
        SQLiteStore(serve_args.store).check()
    except StoreError as exc:
        raise SystemExit(f"zerank: error: {exc}") from None
    app = create_app(serve_args, model_args, chunk_args=chunk_args)
    make_server(app, serve_args).run()
