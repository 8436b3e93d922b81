"""ZeroEntropy's search API (collections, documents, queries, status) over a ``SearchStore``, reranked by the served
model: the routes the official SDKs call (``zeroentropy`` for Python 0.1.0a11, Node 0.1.0-alpha.10), so that::

    client = ZeroEntropy(api_key=KEY, base_url="http://127.0.0.1:8000/v1")
    client.collections.add(collection_name="docs")
    client.documents.add(collection_name="docs", path="a.txt", content={"type": "text", "text": "..."})
    client.queries.top_snippets(collection_name="docs", query="...", k=5, reranker="zerank-1",
                                precise_responses=False, include_document_metadata=False)

work unchanged against ``zerank serve``. Every route is a POST under ``/v1`` with a JSON body, as the SDKs send it.

Search is two stages: the store's BM25 (``SearchStore.search``) takes the ``max(k, rerank_candidates)`` best
documents, pages or snippets; with ``reranker`` set, the served model scores each candidate's text against the query
and the ``k`` best by that calibrated 0..1 score are returned; without it, the first ``k`` by BM25 score. Snippets
are the store's passages: at most 2,000 characters, or 200 with ``precise_responses`` (the rule is
``zerank.serving.search.passages.cut_passages``).

Answers as ZeroEntropy's: 404 for an unknown collection, document or reranker; 409 when a collection or document
exists (``overwrite`` replaces a document); 400 for bad metadata or filters; 415 for content other than text
(``text``, ``text-pages``, ``text-pages-unordered``: binary files are not parsed here); 422 for a malformed body.
``index_status`` is always ``indexed``: a document is indexed in the transaction that adds it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from zerank.serving.search.store import (
    ConflictError,
    DocumentInfo,
    Hit,
    InvalidRequestError,
    NotFoundError,
    SearchStore,
    StoreError,
    Unit,
)

Rerank = Callable[[str, list[str], Request], Awaitable[list[float]]]
"""The served model's scores: (query, documents, the route's request) -> calibrated 0..1 scores in order."""
ResolveModel = Callable[[str], str]
"""A model name -> the served model's name; raises HTTPException(404) for a model that is not served."""

MetadataValue = str | list[str]
IndexStatus = Literal["not_parsed", "parsing", "not_indexed", "indexing", "indexed", "parsing_failed",
                      "indexing_failed"]
logger = logging.getLogger(__name__)

MAX_QUERY_BYTES = 4096
SUCCESS = "Success!"
_STATUS = {NotFoundError: 404, ConflictError: 409, InvalidRequestError: 400}


# --- request and response bodies: the field names and limits of the zeroentropy SDK's types ---


class Message(BaseModel):
    message: str = SUCCESS


class CollectionName(BaseModel):
    collection_name: str = Field(description="The collection's name (at most 1024 UTF-8 bytes).")


class AddCollectionRequest(CollectionName):
    num_shards: Literal[1, 8, 16, 32, 64] = Field(1, description="Accepted for compatibility; one shard here.")


class CollectionList(BaseModel):
    collection_names: list[str]


class TextContent(BaseModel):
    type: Literal["text"]
    text: str


class PagesContent(BaseModel):
    type: Literal["text-pages", "text-pages-unordered"]
    pages: list[str] = Field(min_length=1)


class BinaryContent(BaseModel):
    type: Literal["auto"]
    base64_data: str


class AddDocumentRequest(CollectionName):
    path: str = Field(description="The document's path, unique in its collection.")
    content: Annotated[TextContent | PagesContent | BinaryContent, Field(discriminator="type")] = Field(
        description="Text (`text`) or text pages (`text-pages`, `text-pages-unordered`); binary files (`auto`) are "
                    "refused with 415.")
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, description="`{name: str, 'list:name': [str]}`")
    overwrite: bool = Field(False, description="Replace the document if the path exists (else 409).")


class DocumentRequest(CollectionName):
    path: str
    include_content: bool = False


class PageRequest(DocumentRequest):
    page_index: int = Field(ge=0, strict=True)


class DocumentListRequest(CollectionName):
    limit: int = Field(1024, ge=1, le=1024, strict=True)
    path_gt: str | None = None
    path_prefix: str | None = None


class UpdateDocumentRequest(CollectionName):
    path: str
    index_status: Literal["not_parsed", "not_indexed"] | None = None
    metadata: dict[str, MetadataValue] | None = None


class DeleteDocumentRequest(CollectionName):
    path: str | list[str] = Field(description="A path, or a list of 1 to 64 paths.")

    @field_validator("path")
    @classmethod
    def _count(cls, path: str | list[str]) -> str | list[str]:
        if isinstance(path, list) and not 1 <= len(path) <= 64:
            raise ValueError(f"a list of 1 to 64 paths is required, got {len(path)}")
        return path


