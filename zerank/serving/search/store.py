"""Document storage and first-stage search for the ZeroEntropy search API (collections, documents, queries).

``SearchStore`` is the interface the server's search routes use (``zerank.serving.search.api``): collections of text
documents addressed by path, with metadata, searched with BM25 at four granularities (``Unit``): whole documents,
pages, long snippets and short snippets. ``SQLiteStore`` implements it in one embedded SQLite file with FTS5 indexes;
a search cluster (Elasticsearch/OpenSearch, Vespa, ...) can replace it by implementing the same methods, and the HTTP
API and the reranking above it stay as they are.

Snippets are passages cut from each page of a document by ``cut_passages``, at most ``LONG_SNIPPET_CHARS`` (2,000) or
``SHORT_SNIPPET_CHARS`` (200) characters: the rule is in ``cut_passages``. Text documents are one page; a
``text-pages`` document's pages are joined with ``PAGE_SEPARATOR`` into the document's string, which every
``start``/``end`` offset (in characters, end exclusive) refers to. Snippets never cross a page.

Metadata is ZeroEntropy's ``dict[str, str | list[str]]`` (list-valued attributes are named ``list:...``), and
filters are ZeroEntropy's filter language (``compile_filter``).

Standard library only.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

Unit = Literal["document", "page", "long_snippet", "short_snippet"]
UNITS: tuple[Unit, ...] = get_args(Unit)
ContentType = Literal["text", "text-pages", "text-pages-unordered"]
Metadata = dict[str, "str | list[str]"]

LONG_SNIPPET_CHARS = 2000  # precise_responses=false: ZeroEntropy's snippets average ~2,000 characters
SHORT_SNIPPET_CHARS = 200  # precise_responses=true: ~200 characters
PAGE_SEPARATOR = "\n"
MAX_NAME_BYTES = 1024  # collection names (ZeroEntropy's limit)
MAX_METADATA_BYTES = 65536  # the metadata's UTF-8 JSON, without whitespace (ZeroEntropy's limit)
SCHEMA_VERSION = 1

# Where a passage may end, best first: a paragraph break, a line break, a sentence end (after its punctuation and
# closing quotes or brackets), any whitespace. Group 1 ends where the passage ends.
_BREAKS = [re.compile(p) for p in (r"()\n[ \t\r\f\v]*\n", r"()\n", r"([.!?。！？][\"'”’)\]]*)\s", r"()\s")]
_ATTRIBUTE = re.compile(r"(list:)?[A-Za-z0-9_-]+")
_TERM = re.compile(r"\w+")


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


# --- passages ---


def cut_passages(text: str, max_chars: int, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` into consecutive passages of at most ``max_chars`` characters: ``(start, end)`` spans.

    The rule: leading and trailing whitespace is left out of every passage. While more than ``max_chars``
    characters remain, a passage ends at the last break in its second half (``max_chars // 2`` to ``max_chars``
    characters in), of the best kind found: a paragraph break, else a line break, else a sentence end (``.``, ``!``,
    ``?`` and their CJK forms, with closing quotes or brackets, then whitespace), else any whitespace; with none,
    it is cut at ``max_chars`` characters. The rest (at most ``max_chars``) is the last passage. So passages keep
    whole paragraphs, sentences or words where they can, and each but the last of a page reaches at least
    ``max_chars // 2`` characters past its start (with the whitespace after it).
    """
    end = len(text) if end is None else end
    spans = []
    position = start
    while True:
        while position < end and text[position].isspace():
            position += 1
        if position >= end:
            return spans
        stop = end
        if end - position > max_chars:
            stop = position + max_chars
            # +1: whitespace right after the window still lets the window end at a sentence or word boundary.
            window = text[position + max_chars // 2 : position + max_chars + 1]
            for pattern in _BREAKS:
                last = None
                for last in pattern.finditer(window):
                    pass
                if last is not None:
                    stop = position + max_chars // 2 + last.end(1)
                    break
        passage_end = stop
        while text[passage_end - 1].isspace():
            passage_end -= 1
        spans.append((position, passage_end))
        position = stop


def page_spans(pages: Sequence[str]) -> list[tuple[int, int]]:
    """Each page's ``(start, end)`` in the document string ``PAGE_SEPARATOR.join(pages)``."""
    spans, position = [], 0
    for page in pages:
        spans.append((position, position + len(page)))
        position += len(page) + len(PAGE_SEPARATOR)
    return spans


# --- metadata and filters ---


def check_metadata(metadata: Mapping[str, Any] | None) -> Metadata:
    """Validate ZeroEntropy metadata: ``{name: str}`` or ``{"list:name": [str, ...]}``, names of letters, digits,
    ``-`` and ``_``, under ``MAX_METADATA_BYTES`` as compact JSON."""
    metadata = dict(metadata or {})
    for name, value in metadata.items():
        if not isinstance(name, str) or not _ATTRIBUTE.fullmatch(name):
            raise InvalidRequestError(f"Metadata attribute name {name!r} must be letters, digits, '-' and '_' "
                                      "(with a 'list:' prefix for a list of strings).")
        if name.startswith("list:"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InvalidRequestError(f"Metadata attribute {name!r} must be a list of strings.")
        elif not isinstance(value, str):
            raise InvalidRequestError(f"Metadata attribute {name!r} must be a string (name a list of strings "
                                      f"'list:{name}').")
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size >= MAX_METADATA_BYTES:
        raise InvalidRequestError(f"The metadata is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES - 1}.")
    return metadata


_COMPARISONS: dict[str, Callable[[str, str], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def compile_filter(metadata_filter: Mapping[str, Any]) -> Callable[[Metadata], bool]:
    """ZeroEntropy's metadata filter as a predicate on a document's metadata (raises ``InvalidRequestError``).

    ``{"$and": [f, ...]}``, ``{"$or": [f, ...]}``, or ``{attribute: {operator: value, ...}, ...}`` (all must hold).
    A string attribute takes ``$eq $ne $gt $gte $lt $lte`` with a string (compared as strings) and ``$in $nin``
    with a list of strings; a ``list:`` attribute takes only ``$in $nin`` (true when the lists share an element).
    A missing attribute is null: only ``$ne`` and ``$nin`` are true of it.
    """
    if not isinstance(metadata_filter, Mapping):
        raise InvalidRequestError(f"A filter must be an object, got {metadata_filter!r}.")
    tests: list[Callable[[Metadata], bool]] = []
    for key, value in metadata_filter.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidRequestError(f"{key} takes a non-empty list of filters, got {value!r}.")
            parts = [compile_filter(part) for part in value]
            combine = all if key == "$and" else any
            tests.append(lambda m, parts=parts, combine=combine: combine(part(m) for part in parts))
        elif key.startswith("$"):
            raise InvalidRequestError(f"Unknown filter operator {key!r} at the top level: use $and, $or or an "
                                      "attribute name.")
        else:
            tests.append(_attribute_test(key, value))
    return lambda metadata: all(test(metadata) for test in tests)


def _attribute_test(name: str, condition: Any) -> Callable[[Metadata], bool]:
    if not _ATTRIBUTE.fullmatch(name):
        raise InvalidRequestError(f"Filter attribute name {name!r} must be letters, digits, '-' and '_' "
                                  "(with a 'list:' prefix for a list attribute).")
    if not isinstance(condition, Mapping) or not condition:
        raise InvalidRequestError(f"The filter on {name!r} must be an object of operators like {{\"$eq\": \"...\"}}, "
                                  f"got {condition!r}.")
    is_list = name.startswith("list:")
    tests = []
    for operator, operand in condition.items():
        if operator in ("$in", "$nin"):
            if not isinstance(operand, list) or not all(isinstance(v, str) for v in operand):
                raise InvalidRequestError(f"{operator} on {name!r} takes a list of strings, got {operand!r}.")
            wanted = frozenset(operand)
            if is_list:
                test = lambda m, w=wanted: name in m and not w.isdisjoint(m[name])
            else:
                test = lambda m, w=wanted: name in m and m[name] in w
            tests.append(test if operator == "$in" else lambda m, t=test: not t(m))
        elif operator in _COMPARISONS:
            if is_list:
                raise InvalidRequestError(f"List attribute {name!r} takes only $in and $nin, not {operator}.")
            if not isinstance(operand, str):
                raise InvalidRequestError(f"{operator} on {name!r} takes a string, got {operand!r}.")
            compare = _COMPARISONS[operator]
            null = operator == "$ne"
            tests.append(lambda m, o=operand, c=compare, null=null: c(m[name], o) if name in m else null)
        else:
            raise InvalidRequestError(f"Unknown filter operator {operator!r} on {name!r}; use one of "
                                      f"{sorted([*_COMPARISONS, '$in', '$nin'])}.")
    return lambda metadata: all(test(metadata) for test in tests)


def match_expression(query: str) -> str | None:
    """An FTS5 query matching any of the query's words (each quoted, so no word is read as FTS5 syntax)."""
    terms = dict.fromkeys(_TERM.findall(query))
    return " OR ".join(f'"{term}"' for term in terms) or None


# --- SQLite ---


_SCHEMA = """
CREATE TABLE collections (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    public_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    content TEXT NOT NULL,
    num_pages INTEGER NOT NULL,
    page_spans TEXT NOT NULL,  -- JSON [[start, end], ...] of each page in content
    size INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (collection_id, path)
);
CREATE TABLE passages (
    id INTEGER PRIMARY KEY,  -- the rowid of the passage in its collection's FTS5 table for its unit
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    unit TEXT NOT NULL,
    page_index INTEGER NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL
);
CREATE INDEX passages_by_document ON passages (document_id, unit);
"""

# Porter stemming over Unicode words, case and diacritics folded.
_TOKENIZE = "porter unicode61 remove_diacritics 2"


def _fts_table(collection_id: int, unit: Unit) -> str:
    return f"fts_{collection_id}_{unit}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class SQLiteStore:
    """``SearchStore`` in one SQLite file: tables for collections, documents and passages, and per collection one
    FTS5 table per ``Unit`` (BM25 statistics are the collection's own).

    The file and its folder are created on the first call (opening a store writes nothing). Each call opens its own
    connection and runs in one transaction (WAL journal, ``synchronous=FULL``): a write that fails or whose process
    is killed leaves no trace, and every committed write survives; readers see a consistent snapshot.
    """

    def __init__(self, path: str | Path, busy_timeout: float = 30.0):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._initialized = False
        self._init_lock = threading.Lock()

    # connections and transactions

    def _connect(self) -> sqlite3.Connection:
        if not self._initialized:
            with self._init_lock:
                if not self._initialized:
                    self._initialize()
                    self._initialized = True
        return self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _initialize(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._open()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not an SQLite database ({exc}); choose another --store.") from None
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            with _in_transaction(conn, write=True):
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                        raise StoreError(f"{self.path} is an SQLite database but not a zerank store; choose another "
                                         "--store.")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version != SCHEMA_VERSION:
                    raise StoreError(f"{self.path} is a zerank store of schema version {version}; this version of "
                                     f"zerank reads version {SCHEMA_VERSION}.")
        finally:
            conn.close()

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            with _in_transaction(conn, write):
                yield conn
        finally:
            conn.close()

    @staticmethod
    def _collection_id(conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"Collection {name!r} does not exist.")
        return row[0]

    @staticmethod
    def _document_row(conn: sqlite3.Connection, collection_id: int, collection: str, path: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM documents WHERE collection_id = ? AND path = ?",
                           (collection_id, path)).fetchone()
        if row is None:
            raise NotFoundError(f"Document {path!r} does not exist in collection {collection!r}.")
        return row

    # collections

    def add_collection(self, name: str) -> None:
        if not name or len(name.encode()) > MAX_NAME_BYTES:
            raise InvalidRequestError(f"A collection name must be 1 to {MAX_NAME_BYTES} UTF-8 bytes long.")
        with self._transaction(write=True) as conn:
            try:
                cursor = conn.execute("INSERT INTO collections (name, created_at) VALUES (?, ?)", (name, _now()))
            except sqlite3.IntegrityError:
                raise ConflictError(f"Collection {name!r} already exists.") from None
            for unit in UNITS:
                conn.execute(f"CREATE VIRTUAL TABLE {_fts_table(cursor.lastrowid, unit)} USING fts5(text, "
                             f"tokenize='{_TOKENIZE}')")

    def collection_names(self) -> list[str]:
        with self._transaction() as conn:
            return [name for (name,) in conn.execute("SELECT name FROM collections ORDER BY name")]

    def delete_collection(self, name: str) -> None:
        with self._transaction(write=True) as conn:
            collection_id = self._collection_id(conn, name)
            for unit in UNITS:
                conn.execute(f"DROP TABLE {_fts_table(collection_id, unit)}")
            conn.execute("DELETE FROM collections WHERE id = ?", (collection_id,))  # cascades to documents, passages

    # documents

    def add_document(self, collection: str, path: str, pages: Sequence[str], *, content_type: ContentType = "text",
                     metadata: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
        if not path:
            raise InvalidRequestError("A document path must not be empty.")
        if content_type == "text" and len(pages) != 1:
            raise InvalidRequestError("A text document has exactly one page.")
        metadata = check_metadata(metadata)
        content = PAGE_SEPARATOR.join(pages)
        # Everything is cut before the transaction, so that it holds the write lock only while writing.
        spans = page_spans(pages)
        passages: dict[Unit, list[tuple[int, int, int]]] = {
            "document": [(0, 0, len(content))] if content.strip() else [],
            "page": [(i, a, b) for i, (a, b) in enumerate(spans) if content[a:b].strip()],
            "long_snippet": [(i, *span) for i, (a, b) in enumerate(spans)
                             for span in cut_passages(content, LONG_SNIPPET_CHARS, a, b)],
            "short_snippet": [(i, *span) for i, (a, b) in enumerate(spans)
                              for span in cut_passages(content, SHORT_SNIPPET_CHARS, a, b)],
        }
        with self._transaction(write=True) as conn:
            collection_id = self._collection_id(conn, collection)
            existing = conn.execute("SELECT id FROM documents WHERE collection_id = ? AND path = ?",
                                    (collection_id, path)).fetchone()
            if existing is not None:
                if not overwrite:
                    raise ConflictError(f"Document {path!r} already exists in collection {collection!r} (set "
                                        "overwrite to replace it).")
                self._delete_document(conn, collection_id, existing[0])
            cursor = conn.execute(
                "INSERT INTO documents (collection_id, path, public_id, content_type, content, num_pages, page_spans, "
                "size, metadata, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (collection_id, path, str(uuid.uuid4()), content_type, content, len(pages), json.dumps(spans),
                 len(content.encode()),
                 json.dumps(metadata, ensure_ascii=False), _now()),
            )
            for unit in UNITS:
                self._index(conn, collection_id, cursor.lastrowid, unit, content, passages[unit])

    def _index(self, conn: sqlite3.Connection, collection_id: int, document_id: int, unit: Unit, content: str,
               passages: list[tuple[int, int, int]]) -> None:
        """Insert a document's passages of one unit and index their text."""
        table = _fts_table(collection_id, unit)
        for page_index, start, end in passages:
            cursor = conn.execute('INSERT INTO passages (document_id, unit, page_index, start, "end") '
                                  "VALUES (?, ?, ?, ?, ?)", (document_id, unit, page_index, start, end))
            conn.execute(f"INSERT INTO {table} (rowid, text) VALUES (?, ?)", (cursor.lastrowid, content[start:end]))

    @staticmethod
    def _delete_document(conn: sqlite3.Connection, collection_id: int, document_id: int) -> None:
        for unit in UNITS:
            conn.execute(f"DELETE FROM {_fts_table(collection_id, unit)} WHERE rowid IN "
                         "(SELECT id FROM passages WHERE document_id = ? AND unit = ?)", (document_id, unit))
        conn.execute("DELETE FROM documents WHERE id = ?", (document_id,))  # cascades to passages

    @staticmethod
    def _info(row: sqlite3.Row, collection: str, include_content: bool) -> DocumentInfo:
        return DocumentInfo(
            id=row["public_id"], collection_name=collection, path=row["path"], content_type=row["content_type"],
            metadata=json.loads(row["metadata"]), num_pages=row["num_pages"], size=row["size"],
            created_at=row["created_at"], content=row["content"] if include_content else None,
        )

    def document(self, collection: str, path: str, *, include_content: bool = False) -> DocumentInfo:
        with self._transaction() as conn:
            row = self._document_row(conn, self._collection_id(conn, collection), collection, path)
            return self._info(row, collection, include_content)

    def page(self, collection: str, path: str, page_index: int, *, include_content: bool = False) -> PageInfo:
        with self._transaction() as conn:
            row = self._document_row(conn, self._collection_id(conn, collection), collection, path)
        if not 0 <= page_index < row["num_pages"]:
            raise NotFoundError(f"Document {path!r} has {row['num_pages']} page(s); there is no page {page_index}.")
        content = None
        if include_content:
            start, end = json.loads(row["page_spans"])[page_index]
            content = row["content"][start:end]
        return PageInfo(document_id=row["public_id"], collection_name=collection, path=path, page_index=page_index,
                        content=content)

    def documents(self, collection: str, *, limit: int, path_gt: str | None = None,
                  path_prefix: str | None = None) -> list[DocumentInfo]:
        sql = "SELECT * FROM documents WHERE collection_id = ?"
        params: list[Any] = []
        if path_gt is not None:
            sql += " AND path > ?"
            params.append(path_gt)
        if path_prefix:
            sql += " AND path >= ? AND substr(path, 1, ?) = ?"
            params += [path_prefix, len(path_prefix), path_prefix]
        sql += " ORDER BY path LIMIT ?"
        with self._transaction() as conn:
            collection_id = self._collection_id(conn, collection)
            rows = conn.execute(sql, [collection_id, *params, limit]).fetchall()
        return [self._info(row, collection, False) for row in rows]

    def update_metadata(self, collection: str, path: str, metadata: Mapping[str, Any]) -> None:
        metadata = check_metadata(metadata)
        with self._transaction(write=True) as conn:
            row = self._document_row(conn, self._collection_id(conn, collection), collection, path)
            conn.execute("UPDATE documents SET metadata = ? WHERE id = ?",
                         (json.dumps(metadata, ensure_ascii=False), row["id"]))

    def delete_documents(self, collection: str, paths: Sequence[str]) -> list[str]:
        deleted = []
        with self._transaction(write=True) as conn:
            collection_id = self._collection_id(conn, collection)
            for path in dict.fromkeys(paths):
                row = conn.execute("SELECT id FROM documents WHERE collection_id = ? AND path = ?",
                                   (collection_id, path)).fetchone()
                if row is not None:
                    self._delete_document(conn, collection_id, row[0])
                    deleted.append(path)
            if not deleted:
                raise NotFoundError(f"No document with path {', '.join(map(repr, paths))} exists in collection "
                                    f"{collection!r}.")
        return deleted

    def status(self, collection: str | None = None) -> StoreStatus:
        sql = "SELECT count(*), coalesce(sum(size), 0) FROM documents"
        with self._transaction() as conn:
            if collection is None:
                count, size = conn.execute(sql).fetchone()
            else:
                count, size = conn.execute(sql + " WHERE collection_id = ?",
                                           (self._collection_id(conn, collection),)).fetchone()
        return StoreStatus(num_documents=count, num_indexed_bytes=size)

    # search

    def search(self, collection: str, query: str | None, k: int, unit: Unit,
               metadata_filter: Mapping[str, Any] | None = None) -> list[Hit]:
        keep = compile_filter(metadata_filter) if metadata_filter is not None else None
        with self._transaction() as conn:
            collection_id = self._collection_id(conn, collection)
            where = ""
            if keep is not None:
                conn.create_function("metadata_matches", 1, lambda text: keep(json.loads(text)), deterministic=True)
                where = " AND metadata_matches(d.metadata)"
            if query is None:
                if unit != "document":
                    raise InvalidRequestError("Only documents can be listed without a query.")
                rows = conn.execute(
                    'SELECT d.path, d.metadata, 0, 0, length(d.content), d.content, 0.0 FROM documents AS d '
                    f"WHERE d.collection_id = ?{where} ORDER BY d.path LIMIT ?", (collection_id, k),
                ).fetchall()
            else:
                expression = match_expression(query)
                if expression is None:
                    return []
                table = _fts_table(collection_id, unit)
                # FTS5's rank is its bm25(), where lower is better.
                rows = conn.execute(
                    f'SELECT d.path, d.metadata, p.page_index, p.start, p."end", f.text, -f.rank FROM {table} AS f '
                    "JOIN passages AS p ON p.id = f.rowid JOIN documents AS d ON d.id = p.document_id "
                    f"WHERE {table} MATCH ?{where} ORDER BY f.rank LIMIT ?", (expression, k),
                ).fetchall()
        return [Hit(path=path, metadata=json.loads(metadata), page_index=page_index, start=start, end=end, text=text,
                    score=float(score))
                for path, metadata, page_index, start, end, text, score in rows]


@contextmanager
def _in_transaction(conn: sqlite3.Connection, write: bool) -> Iterator[None]:
    """One transaction on ``conn``: committed when the block ends, rolled back on any error (or interruption).
    A write transaction takes the write lock at the start (IMMEDIATE), so two writers wait for each other instead
    of failing."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
