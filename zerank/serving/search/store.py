"""Document storage for the ZeroEntropy search API (collections, documents, queries): the interface and its records.

``SearchStore`` is the interface the server's search routes use (``zerank.serving.search.api``): collections of text
documents addressed by path, with metadata, searched with BM25 at four granularities (``Unit``): whole documents,
pages, long snippets and short snippets. ``zerank.serving.search.sqlite_store.SQLiteStore`` implements it in one
embedded SQLite file with FTS5 indexes; a search cluster (Elasticsearch/OpenSearch, Vespa, ...) can replace it by
implementing the same methods, and the HTTP API and the reranking above it stay as they are.

Snippets are passages cut from each page of a document (``zerank.serving.search.passages.cut_passages``), at most
``LONG_SNIPPET_CHARS`` (2,000) or ``SHORT_SNIPPET_CHARS`` (200) characters. Text documents are one page; a
``text-pages`` document's pages are joined with ``PAGE_SEPARATOR`` into the document's string, which every
``start``/``end`` offset (in characters, end exclusive) refers to. Snippets never cross a page.

Metadata is ZeroEntropy's ``dict[str, str | list[str]]`` (list-valued attributes are named ``list:...``), and
filters are ZeroEntropy's filter language (``zerank.serving.search.filters``).

Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

Unit = Literal["document", "page", "long_snippet", "short_snippet"]
UNITS: tuple[Unit, ...] = get_args(Unit)
ContentType = Literal["text", "text-pages", "text-pages-unordered"]
Metadata = dict[str, "str | list[str]"]

LONG_SNIPPET_CHARS = 2000  # precise_responses=false: ZeroEntropy's snippets average ~2,000 characters
SHORT_SNIPPET_CHARS = 200  # precise_responses=true: ~200 characters
PAGE_SEPARATOR = "\n"
MAX_NAME_BYTES = 1024  # collection names (ZeroEntropy's limit)
MAX_PATH_BYTES = 1024  # document paths (so that a listing of 1,024 documents stays a few MB)
MAX_FILTER_DEPTH = 32  # $and / $or nested in a filter
MAX_METADATA_BYTES = 65536  # the metadata's UTF-8 JSON, without whitespace (ZeroEntropy's limit)

# --- errors (the HTTP layer answers 404, 409 and 400) ---


class StoreError(Exception):
    """The store cannot serve (e.g. its file is not a zerank store); the subclasses are requests it refuses."""


class NotFoundError(StoreError):
    """No such collection or document."""


class ConflictError(StoreError):
    """The collection or document already exists."""


class InvalidRequestError(StoreError):
    """Malformed input: metadata, a filter, a name."""


# --- records ---


@dataclass(frozen=True)
class DocumentInfo:
    """A stored document. ``content`` is None unless asked for."""

    id: str  # a new id each time the path is (over)written
    collection_name: str
    path: str
    content_type: ContentType
    metadata: Metadata
    num_pages: int
    size: int  # UTF-8 bytes of the document's string
    created_at: str  # ISO 8601, UTC
    content: str | None = None


@dataclass(frozen=True)
class PageInfo:
    """One page of a stored document. ``content`` is None unless asked for."""

    document_id: str
    collection_name: str
    path: str
    page_index: int
    content: str | None = None


@dataclass(frozen=True)
class Hit:
    """A first-stage search result: a span of a document (the whole document for unit ``document``)."""

    path: str
    metadata: Metadata
    page_index: int  # the page the span lies in (0 for a whole document)
    start: int  # character offsets into the document's string, end exclusive
    end: int
    text: str
    score: float  # BM25, higher is better (0.0 when there was no query)


@dataclass(frozen=True)
class StoreStatus:
    """Document counts. This store indexes while it adds, so every document is indexed or absent."""

    num_documents: int
    num_indexed_bytes: int


# --- the interface ---


class SearchStore(Protocol):
    """What the search API needs from storage: the line where a search cluster can replace SQLite.

    Every method is safe to call from several threads at once; every write is atomic (all or nothing, even if the
    process dies during it). Collections and documents that do not exist raise ``NotFoundError``; adding an existing
    one raises ``ConflictError``; bad metadata, filters or names raise ``InvalidRequestError``.
    """

    def add_collection(self, name: str) -> None: ...

    def collection_names(self) -> list[str]:
        """All collections, by name."""
        ...

    def delete_collection(self, name: str) -> None: ...

    def add_document(self, collection: str, path: str, pages: Sequence[str], *, content_type: ContentType = "text",
                     metadata: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
        """Store and index a document (one page for ``text``); ``overwrite`` replaces an existing path atomically."""
        ...

    def document(self, collection: str, path: str, *, include_content: bool = False) -> DocumentInfo: ...

    def page(self, collection: str, path: str, page_index: int, *, include_content: bool = False) -> PageInfo: ...

    def documents(self, collection: str, *, limit: int, path_gt: str | None = None,
                  path_prefix: str | None = None) -> list[DocumentInfo]:
        """Up to ``limit`` documents by path (binary UTF-8 order), after ``path_gt``, starting with ``path_prefix``."""
        ...

    def update_metadata(self, collection: str, path: str, metadata: Mapping[str, Any]) -> None:
        """Replace a document's metadata."""
        ...

    def delete_documents(self, collection: str, paths: Sequence[str]) -> list[str]:
        """Delete the paths that exist and return them; ``NotFoundError`` if none does."""
        ...

    def status(self, collection: str | None = None) -> StoreStatus:
        """Counts for one collection, or for all of them."""
        ...

    def search(self, collection: str, query: str | None, k: int, unit: Unit,
               metadata_filter: Mapping[str, Any] | None = None) -> list[Hit]:
        """The ``k`` best spans of ``unit`` for ``query`` by BM25, best first, among documents the filter keeps.

        ``query=None`` (documents only) lists documents by path, unranked.
        """
        ...