class DocumentBody(BaseModel):
    id: str
    collection_name: str
    path: str
    file_url: str = Field(description="GET it (with the API key) for the document's text.")
    index_status: IndexStatus = "indexed"
    metadata: dict[str, MetadataValue]
    num_pages: int | None
    size: int = Field(description="UTF-8 bytes of the document's text.")
    created_at: datetime


class DocumentWithContent(DocumentBody):
    content: str | None = None


class DocumentInfoResponse(BaseModel):
    document: DocumentWithContent


class DocumentListResponse(BaseModel):
    documents: list[DocumentBody]


class PageBody(BaseModel):
    id: str
    collection_name: str
    path: str
    page_index: int
    image_url: str | None = None
    content: str | None = None


class PageInfoResponse(BaseModel):
    page: PageBody


class DeletedPaths(BaseModel):
    deleted_paths: list[str]


class StatusRequest(BaseModel):
    collection_name: str | None = None


class StatusResponse(BaseModel):
    num_documents: int
    num_parsing_documents: int = 0
    num_indexing_documents: int = 0
    num_indexed_documents: int
    num_indexed_bytes: int
    num_failed_documents: int = 0


def _query_bytes(query: str | None) -> str | None:
    if query is not None and len(query.encode()) > MAX_QUERY_BYTES:
        raise ValueError(f"the query is {len(query.encode())} UTF-8 bytes; the limit is {MAX_QUERY_BYTES}")
    return query


class QueryRequest(CollectionName):
    filter: dict[str, Any] | None = Field(None, description="ZeroEntropy's metadata filter ($eq, $ne, $gt, $gte, "
                                                            "$lt, $lte, $in, $nin, $and, $or).")
    reranker: str | None = Field(None, description="Rerank the first stage with this served model (default: BM25 "
                                                   "order and scores).")
    latency_mode: Literal["low", "high"] = Field("low", description="Accepted for compatibility; one mode here.")


class TopDocumentsRequest(QueryRequest):
    query: str | None = Field(description="The query; null lists documents (by path) without ranking.")
    k: int = Field(ge=1, le=2048, strict=True)
    include_metadata: bool = False

    _check_query = field_validator("query")(_query_bytes)


class TopPagesRequest(QueryRequest):
    query: str
    k: int = Field(ge=1, le=1024, strict=True)
    include_content: bool = False
    include_metadata: bool = False

    _check_query = field_validator("query")(_query_bytes)


class TopSnippetsRequest(QueryRequest):
    query: str
    k: int = Field(ge=1, le=128, strict=True)
    precise_responses: bool = Field(False, description="Short snippets (at most 200 characters) instead of long "
                                                       "ones (at most 2,000).")
    include_document_metadata: bool = False

    _check_query = field_validator("query")(_query_bytes)


class DocumentResult(BaseModel):
    path: str
    file_url: str
    metadata: dict[str, MetadataValue] | None = None
    score: float = Field(description="The reranker's calibrated 0..1 score with `reranker`, else BM25.")


class TopDocumentsResponse(BaseModel):
    results: list[DocumentResult]


class PageResult(BaseModel):
    path: str
    page_index: int
    score: float
    content: str | None = None
    image_url: str | None = None


class TopPagesResponse(BaseModel):
    document_results: list[DocumentResult]
    results: list[PageResult]


class SnippetResult(BaseModel):
    path: str
    start_index: int = Field(description="Character offsets of the snippet in the document's text, end exclusive.")
    end_index: int
    page_span: list[int] = Field(description="[first page, last page + 1]")
    content: str
    score: float


class TopSnippetsResponse(BaseModel):
    document_results: list[DocumentResult]
    results: list[SnippetResult]


# --- routes ---


def winning_passages(hits: Sequence[Hit], spans: Sequence[tuple[int, int, int]] | None) -> list[Hit]:
    """Snippets narrowed to the best window the reranker scored them by (``zerank serve --long-documents chunk``:
    ``spans`` are each text's (start, end, windows)); a snippet scored whole, or without spans, is kept."""
    if spans is None:
        return list(hits)
    return [replace(hit, start=hit.start + start, end=hit.start + end, text=hit.text[start:end]) if windows > 1
            else hit for hit, (start, end, windows) in zip(hits, spans)]


