"""Evaluate a reranker on a BEIR data set: rerank a first stage's top k and report trec_eval metrics.

The first stage (BM25 by default, or your own TREC run file) retrieves the top ``--top-k`` documents of every judged
query of the split; the model rescores those (query, title + text) pairs and the documents are re-sorted by its
logit. NDCG@10, MRR@10, Recall@10 and Recall@100 of both runs come from pytrec_eval (trec_eval's C code), with the
"oracle" ceiling (the candidates sorted by their judgments: the best the first stage allows).

Usage:
    zerank evaluate --data ../shared/data/ir/scifact --model build/zerank-1 --split test \\
        --top-k 100 --output-dir runs/scifact
    # quick look: first 20 queries, your own first-stage run, another CrossEncoder to compare
    zerank evaluate --data DATA --model cross-encoder/ms-marco-MiniLM-L6-v2 --first-stage bm25.trec \\
        --max-queries 20 --output-dir runs/minilm

Outputs in --output-dir (each written atomically): results.json (metrics, throughput, wall time, settings,
versions), results.md (a table for the model card: ``package.render_model_card(..., evaluation=<results.md>)``),
first_stage.trec and reranked.trec.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from sentence_transformers import CrossEncoder
from tqdm.auto import tqdm

from zerank.data.readers import BeirDataset, Qrels, Run, load_beir, select_queries, write_trec_run
from zerank.evaluation.arguments import EvaluateArguments
from zerank.evaluation.first_stage import FirstStage
from zerank.evaluation.metrics import DEFAULT_METRICS, evaluate_run
from zerank.model.loading import is_zerank, load_from_arguments
from zerank.model.long_documents import ChunkSettings, score_documents
from zerank.model.scoring import batch_token_budget, score_pairs
from zerank.utils.arguments import FirstStageArguments, ModelArguments, ScoringArguments
from zerank.utils.long_document_arguments import ChunkArguments
from zerank.utils.system import atomic_write_json, atomic_write_text, library_versions

logger = logging.getLogger(__name__)

# Scores (query id, document id) pairs; returns one float per pair, higher = more relevant.
Scorer = Callable[[Sequence[tuple[str, str]]], np.ndarray]


class Documents(Protocol):
    """What a scorer reads: query texts by id and document texts by id (a ``BeirDataset`` or the like)."""

    queries: Mapping[str, str]

    def document(self, doc_id: str) -> str: ...


def cross_encoder_scorer(model: CrossEncoder, dataset: Documents, *, max_batch_tokens: int | None = None,
                         batch_size: int | None = None, instruction: str | None = None,
                         chunking: ChunkSettings | None = None) -> Scorer:
    """A scorer that reads the query and :func:`zerank.data.readers.document_text` and ranks by the model's logit (no
    sigmoid, so scores never tie by saturating at 1).

    ``max_batch_tokens``, ``batch_size`` and ``instruction`` are those of :func:`zerank.model.scoring.score_pairs`.
    With ``chunking``, a document longer than its window budget scores as the aggregation of its windows
    (:func:`zerank.model.long_documents.score_documents`); the scorer's ``windows`` dict counts the documents chunked
    and the windows scored.
    """
    counts = {"documents_chunked": 0, "windows_scored": 0}

    def score(ids: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = [(dataset.queries[q], dataset.document(d)) for q, d in ids]
        if chunking is None:
            return score_pairs(model, pairs, output="logit", max_batch_tokens=max_batch_tokens,
                               batch_size=batch_size, instruction=instruction)
        results = score_documents(model, pairs, chunking, output="logit", max_batch_tokens=max_batch_tokens,
                                  batch_size=batch_size, instruction=instruction)
        counts["documents_chunked"] += sum(r.windows > 1 for r in results)
        counts["windows_scored"] += sum(r.windows for r in results)
        return np.array([r.score for r in results], dtype=np.float32)

    score.windows = counts

    return score


def oracle_scorer(qrels: Qrels) -> Scorer:
    """Scores each pair by its judgment (unjudged = 0): the best order of any candidate set."""
    return lambda ids: np.array([qrels.get(q, {}).get(d, 0) for q, d in ids], dtype=np.float32)


def rerank(candidates: Mapping[str, Mapping[str, float]], scorer: Scorer, *, pairs_per_step: int = 1024,
           show_progress: bool = True) -> tuple[Run, int, float]:
    """Rescore every query's candidates with ``scorer``.

    Queries are scored a few at a time (about ``pairs_per_step`` pairs), so the progress bar moves by query while
    each step still sorts many pairs by length. Returns (reranked run, pairs scored, seconds spent scoring).
    """
    reranked: Run = {q: {} for q in candidates}
    query_ids = list(candidates)
    total_pairs, seconds = 0, 0.0
    with tqdm(total=len(query_ids), desc="Reranking", unit="query", disable=not show_progress) as bar:
        start = 0
        while start < len(query_ids):
            step, n = [], 0
            while start < len(query_ids) and (not step or n + len(candidates[query_ids[start]]) <= pairs_per_step):
                step.append(query_ids[start])
                n += len(candidates[query_ids[start]])
                start += 1
            ids = [(q, d) for q in step for d in candidates[q]]
            began = time.perf_counter()
            scores = scorer(ids) if ids else np.zeros(0, dtype=np.float32)
            seconds += time.perf_counter() - began
            for (q, d), s in zip(ids, scores, strict=True):
                reranked[q][d] = float(s)
            total_pairs += len(ids)
            bar.update(len(step))
    return reranked, total_pairs, seconds


def evaluate_reranker(dataset: BeirDataset, query_ids: Sequence[str], first_stage: FirstStage, scorer: Scorer, *,
                      top_k: int = 100, relevance_level: int = 1, metrics: Sequence[str] = DEFAULT_METRICS,
                      show_progress: bool = True) -> tuple[dict, Run, Run]:
    """First stage, reranking and metrics. Returns (results, first-stage run, reranked run)."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}.")
    qrels = dataset.subset(query_ids).qrels
    began = time.perf_counter()
    candidates = first_stage.retrieve(dataset, query_ids, top_k)
    first_stage_s = time.perf_counter() - began
    empty = sum(1 for q in query_ids if not candidates.get(q))
    if empty:
        logger.warning("%d of %d queries got no candidate from the first stage (they score 0)", empty, len(query_ids))
    logger.info("First stage (%s): %d candidates for %d queries in %.1fs", first_stage.describe(),
                sum(len(c) for c in candidates.values()), len(query_ids), first_stage_s)

    reranked, n_pairs, rerank_s = rerank(candidates, scorer, show_progress=show_progress)
    oracle, _, _ = rerank(candidates, oracle_scorer(qrels), show_progress=False)
    results = {
        "dataset": dataset.name,
        "split": dataset.split,
        "queries": len(query_ids),
        "pairs": n_pairs,
        "top_k": top_k,
        "first_stage_name": first_stage.describe(),
        "first_stage": evaluate_run(qrels, candidates, metrics, relevance_level)[0],
        "reranked": evaluate_run(qrels, reranked, metrics, relevance_level)[0],
        "oracle": evaluate_run(qrels, oracle, metrics, relevance_level)[0],
        "pairs_per_s": n_pairs / rerank_s if rerank_s > 0 else None,
        "wall_time_s": {"first_stage": first_stage_s, "rerank": rerank_s},
        "relevance_level": relevance_level,
    }
    return results, candidates, reranked


