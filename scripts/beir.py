"""BEIR-layout data sets, the BM25 first stage, TREC run files and trec_eval metrics, shared by the scripts.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv`` (query id, document id, graded relevance; with or without a header line). Only the queries
judged in the split are evaluated. A document is shown to a reranker as :func:`document_text` (title and text).

Metrics come from ``pytrec_eval`` (trec_eval's own C code): ``ndcg@k`` is trec_eval's ``ndcg_cut_k`` (linear
gains), ``recall@k`` is ``recall_k``, ``mrr@k`` is ``recip_rank`` of the run cut to its top k, all averaged over
the judged queries (a judged query with no retrieved document counts 0, as ``trec_eval -c`` does).

Usage (BM25 figures of a data set):
    python scripts/beir.py --data ../shared/data/ir/scifact --split test
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger("zerank.beir")

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")
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


def _read_jsonl(path: Path, required: Sequence[str]) -> Iterable[dict]:
    for line_no, row in iter_jsonl(path, ": a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/"):
        missing = [key for key in required if key not in row]
        if missing:
            raise ValueError(f"{path}:{line_no}: missing field(s) {missing}; BEIR rows need {list(required)}.")
        yield row


def read_qrels(path: Path) -> Qrels:
    """Read a qrels TSV (query id, document id, integer grade), with or without a header line."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found.")
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            if len(parts) == 4:  # TREC qrels: query, iteration, document, grade
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise ValueError(f"{path}:{line_no}: expected 3 tab-separated columns, got {len(parts)}.")
            try:
                grade = int(float(parts[2]))
            except ValueError:
                if line_no == 1:  # a header line such as "query-id corpus-id score"
                    continue
                raise ValueError(f"{path}:{line_no}: the grade {parts[2]!r} is not a number.") from None
            qrels.setdefault(parts[0], {})[parts[1]] = grade
    return qrels


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
    queries = {str(row["_id"]): str(row["text"]) for row in _read_jsonl(folder / "queries.jsonl", ("_id", "text"))}
    corpus: dict[str, dict[str, str]] = {}
    if load_corpus:
        for row in _read_jsonl(folder / "corpus.jsonl", ("_id", "text")):
            corpus[str(row["_id"])] = {"title": row.get("title") or "", "text": row["text"] or ""}
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


# ---------------------------------------------------------------------------------------------------------------
# BM25 first stage
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BM25Settings:
    """BM25 as Elasticsearch runs it by default (BEIR's baseline): Lucene's formula, k1=1.2, b=0.75, Lucene's
    English stopwords and an English stemmer over title + text."""

    k1: float = 1.2
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"
    stemmer: str = "english"  # a PyStemmer algorithm, or "none"

    def make_stemmer(self):
        if self.stemmer in ("none", "", None):
            return None
        try:
            import Stemmer
        except ImportError:
            raise ImportError(
                f"BM25 with stemmer {self.stemmer!r} needs PyStemmer: pip install PyStemmer "
                "(or pass --bm25-stemmer none)."
            ) from None
        if self.stemmer not in Stemmer.algorithms():
            raise ValueError(f"Unknown stemmer {self.stemmer!r}; PyStemmer offers {Stemmer.algorithms()}.")
        return Stemmer.Stemmer(self.stemmer)


