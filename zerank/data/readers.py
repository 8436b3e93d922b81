"""Data on disk: BEIR-layout folders, jsonl files of labelled pairs, TREC run files.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv`` (query id, document id, graded relevance; with or without a header line). Only the queries
judged in the split are evaluated. A document is shown to a reranker as :func:`document_text` (title and text).
Errors name the file and line. Ids are strings or integers; a query's text is a string, a document's title and
text are strings or null; grades are finite integers. An id (a (query, document) judgment in qrels) given twice is
an error when the two lines disagree and is read once, with a warning counting such repeats, when they agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from zerank.utils.system import atomic_write_text

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

TITLE_SEPARATOR = "\n"


def document_text(title: str | None, text: str | None) -> str:
    """The text a reranker reads for a document: the title, a newline, then the text (text only if no title)."""
    title = (title or "").strip()
    text = text or ""
    return f"{title}{TITLE_SEPARATOR}{text}" if title else text


@dataclass
class BeirDataset:
    """A BEIR split: corpus (id -> {"title", "text"}), queries (id -> text) and the split's judgments."""

    name: str
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: Qrels

    @property
    def judged_query_ids(self) -> list[str]:
        """Queries of the split that have at least one judgment, in the order of the qrels file."""
        return list(self.qrels)

    def document(self, doc_id: str) -> str:
        doc = self.corpus[doc_id]
        return document_text(doc.get("title"), doc.get("text"))

    def subset(self, query_ids: Sequence[str]) -> BeirDataset:
        """The same corpus, restricted to ``query_ids`` (queries and judgments)."""
        return BeirDataset(
            self.name, self.split, self.corpus, {q: self.queries[q] for q in query_ids},
            {q: self.qrels[q] for q in query_ids},
        )


def iter_jsonl(path: Path, missing_hint: str = "") -> Iterable[tuple[int, Any]]:
    """(line number, parsed row) of every non-empty line; errors name the file and line."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found{missing_hint}.")
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg}).") from None


def _read_jsonl(path: Path, required: Sequence[str]) -> Iterable[tuple[int, dict]]:
    for line_no, row in iter_jsonl(path, ": a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/"):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: a BEIR row is a JSON object, got {type(row).__name__}.")
        missing = [key for key in required if key not in row]
        if missing:
            raise ValueError(f"{path}:{line_no}: missing field(s) {missing}; BEIR rows need {list(required)}.")
        yield line_no, row


def _row_id(path: Path, line_no: int, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{path}:{line_no}: '_id' must be a string or an integer, got {value!r:.40}.")
    return str(value)


def _text(path: Path, line_no: int, row: dict, field: str, *, nullable: bool) -> str:
    value = row.get(field)
    if value is None and nullable:
        return ""
    if not isinstance(value, str):
        kind = "a string or null" if nullable else "a string"
        raise ValueError(f"{path}:{line_no}: '{field}' must be {kind}, got {value!r:.40}.")
    return value


class _Repeats:
    """Counts ids given twice with the same content; a repeat with other content is an error naming both lines."""

    def __init__(self, path: Path, what: str):
        self.path, self.what, self.count = path, what, 0

    def check(self, line_no: int, key: str, old: Any, new: Any, first_line: Callable[[], int]) -> None:
        if old != new:
            raise ValueError(f"{self.path}:{line_no}: {self.what} {key} was given on line {first_line()} with "
                             f"different content ({old!r:.60} there, {new!r:.60} here).")
        self.count += 1

    def warn(self) -> None:
        if self.count:
            logger.warning("%s: %d repeated %ss with the same content as their first line (each read once).",
                           self.path, self.count, self.what)


def _read_table(path: Path, what: str, value: Callable[[int, dict], Any],
                wanted: Set[str] | None = None) -> dict[str, Any]:
    """id -> ``value(line_no, row)`` of a BEIR jsonl file, with :class:`_Repeats` checks; only the ids in ``wanted``
    are kept when it is given (the file is streamed, so a large corpus costs the memory of what is kept)."""
    table: dict[str, Any] = {}
    repeats = _Repeats(path, what)
    for line_no, row in _read_jsonl(path, ("_id", "text")):
        key = _row_id(path, line_no, row["_id"])
        if wanted is not None and key not in wanted:
            continue
        content = value(line_no, row)
        if key in table:
            repeats.check(line_no, repr(key), table[key], content, partial(_first_line, path, key))
        else:
            table[key] = content
    repeats.warn()
    return table


def _first_line(path: Path, key: str) -> int:
    """The line of a BEIR jsonl file where the id ``key`` first appears (read again only to report a conflict)."""
    return next(line_no for line_no, row in _read_jsonl(path, ("_id",)) if _row_id(path, line_no, row["_id"]) == key)


def _grade(path: Path, line_no: int, field: str) -> int | None:
    """The integer grade of a qrels line, None if ``field`` is not a number (a header line)."""
    try:
        grade = float(field)
    except ValueError:
        return None
    if not math.isfinite(grade) or grade != int(grade):
        raise ValueError(f"{path}:{line_no}: the grade {field!r} is not a finite integer.")
    return int(grade)


def read_qrels(path: Path) -> Qrels:
    """Read a qrels TSV (query id, document id, integer grade), with or without a header line."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found.")
    qrels: Qrels = {}
    first_lines: dict[tuple[str, str], int] = {}
    repeats = _Repeats(path, "judgment")
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            if len(parts) == 4:  # TREC qrels: query, iteration, document, grade
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise ValueError(f"{path}:{line_no}: expected 3 tab-separated columns, got {len(parts)}.")
            query, document, field = parts
            grade = _grade(path, line_no, field)
            if grade is None:
                if line_no == 1:  # a header line such as "query-id corpus-id score"
                    continue
                raise ValueError(f"{path}:{line_no}: the grade {field!r} is not a number.")
            judged = qrels.setdefault(query, {})
            if document in judged:
                repeats.check(line_no, f"({query!r}, {document!r})", judged[document], grade,
                              partial(first_lines.__getitem__, (query, document)))
            else:
                judged[document] = grade
                first_lines[query, document] = line_no
    repeats.warn()
    return qrels