def _label(metric: str) -> str:
    base, _, k = metric.partition("@")
    return {"ndcg": "NDCG", "mrr": "MRR", "recall": "Recall", "precision": "P", "map": "MAP"}[base] + f"@{k}"


def evaluation_markdown(results: Sequence[Mapping], model_name: str = "zerank") -> str:
    """A Markdown table of one or more ``results.json`` (first stage, then reranked), for the model card."""
    if not results:
        raise ValueError("No results to tabulate.")
    metrics = list(results[0]["reranked"])
    lines = [
        "| Dataset | Queries | System | " + " | ".join(_label(m) for m in metrics) + " |",
        "|---|---:|---|" + "---:|" * len(metrics),
    ]
    for r in results:
        systems = (("first_stage", r["first_stage_name"]), ("reranked", f"{model_name} on its top {r['top_k']}"))
        for key, system in systems:
            values = " | ".join(f"{r[key][m]:.4f}" for m in metrics)
            lines.append(f"| {r['dataset']} ({r['split']}) | {r['queries']} | {system} | {values} |")
    lines.append("")
    lines.append(
        "Judged queries of each split; trec_eval metrics (pytrec_eval; NDCG with linear gains, "
        f"relevance level {results[0]['relevance_level']} for MRR and recall); documents are title + text."
    )
    return "\n".join(lines) + "\n"


