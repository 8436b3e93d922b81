"""The candidates of ``zerank rerank``: a jsonl/Parquet file of ``(query_id, query, doc_id, document)`` rows, or a
TREC run over a BEIR folder (only the queries and documents the run names are kept), checked row by row with errors
that name the file and line."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from zerank.data.readers import document_text, iter_jsonl, read_corpus, read_queries, read_trec_run
from zerank.rerank.arguments import RerankArguments

PAIR_FIELDS = ("query_id", "query", "doc_id", "document")


@dataclass
class Candidates:
    """(query id, query, document id, document) rows, in input order; ``sources`` are the files they came from."""

    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    documents: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.query_ids)

    def rows_by_query(self) -> dict[str, list[int]]:
        """Each query id's row indices, queries in order of first appearance."""
        rows: dict[str, list[int]] = {}
        for index, qid in enumerate(self.query_ids):
            rows.setdefault(qid, []).append(index)
        return rows

    def fingerprint(self) -> str:
        """sha256 of every row's four fields, in order: equal for equal rows, whichever files they came from."""
        h = hashlib.sha256()
        for row in zip(self.query_ids, self.queries, self.doc_ids, self.documents):
            for value in row:
                data = value.encode("utf-8")
                h.update(len(data).to_bytes(8, "little"))
                h.update(data)
        return h.hexdigest()


class _RowChecker:
    """Checks rows as they are added (ids usable in a TREC run, one text per query id, no repeated pair) and names
    the row's place (``file:line``) in its errors."""

    def __init__(self, source: str) -> None:
        self.candidates = Candidates([], [], [], [], [source])
        self.query_text: dict[str, tuple[str, str]] = {}  # query id -> (text, where first seen)
        self.seen: dict[tuple[str, str], str] = {}

    def add(self, where: str, query_id, query, doc_id, document) -> None:
        for name, value in (("query_id", query_id), ("doc_id", doc_id)):
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValueError(f"{where}: '{name}' must be a string or an integer, got {type(value).__name__}.")
            if not str(value) or any(c.isspace() for c in str(value)):
                raise ValueError(f"{where}: '{name}' {str(value)!r} is empty or holds whitespace (a TREC run "
                                 "separates fields by whitespace).")
        for name, value in (("query", query), ("document", document)):
            if not isinstance(value, str):
                raise ValueError(f"{where}: '{name}' must be a string, got {type(value).__name__}.")
        query_id, doc_id = str(query_id), str(doc_id)
        text, first = self.query_text.setdefault(query_id, (query, where))
        if text != query:
            raise ValueError(f"{where}: query {query_id!r} has another text than at {first}.")
        first = self.seen.setdefault((query_id, doc_id), where)
        if first != where:
            raise ValueError(f"{where}: the pair ({query_id}, {doc_id}) is repeated (first at {first}).")
        c = self.candidates
        c.query_ids.append(query_id)
        c.queries.append(query)
        c.doc_ids.append(doc_id)
        c.documents.append(document)

    def result(self, path: Path) -> Candidates:
        if not self.candidates.query_ids:
            raise ValueError(f"{path} holds no candidate pair.")
        return self.candidates


def read_pairs(path: str | Path) -> Candidates:
    """Rows ``query_id, query, doc_id, document`` of a ``.jsonl`` file (one object a line) or a ``.parquet`` file.

    Ids are strings or integers without whitespace; a query id has one text; a pair appears once. Errors name the
    file and line (the row, for Parquet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Pairs file {path} not found.")
    checker = _RowChecker(str(path))
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        missing = [name for name in PAIR_FIELDS if name not in table.column_names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; rows need {list(PAIR_FIELDS)}.")
        columns = [table.column(name).to_pylist() for name in PAIR_FIELDS]
        for row_no, row in enumerate(zip(*columns), 1):
            checker.add(f"{path}: row {row_no}", *row)
    elif path.suffix == ".jsonl":
        for line_no, row in iter_jsonl(path):
            where = f"{path}:{line_no}"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected an object with {list(PAIR_FIELDS)}, got {type(row).__name__}.")
            missing = [name for name in PAIR_FIELDS if name not in row]
            if missing:
                raise ValueError(f"{where}: missing field(s) {missing}; rows need {list(PAIR_FIELDS)}.")
            checker.add(where, *(row[name] for name in PAIR_FIELDS))
    else:
        raise ValueError(f"{path}: pairs must be a .jsonl or .parquet file.")
    return checker.result(path)


def _first_run_line(path: Path, query_id: str, doc_id: str | None = None) -> int:
    """The line of ``path`` (a TREC run) that names ``query_id`` (and ``doc_id``), for an error message."""
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if parts and parts[0] == query_id and (doc_id is None or parts[2] == doc_id):
                return line_no
    return 0


def read_beir_candidates(data: str | Path, run_path: str | Path) -> Candidates:
    """The pairs of a TREC run, with the query texts of ``DATA/queries.jsonl`` and the documents (title + text, see
    :func:`zerank.data.readers.document_text`) of ``DATA/corpus.jsonl``, in the run's order.

    The corpus is read as a stream and only the documents the run names are kept, so a large corpus costs no more
    memory than its candidates."""
    data, run_path = Path(data), Path(run_path)
    if not data.is_dir():
        raise FileNotFoundError(f"Data folder {data} does not exist.")
    run = read_trec_run(run_path)
    queries = read_queries(data / "queries.jsonl", set(run))
    wanted = {doc_id for docs in run.values() for doc_id in docs}
    corpus = {doc_id: document_text(row["title"], row["text"])
              for doc_id, row in read_corpus(data / "corpus.jsonl", wanted).items()}
    checker = _RowChecker(str(run_path))
    checker.candidates.sources.extend([str(data / "queries.jsonl"), str(data / "corpus.jsonl")])
    for qid, docs in run.items():
        if qid not in queries:
            raise ValueError(f"{run_path}:{_first_run_line(run_path, qid)}: query {qid!r} is not in "
                             f"{data / 'queries.jsonl'}.")
        for doc_id in docs:
            if doc_id not in corpus:
                raise ValueError(f"{run_path}:{_first_run_line(run_path, qid, doc_id)}: document {doc_id!r} is not "
                                 f"in {data / 'corpus.jsonl'}.")
            checker.add(str(run_path), qid, queries[qid], doc_id, corpus[doc_id])
    return checker.result(run_path)


def read_candidates(args: RerankArguments) -> Candidates:
    return read_pairs(args.pairs) if args.pairs is not None else read_beir_candidates(args.data, args.run)