def bm25_search(dataset: BeirDataset, query_ids: Sequence[str], top_k: int,
                settings: BM25Settings | None = None, show_progress: bool = False) -> Run:
    """Retrieve the top ``top_k`` documents of each query with bm25s over :func:`document_text`.

    Only documents that share a term with the query are returned (as a search engine does), so a query may get
    fewer than ``top_k``.
    """
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    settings = settings or BM25Settings()
    stemmer = settings.make_stemmer()
    doc_ids = list(dataset.corpus)
    if not doc_ids:
        raise ValueError(f"The corpus of {dataset.name} is empty.")
    texts = [dataset.document(d) for d in doc_ids]
    retriever = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
    corpus_tokens = bm25s.tokenize(texts, stopwords=settings.stopwords, stemmer=stemmer, show_progress=show_progress)
    retriever.index(corpus_tokens, show_progress=show_progress)
    query_tokens = bm25s.tokenize([dataset.queries[q] for q in query_ids], stopwords=settings.stopwords,
                                  stemmer=stemmer, return_ids=False, show_progress=False)
    k = min(top_k, len(doc_ids))
    run: Run = {}
    for qid, tokens in zip(query_ids, tqdm(query_tokens, desc="BM25", unit="query", disable=not show_progress)):
        token_ids = retriever.get_tokens_ids(tokens)  # terms missing from the corpus match nothing
        if not token_ids:
            run[qid] = {}
            continue
        scores = retriever.get_scores(token_ids)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        run[qid] = {doc_ids[i]: float(scores[i]) for i in top if scores[i] > 0}
    return run


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------


def ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """(document, score) by decreasing score, ties broken by decreasing document id: trec_eval's order."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def cut_run(run: Mapping[str, Mapping[str, float]], k: int) -> Run:
    """Each query's top ``k`` documents, in trec_eval's order."""
    return {q: dict(ranked(docs)[:k]) for q, docs in run.items()}


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: Path, tag: str) -> None:
    """Write ``qid Q0 docid rank score tag`` lines, each query ranked in trec_eval's order."""
    with Path(path).open("w", encoding="utf-8") as f:
        for qid, docs in run.items():
            for rank, (doc_id, score) in enumerate(ranked(docs), 1):
                f.write(f"{qid} Q0 {doc_id} {rank} {score:.7g} {tag}\n")


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


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def _parse_metric(name: str) -> tuple[str, int]:
    base, _, k = name.partition("@")
    if base not in ("ndcg", "mrr", "recall", "precision", "map") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"Unknown metric {name!r}: use ndcg@k, mrr@k, recall@k, precision@k or map@k.")
    return base, int(k)


def evaluate_run(qrels: Qrels, run: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = DEFAULT_METRICS,
                 relevance_level: int = 1) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """trec_eval metrics (through pytrec_eval) of ``run`` over every query of ``qrels``.

    Returns (mean over the queries of ``qrels``, per-query values). Queries of the run that are not in ``qrels``
    are ignored; queries of ``qrels`` missing from the run score 0.
    """
    import pytrec_eval

    parsed = {name: _parse_metric(name) for name in metrics}
    measures: dict[str, str] = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "map": "map_cut"}
    per_query = {q: dict.fromkeys(metrics, 0.0) for q in qrels}
    judged_run = {q: {d: float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels and docs}

    cutoffs: dict[str, set[int]] = {}
    for base, k in parsed.values():
        if base != "mrr":
            cutoffs.setdefault(measures[base], set()).add(k)
    if cutoffs and judged_run:
        evaluator = pytrec_eval.RelevanceEvaluator(
            qrels, {f"{m}.{','.join(map(str, sorted(ks)))}" for m, ks in cutoffs.items()},
            relevance_level=relevance_level,
        )
        for qid, values in evaluator.evaluate(judged_run).items():
            for name, (base, k) in parsed.items():
                if base != "mrr":
                    per_query[qid][name] = values[f"{measures[base]}_{k}"]
    for name, (base, k) in parsed.items():
        if base == "mrr" and judged_run:
            evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=relevance_level)
            for qid, values in evaluator.evaluate(cut_run(judged_run, k)).items():
                per_query[qid][name] = values["recip_rank"]
    mean = {name: float(np.mean([v[name] for v in per_query.values()])) if per_query else 0.0 for name in metrics}
    return mean, per_query


