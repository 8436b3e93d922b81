"""The first stage: BM25 (bm25s, Elasticsearch's defaults) over a BEIR corpus, or a TREC run file.

``zerank bm25 --data DIR`` prints a data set's BM25 figures.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bm25s
import numpy as np
from tqdm.auto import tqdm

from zerank.evaluation.arguments import Bm25Arguments
from zerank.utils.arguments import FirstStageArguments
from zerank.data.readers import BeirDataset, Run, cut_run, load_beir, read_trec_run, select_queries, write_trec_run
from zerank.evaluation.metrics import evaluate_run

logger = logging.getLogger(__name__)


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
        try:  # deferred: PyStemmer is optional (--bm25-stemmer none needs none)
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

    @classmethod
    def from_arguments(cls, args: FirstStageArguments) -> FirstStage:
        return cls(args.first_stage, BM25Settings(k1=args.bm25_k1, b=args.bm25_b, stemmer=args.bm25_stemmer))


def main(args: Bm25Arguments, first_stage_args: FirstStageArguments) -> dict:
    dataset = load_beir(args.data, args.split)
    query_ids = select_queries(dataset, args.max_queries)
    first_stage = FirstStage.from_arguments(first_stage_args)
    start = time.perf_counter()
    run = first_stage.retrieve(dataset, query_ids, args.top_k)
    elapsed = time.perf_counter() - start
    metrics, _ = evaluate_run(dataset.subset(query_ids).qrels, run, relevance_level=args.relevance_level)
    if args.output:
        write_trec_run(run, args.output, "bm25")
    report = {"dataset": dataset.name, "split": args.split, "queries": len(query_ids),
              "first_stage": first_stage.describe(), "metrics": metrics, "seconds": round(elapsed, 2)}
    print(json.dumps(report, indent=2))
    return report