def read_queries(path: Path, wanted: Set[str] | None = None) -> dict[str, str]:
    """Query id -> text of a BEIR ``queries.jsonl`` (only the ids in ``wanted``, when given)."""
    return _read_table(path, "query id", lambda line_no, row: _text(path, line_no, row, "text", nullable=False),
                       wanted)


def read_corpus(path: Path, wanted: Set[str] | None = None) -> dict[str, dict[str, str]]:
    """Document id -> {"title", "text"} of a BEIR ``corpus.jsonl`` (only the ids in ``wanted``, when given)."""
    return _read_table(path, "document id", lambda line_no, row: {
        "title": _text(path, line_no, row, "title", nullable=True),
        "text": _text(path, line_no, row, "text", nullable=True)}, wanted)


def load_beir(folder: str | Path, split: str = "test", *, load_corpus: bool = True) -> BeirDataset:
    """Load a BEIR folder's corpus, queries and ``qrels/<split>.tsv``.

    Judgments for queries that are not in queries.jsonl are dropped with a warning; judged documents missing from
    the corpus are kept in the qrels (they count as relevant documents that cannot be retrieved).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Data folder {folder} does not exist.")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise FileNotFoundError(f"{qrels_path} not found; splits available in {folder}: {available or 'none'}.")
    queries = read_queries(folder / "queries.jsonl")
    corpus = read_corpus(folder / "corpus.jsonl") if load_corpus else {}
    qrels = read_qrels(qrels_path)
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        logger.warning("%d judged queries of %s are not in queries.jsonl; dropping them (e.g. %s)",
                       len(unknown), qrels_path, unknown[:3])
        qrels = {q: docs for q, docs in qrels.items() if q in queries}
    if not qrels:
        raise ValueError(f"{qrels_path} judges no query of {folder / 'queries.jsonl'}.")
    if load_corpus:
        missing = sum(1 for docs in qrels.values() for d in docs if d not in corpus)
        if missing:
            logger.warning("%d judged documents of %s are not in the corpus", missing, qrels_path)
    logger.info("Loaded %s: %d documents, %d queries, %d judged in split %r (%d judgments)", folder.name,
                len(corpus), len(queries), len(qrels), split, sum(len(d) for d in qrels.values()))
    return BeirDataset(folder.name, split, corpus, queries, qrels)



def select_queries(dataset: BeirDataset, max_queries: int | None) -> list[str]:
    """The judged queries of the split, the first ``max_queries`` of them (qrels file order) if given."""
    query_ids = dataset.judged_query_ids
    if max_queries is not None:
        if max_queries < 1:
            raise ValueError(f"--max-queries must be at least 1, got {max_queries}.")
        query_ids = query_ids[:max_queries]
    return query_ids


# --- runs ---


def ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """(document, score) by decreasing score, ties broken by decreasing document id: trec_eval's order."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def cut_run(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """Each query's top ``k`` documents, in trec_eval's order."""
    return {q: dict(ranked(docs)[:k]) for q, docs in run.items()}


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: Path, tag: str) -> None:
    """Write ``qid Q0 docid rank score tag`` lines, each query ranked in trec_eval's order (atomically)."""
    atomic_write_text(path, "".join(f"{qid} Q0 {doc_id} {rank} {score:.7g} {tag}\n" for qid, docs in run.items()
                                    for rank, (doc_id, score) in enumerate(ranked(docs), 1)))