# ---------------------------------------------------------------------------------------------------------------
# First stage helper used by evaluate.py, calibrate.py and finetune.py
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FirstStage:
    """Where candidates come from: ``"bm25"`` or a TREC run file."""

    source: str = "bm25"
    bm25: BM25Settings = field(default_factory=BM25Settings)

    def describe(self) -> str:
        if self.source == "bm25":
            stem = "no stemmer" if self.bm25.stemmer in ("none", "") else f"{self.bm25.stemmer} stemmer"
            return f"BM25 (bm25s, k1={self.bm25.k1}, b={self.bm25.b}, {stem})"
        return f"run file {Path(self.source).name}"

    def settings(self) -> dict:
        return {"source": self.source, **({"bm25": asdict(self.bm25)} if self.source == "bm25" else {})}

    def retrieve(self, dataset: BeirDataset, query_ids: Sequence[str], top_k: int) -> Run:
        """Each query's top ``top_k`` candidates (documents missing from the corpus are dropped from a run file)."""
        if self.source == "bm25":
            return bm25_search(dataset, query_ids, top_k, self.bm25)
        run = read_trec_run(self.source)
        wanted = set(query_ids)
        missing_docs = {d for q, docs in run.items() if q in wanted for d in docs if d not in dataset.corpus}
        if missing_docs:
            logger.warning("%d documents of run %s are not in the corpus; dropping them", len(missing_docs),
                           self.source)
        if not wanted & set(run):
            raise ValueError(f"Run file {self.source} has none of the {len(wanted)} judged queries of the split.")
        return cut_run({q: {d: s for d, s in run.get(q, {}).items() if d in dataset.corpus} for q in query_ids},
                       top_k)


def add_first_stage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--first-stage", default="bm25",
                        help="'bm25' (bm25s over title + text) or a TREC run file (qid Q0 docid rank score tag).")
    parser.add_argument("--bm25-k1", type=float, default=1.2, help="BM25 k1 (Elasticsearch's default: 1.2).")
    parser.add_argument("--bm25-b", type=float, default=0.75, help="BM25 b (Elasticsearch's default: 0.75).")
    parser.add_argument("--bm25-stemmer", default="english",
                        help="PyStemmer algorithm for BM25 ('english', 'porter', ...) or 'none'.")


def first_stage_from_args(ns: argparse.Namespace) -> FirstStage:
    if ns.first_stage != "bm25" and not Path(ns.first_stage).is_file():
        raise FileNotFoundError(f"--first-stage must be 'bm25' or a TREC run file; {ns.first_stage} does not exist.")
    return FirstStage(ns.first_stage, BM25Settings(k1=ns.bm25_k1, b=ns.bm25_b, stemmer=ns.bm25_stemmer))


def select_queries(dataset: BeirDataset, max_queries: int | None) -> list[str]:
    """The judged queries of the split, the first ``max_queries`` of them (qrels file order) if given."""
    query_ids = dataset.judged_query_ids
    if max_queries is not None:
        if max_queries < 1:
            raise ValueError(f"--max-queries must be at least 1, got {max_queries}.")
        query_ids = query_ids[:max_queries]
    return query_ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder.")
    parser.add_argument("--split", default="test", help="qrels/<split>.tsv to evaluate.")
    parser.add_argument("--top-k", type=int, default=100, help="Documents retrieved per query.")
    parser.add_argument("--max-queries", type=int, help="Evaluate only the first N judged queries.")
    parser.add_argument("--relevance-level", type=int, default=1, help="Smallest grade counted as relevant.")
    parser.add_argument("--output", type=Path, help="Write the run in TREC format here.")
    add_first_stage_args(parser)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dataset = load_beir(ns.data, ns.split)
    query_ids = select_queries(dataset, ns.max_queries)
    first_stage = first_stage_from_args(ns)
    start = time.perf_counter()
    run = first_stage.retrieve(dataset, query_ids, ns.top_k)
    elapsed = time.perf_counter() - start
    metrics, _ = evaluate_run(dataset.subset(query_ids).qrels, run, relevance_level=ns.relevance_level)
    if ns.output:
        write_trec_run(run, ns.output, "bm25")
    print(json.dumps({"dataset": dataset.name, "split": ns.split, "queries": len(query_ids),
                      "first_stage": first_stage.describe(), "metrics": metrics, "seconds": round(elapsed, 2)},
                     indent=2))


if __name__ == "__main__":
    main()