def main(args: EvaluateArguments, model_args: ModelArguments, scoring_args: ScoringArguments,
         first_stage_args: FirstStageArguments, chunk_args: ChunkArguments | None = None) -> dict:
    """``zerank evaluate``: rerank the first stage's candidates, write the runs and the results; returns them.
    With ``--long-documents chunk`` a long document scores as its windows' aggregation (``chunk_args``)."""
    torch.manual_seed(args.seed)
    began = time.perf_counter()
    first_stage = FirstStage.from_arguments(first_stage_args)
    dataset = load_beir(args.data, args.split)
    query_ids = select_queries(dataset, args.max_queries)
    model = load_from_arguments(model_args)
    if scoring_args.instruction and not is_zerank(model):
        raise ValueError("--instruction works with zerank models only (it is rendered by zerank's chat template).")
    chunking = ChunkSettings.from_arguments(chunk_args) if args.long_documents == "chunk" else None
    scorer = cross_encoder_scorer(model, dataset, max_batch_tokens=model_args.max_batch_tokens,
                                  batch_size=scoring_args.batch_size, instruction=scoring_args.instruction,
                                  chunking=chunking)
    logger.info("Reranking the top %d of %d queries of %s (%s) with %s", args.top_k, len(query_ids), dataset.name,
                args.split, model_args.model)
    results, candidates, reranked = evaluate_reranker(
        dataset, query_ids, first_stage, scorer, top_k=args.top_k, relevance_level=args.relevance_level,
        show_progress=args.progress,
    )
    results["wall_time_s"]["total"] = time.perf_counter() - began
    results["model"] = model_args.model
    results["settings"] = {
        "first_stage": first_stage.settings(),
        "max_batch_tokens": model_args.max_batch_tokens or batch_token_budget(model),
        "batch_size": scoring_args.batch_size,
        "max_length": model.max_seq_length,
        "instruction": scoring_args.instruction,
        "device": str(model.device),
        "dtype": str(next(model.model.parameters()).dtype).removeprefix("torch."),
        "seed": args.seed,
        "max_queries": args.max_queries,
        "long_documents": args.long_documents,
    }
    if chunking is not None:
        results["settings"]["chunking"] = chunking.describe()
        results["long_documents"] = dict(scorer.windows)
    results["versions"] = library_versions()

    out = args.output_dir
    model_name = Path(model_args.model.rstrip("/")).name
    write_trec_run(candidates, out / "first_stage.trec", "first_stage")
    write_trec_run(reranked, out / "reranked.trec", model_name or "reranker")
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", evaluation_markdown([results], model_name))
    summary = {k: results[k] for k in ("first_stage", "reranked", "oracle")}
    logger.info("%s (%s), %d queries, %d pairs at %.1f pairs/s:\n%s", dataset.name, args.split, len(query_ids),
                results["pairs"], results["pairs_per_s"] or 0.0, json.dumps(summary, indent=2))
    logger.info("Wrote %s", out)
    return results