def make_search_router(store: SearchStore, rerank: Rerank, resolve_model: ResolveModel | None = None,
                       rerank_candidates: int = 50, max_rerank: int | None = None) -> APIRouter:
    """The search routes under ``/v1``, over ``store``, reranked by ``rerank`` (the server's scoring core).

    ``resolve_model`` checks a query's ``reranker`` name (default: any name). Reranking scores the
    ``max(k, rerank_candidates)`` best BM25 results, at most ``max_rerank`` of them (the server's
    ``--max-documents``); with a larger ``k``, the rest follow the reranked ones in BM25 order, with score 0. Mount
    with the server's API-key dependency:
    ``app.include_router(make_search_router(...), dependencies=[Depends(require_api_key)])``.
    """
    router = APIRouter(prefix="/v1", tags=["search"])

    async def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store method off the event loop; its refusals become 404, 409 or 400 (503: the store is unusable,
        logged, never shown to the client, whose message names server paths)."""
        try:
            return await run_in_threadpool(method, *args, **kwargs)
        except StoreError as exc:
            if type(exc) in _STATUS:
                raise HTTPException(_STATUS[type(exc)], str(exc)) from None
            logger.error("The search store failed: %s", exc)  # the message names server paths: not for clients
            raise HTTPException(503, "The search store cannot be used; the server's log says why.") from None

    def file_url(request: Request, collection: str, path: str) -> str:
        return str(request.url_for("get_document_file").include_query_params(collection_name=collection, path=path))

    def document_body(request: Request, info: DocumentInfo) -> DocumentBody:
        return DocumentBody(id=info.id, collection_name=info.collection_name, path=info.path, metadata=info.metadata,
                            num_pages=info.num_pages, size=info.size, created_at=info.created_at,
                            file_url=file_url(request, info.collection_name, info.path))

    async def ranked(request: Request, body: QueryRequest, query: str | None, k: int, unit: Unit) -> list[Hit]:
        """The ``k`` best hits: BM25, then the reranker's scores when one is asked for."""
        if body.reranker is not None and resolve_model is not None:
            resolve_model(body.reranker)
        if body.reranker is None or query is None:
            return await call(store.search, body.collection_name, query, k, unit, body.filter)
        hits = await call(store.search, body.collection_name, query, max(k, rerank_candidates), unit, body.filter)
        cut = len(hits) if max_rerank is None else max_rerank
        rescored, rest = hits[:cut], hits[cut:]
        scores = await rerank(query, [hit.text for hit in rescored], request) if rescored else []
        if unit in ("short_snippet", "long_snippet"):
            rescored = winning_passages(rescored, getattr(scores, "spans", None))
        order = sorted(range(len(rescored)), key=lambda i: -scores[i])  # stable: ties keep BM25 order
        return ([replace(rescored[i], score=scores[i]) for i in order] + [replace(hit, score=0.0) for hit in rest])[:k]

    def document_results(request: Request, collection: str, hits: Sequence[Hit],
                         metadata: bool) -> list[DocumentResult]:
        """One result per document, in order of its best hit, with that hit's score."""
        best: dict[str, Hit] = {}
        for hit in hits:
            best.setdefault(hit.path, hit)
        return [DocumentResult(path=path, file_url=file_url(request, collection, path), score=hit.score,
                               metadata=hit.metadata if metadata else None) for path, hit in best.items()]

    # collections

    @router.post("/collections/add-collection", response_model=Message, summary="Add a collection (409 if it exists)")
    async def add_collection(body: AddCollectionRequest) -> Message:
        await call(store.add_collection, body.collection_name)
        return Message()

    @router.post("/collections/get-collection-list", response_model=CollectionList, summary="List the collections")
    async def get_collection_list() -> CollectionList:
        return CollectionList(collection_names=await call(store.collection_names))

    @router.post("/collections/delete-collection", response_model=Message,
                 summary="Delete a collection and its documents")
    async def delete_collection(body: CollectionName) -> Message:
        await call(store.delete_collection, body.collection_name)
        return Message()

    # documents

    @router.post("/documents/add-document", response_model=Message,
                 summary="Add a text document (409 if the path exists, unless overwrite)")
    async def add_document(body: AddDocumentRequest) -> Message:
        content = body.content
        if isinstance(content, BinaryContent):
            raise HTTPException(415, "Content type 'auto' (a base64 file such as PDF or DOCX) is not supported: this "
                                     "server indexes text only. Send {\"type\": \"text\", \"text\": ...} or "
                                     "{\"type\": \"text-pages\", \"pages\": [...]} (or \"text-pages-unordered\").")
        pages = [content.text] if isinstance(content, TextContent) else content.pages
        await call(store.add_document, body.collection_name, body.path, pages, content_type=content.type,
                   metadata=body.metadata, overwrite=body.overwrite)
        return Message()

    @router.post("/documents/get-document-info", response_model=DocumentInfoResponse, summary="A document's info")
    async def get_document_info(body: DocumentRequest, request: Request) -> DocumentInfoResponse:
        info = await call(store.document, body.collection_name, body.path, include_content=body.include_content)
        return DocumentInfoResponse(
            document=DocumentWithContent(**document_body(request, info).model_dump(), content=info.content))

    @router.post("/documents/get-document-info-list", response_model=DocumentListResponse,
                 summary="Documents by path, a page at a time (the next page: path_gt = the last path)")
    async def get_document_info_list(body: DocumentListRequest, request: Request) -> DocumentListResponse:
        infos = await call(store.documents, body.collection_name, limit=body.limit, path_gt=body.path_gt,
                           path_prefix=body.path_prefix)
        return DocumentListResponse(documents=[document_body(request, info) for info in infos])

    @router.post("/documents/get-page-info", response_model=PageInfoResponse, summary="A page of a document")
    async def get_page_info(body: PageRequest) -> PageInfoResponse:
        page = await call(store.page, body.collection_name, body.path, body.page_index,
                          include_content=body.include_content)
        return PageInfoResponse(page=PageBody(id=f"{page.document_id}:{page.page_index}", path=page.path,
                                              collection_name=page.collection_name, page_index=page.page_index,
                                              content=page.content))

    @router.post("/documents/update-document", response_model=Message, summary="Replace a document's metadata")
    async def update_document(body: UpdateDocumentRequest) -> Message:
        if body.index_status is not None:
            # ZeroEntropy allows it only for a document whose parsing or indexing failed; here none ever does.
            await call(store.document, body.collection_name, body.path)
            raise HTTPException(400, f"index_status {body.index_status!r} can only be set on a document whose parsing "
                                     "or indexing failed; documents here are indexed when they are added.")
        if body.metadata is not None:
            await call(store.update_metadata, body.collection_name, body.path, body.metadata)
        else:
            await call(store.document, body.collection_name, body.path)
        return Message()

    @router.post("/documents/delete-document", response_model=DeletedPaths,
                 summary="Delete documents (404 if none of the paths exists)")
    async def delete_document(body: DeleteDocumentRequest) -> DeletedPaths:
        paths = [body.path] if isinstance(body.path, str) else body.path
        return DeletedPaths(deleted_paths=await call(store.delete_documents, body.collection_name, paths))

    @router.get("/documents/file", response_class=PlainTextResponse, name="get_document_file",
                summary="A document's text (the target of `file_url`)")
    async def get_document_file(collection_name: str, path: str) -> PlainTextResponse:
        info = await call(store.document, collection_name, path, include_content=True)
        return PlainTextResponse(info.content)

    # queries

    @router.post("/queries/top-documents", response_model=TopDocumentsResponse, summary="The k best documents")
    async def top_documents(body: TopDocumentsRequest, request: Request) -> TopDocumentsResponse:
        hits = await ranked(request, body, body.query, body.k, "document")
        return TopDocumentsResponse(results=[
            DocumentResult(path=hit.path, file_url=file_url(request, body.collection_name, hit.path), score=hit.score,
                           metadata=hit.metadata if body.include_metadata else None) for hit in hits])

    @router.post("/queries/top-pages", response_model=TopPagesResponse, summary="The k best pages")
    async def top_pages(body: TopPagesRequest, request: Request) -> TopPagesResponse:
        hits = await ranked(request, body, body.query, body.k, "page")
        return TopPagesResponse(
            document_results=document_results(request, body.collection_name, hits, body.include_metadata),
            results=[PageResult(path=hit.path, page_index=hit.page_index, score=hit.score,
                                content=hit.text if body.include_content else None) for hit in hits],
        )

    @router.post("/queries/top-snippets", response_model=TopSnippetsResponse,
                 summary="The k best snippets (long, or short with precise_responses)")
    async def top_snippets(body: TopSnippetsRequest, request: Request) -> TopSnippetsResponse:
        unit: Unit = "short_snippet" if body.precise_responses else "long_snippet"
        hits = await ranked(request, body, body.query, body.k, unit)
        return TopSnippetsResponse(
            document_results=document_results(request, body.collection_name, hits, body.include_document_metadata),
            results=[SnippetResult(path=hit.path, start_index=hit.start, end_index=hit.end, content=hit.text,
                                   page_span=[hit.page_index, hit.page_index + 1], score=hit.score) for hit in hits],
        )

    # status

    @router.post("/status/get-status", response_model=StatusResponse,
                 summary="Document counts of a collection, or of all of them")
    async def get_status(body: StatusRequest | None = None) -> StatusResponse:
        status = await call(store.status, body.collection_name if body is not None else None)
        return StatusResponse(num_documents=status.num_documents, num_indexed_documents=status.num_documents,
                              num_indexed_bytes=status.num_indexed_bytes)

    return router