def read_trec_run(path: str | Path) -> Run:
    """Read a TREC run file (``qid Q0 docid rank score tag``, whitespace-separated)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Run file {path} not found.")
    run: Run = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise ValueError(f"{path}:{line_no}: a TREC run line has 6 fields (qid Q0 docid rank score tag), "
                                 f"got {len(parts)}.")
            try:
                score = float(parts[4])
            except ValueError:
                raise ValueError(f"{path}:{line_no}: the score {parts[4]!r} is not a number.") from None
            run.setdefault(parts[0], {})[parts[2]] = score
    if not run:
        raise ValueError(f"Run file {path} is empty.")
    return run


# --- labelled pairs ---


@dataclass
class LabelledPairs:
    """(query, document, 0/1 label) rows; ``groups`` (one per row, e.g. the query id) keep a query on one side of
    a split; ``grades`` is each row's graded relevance, from which its label was thresholded."""

    queries: list[str]
    documents: list[str]
    labels: np.ndarray
    groups: list[str]
    grades: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.queries, self.documents))

    def take(self, index: np.ndarray) -> LabelledPairs:
        return LabelledPairs([self.queries[i] for i in index], [self.documents[i] for i in index],
                             self.labels[index], [self.groups[i] for i in index], self.grades[index])

    def digest(self) -> str:
        h = hashlib.sha256()
        for q, d, y in zip(self.queries, self.documents, self.labels):
            h.update(f"{len(q)}:{q}{len(d)}:{d}{int(y)}".encode())
        return h.hexdigest()

    def summary(self) -> dict:
        return {"pairs": len(self), "positives": int(self.labels.sum()), "queries": len(set(self.groups))}


def pairs_from_beir(dataset: BeirDataset, query_ids: Sequence[str], candidates: Mapping[str, Mapping[str, float]],
                    *, relevance_level: int = 1) -> LabelledPairs:
    """Positives: the split's documents graded >= ``relevance_level``; negatives: each query's ``candidates`` (a
    first stage's top documents) graded lower or not judged."""
    queries, documents, labels, groups, grades = [], [], [], [], []
    for qid in query_ids:
        judged = dataset.qrels[qid]
        positives = [d for d, grade in judged.items() if grade >= relevance_level and d in dataset.corpus]
        negatives = [d for d in candidates.get(qid, {}) if judged.get(d, 0) < relevance_level]
        for doc_id, label in [(d, 1.0) for d in positives] + [(d, 0.0) for d in negatives]:
            queries.append(dataset.queries[qid])
            documents.append(dataset.document(doc_id))
            labels.append(label)
            groups.append(qid)
            grades.append(float(judged.get(doc_id, 0)))
    return LabelledPairs(queries, documents, np.asarray(labels, dtype=np.float64), groups,
                         np.asarray(grades, dtype=np.float64))


def pairs_from_jsonl(path: Path, *, label_threshold: float = 1.0) -> LabelledPairs:
    """Rows {"query", "document", "label"} (label >= ``label_threshold`` is relevant) or {"query", "positive",
    "negatives"} (one relevant document, graded ``max(1, label_threshold)``, and irrelevant ones, graded 0)."""
    queries, documents, grades = [], [], []
    for line_no, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("query"), str):
            raise ValueError(f"{path}:{line_no}: each row needs a string 'query'.")
        if "document" in row and "label" in row:
            label = row["label"]
            if not isinstance(row["document"], str):
                raise ValueError(f"{path}:{line_no}: 'document' must be a string, got {row['document']!r:.40}.")
            if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
                raise ValueError(f"{path}:{line_no}: 'label' must be a finite number, got {label!r:.40}.")
            rows = [(row["document"], float(label))]
        elif "positive" in row and isinstance(row.get("negatives"), list):
            rows = [(row["positive"], max(1.0, float(label_threshold)))] + [(n, 0.0) for n in row["negatives"]]
            if not all(isinstance(d, str) for d, _ in rows):
                raise ValueError(f"{path}:{line_no}: 'positive' and 'negatives' must be strings.")
        else:
            raise ValueError(f"{path}:{line_no}: expected {{query, document, label}} or "
                             f"{{query, positive, negatives}}, got keys {sorted(row)}.")
        for document, grade in rows:
            queries.append(row["query"])
            documents.append(document)
            grades.append(grade)
    if not grades:
        raise ValueError(f"{path} has no labelled pairs.")
    graded = np.asarray(grades, dtype=np.float64)
    labels = (graded >= label_threshold).astype(np.float64)
    return LabelledPairs(queries, documents, labels, list(queries), graded)


def holdout_mask(groups: Sequence[str], holdout_fraction: float, seed: int) -> np.ndarray:
    """True for the rows held out: those of a seeded share of the groups (queries), so no query is on both sides."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"--holdout-fraction must be between 0 and 1, got {holdout_fraction}.")
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ValueError("Calibration needs pairs of at least two queries (one to fit, one to check).")
    count = min(len(unique) - 1, max(1, round(holdout_fraction * len(unique))))
    held = set(np.random.default_rng(seed).permutation(unique)[:count].tolist())
    return np.array([g in held for g in groups])
