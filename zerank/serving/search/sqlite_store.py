"""``SearchStore`` in one embedded SQLite file with FTS5 indexes (BM25). Standard library only."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zerank.serving.search.filters import check_metadata, compile_filter
from zerank.serving.search.passages import cut_passages, page_spans
from zerank.serving.search.store import (
    LONG_SNIPPET_CHARS,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    PAGE_SEPARATOR,
    SHORT_SNIPPET_CHARS,
    UNITS,
    ConflictError,
    ContentType,
    DocumentInfo,
    Hit,
    InvalidRequestError,
    NotFoundError,
    PageInfo,
    StoreError,
    StoreStatus,
    Unit,
)

SCHEMA_VERSION = 1
_TERM = re.compile(r"[^\W_]+")  # letters and digits: what FTS5's unicode61 tokenizer keeps ("a_b" is two words)


def match_expression(query: str) -> str | None:
    """An FTS5 query matching any of the query's words (each quoted, so no word is read as FTS5 syntax), split as
    the index splits its text."""
    terms = dict.fromkeys(_TERM.findall(query))
    return " OR ".join(f'"{term}"' for term in terms) or None


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

    def check(self) -> None:
        """Open the store now, creating it if it is missing, and check its file (``StoreError`` naming the problem):
        ``zerank serve`` calls this before it starts, so that a broken store stops it with one clear line."""
        self._connect().close()

    def _initialize(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"The folder of the store {self.path} cannot be created ({exc.strerror or exc}); "
                             "choose another --store.") from None
        if self.path.is_dir():
            raise StoreError(f"The store {self.path} is a folder; --store names a file.")
        conn = None
        try:
            conn = self._open()
            self._set_up(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"The store {self.path} {_reason(exc)}; choose another --store.") from None
        finally:
            if conn is not None:
                conn.close()

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """Check the file (SQLite's quick check, a write) and create the schema in a new one."""
        conn.execute("PRAGMA journal_mode = WAL")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"database disk image is malformed: {'; '.join(problems)}")
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
            conn.execute(f"PRAGMA user_version = {version or SCHEMA_VERSION}")  # a write: fails on a read-only file

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction; an SQLite failure (a damaged file, a full disk, a lock held too long) is a StoreError."""
        try:
            conn = self._connect()
            try:
                with _in_transaction(conn, write):
                    yield conn
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"The store {self.path} {_reason(exc)}.") from None

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
        if not path or len(path.encode()) > MAX_PATH_BYTES:
            raise InvalidRequestError(f"A document path must be 1 to {MAX_PATH_BYTES} UTF-8 bytes long, got "
                                      f"{len(path.encode())}.")
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


def _reason(error: sqlite3.Error) -> str:
    """What an SQLite error at opening says about the file."""
    message = str(error)
    if "readonly" in message or "read-only" in message:
        return "is read-only (the server writes to it)"
    if "not a database" in message:
        return "is not an SQLite database"
    if "malformed" in message or "corrupt" in message:
        return f"is damaged ({message}); restore it from a backup"
    return f"cannot be used ({message})"


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
