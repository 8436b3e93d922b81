"""The zELO commands: ``zerank pairs`` -> your judges or ``zerank judge`` -> ``zerank elo`` -> ``zerank finetune
--loss elo-mse``. The math and the file formats are in :mod:`zerank.training.zelo`.

Usage:
    zerank pairs --data ../shared/data/ir/scifact --split train --top-k 50 --cycles 4 --out runs/zelo/pairs
    zerank judge --pairs runs/zelo/pairs/pairs.jsonl --model build/zerank-1 --out runs/zelo/judged
    zerank elo --judgments runs/zelo/judged/judgments.jsonl --out runs/zelo/elo
    zerank finetune --model build/zerank-1 --data ../shared/data/ir/scifact --loss elo-mse \\
        --elo runs/zelo/elo/elo.jsonl --output-dir runs/ft-zelo

Each command writes into a hidden staging folder beside ``--out`` and renames it into place when done.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import expit

from zerank.training.arguments import EloArguments, JudgeArguments, PairsArguments
from zerank.utils.arguments import FirstStageArguments, ModelArguments, ScoringArguments
from zerank.data.readers import BeirDataset, Run, iter_jsonl, load_beir, ranked, select_queries, write_trec_run
from zerank.evaluation.first_stage import FirstStage
from zerank.utils.system import atomic_write_json, atomic_write_text, library_versions, staged_output_dir
from zerank.training.zelo import Judgment, fit_elo, judgment_row, random_cycles, read_judgments

logger = logging.getLogger(__name__)

PAIR_FIELDS = ("query_id", "doc_a", "doc_b", "query", "document_a", "document_b")


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# ---------------------------------------------------------------------------------------------------------------
# zerank pairs
# ---------------------------------------------------------------------------------------------------------------


def sample_pairs(dataset: BeirDataset, candidates: Run, cycles: int, query_cycles: int,
                 rng: np.random.Generator) -> list[dict]:
    """pairs.jsonl rows: ``cycles`` random cycles over each query's candidates (queries with fewer than two get
    none), then ``query_cycles`` random cycles over those queries, each edge pairing a random candidate of each."""
    rows = []
    ranked_docs = {q: [d for d, _ in ranked(docs)] for q, docs in candidates.items() if len(docs) >= 2}
    for qid, docs in ranked_docs.items():
        for a, b in random_cycles(len(docs), cycles, rng):
            rows.append({"query_id": qid, "doc_a": docs[a], "doc_b": docs[b], "query": dataset.queries[qid],
                         "document_a": dataset.document(docs[a]), "document_b": dataset.document(docs[b])})
    query_ids = list(ranked_docs)
    if query_cycles and len(query_ids) >= 2:
        for a, b in random_cycles(len(query_ids), query_cycles, rng):
            qa, qb = query_ids[a], query_ids[b]
            da, db = rng.choice(ranked_docs[qa]), rng.choice(ranked_docs[qb])
            rows.append({"query_id": qa, "doc_a": str(da), "query_id_b": qb, "doc_b": str(db),
                         "query": dataset.queries[qa], "document_a": dataset.document(da),
                         "query_b": dataset.queries[qb], "document_b": dataset.document(db)})
    return rows


def pairs_main(args: PairsArguments, first_stage_args: FirstStageArguments) -> dict:
    """``zerank pairs``: the first stage's top ``--top-k`` of every query of the split, and the pairs to judge."""
    began = time.perf_counter()
    dataset = load_beir(args.data, args.split)
    query_ids = select_queries(dataset, args.max_queries)
    first_stage = FirstStage.from_arguments(first_stage_args)
    candidates = first_stage.retrieve(dataset, query_ids, args.top_k)
    rows = sample_pairs(dataset, candidates, args.cycles, args.query_cycles, np.random.default_rng(args.seed))
    skipped = [q for q in query_ids if len(candidates.get(q, {})) < 2]
    if skipped:
        logger.warning("%d queries have fewer than two candidates: no pairs (e.g. %s)", len(skipped), skipped[:3])
    cross = sum(1 for row in rows if "query_id_b" in row)
    sizes = [len(candidates[q]) for q in query_ids if q not in skipped]
    report = {
        "data": str(args.data), "split": args.split, "first_stage": first_stage.describe(), "top_k": args.top_k,
        "cycles": args.cycles, "query_cycles": args.query_cycles, "seed": args.seed,
        "queries": len(query_ids) - len(skipped), "queries_without_pairs": len(skipped),
        "candidates": int(sum(sizes)), "pairs": len(rows), "within_query_pairs": len(rows) - cross,
        "cross_query_pairs": cross,
        "pairs_per_query": (len(rows) - cross) / max(1, len(sizes)),
        "all_pairs_per_query": float(np.mean([n * (n - 1) / 2 for n in sizes])) if sizes else 0.0,
        "wall_time_s": time.perf_counter() - began, "versions": library_versions(),
    }
    with staged_output_dir(args.out, args.overwrite) as staging:
        atomic_write_text(staging / "pairs.jsonl", _jsonl(rows))
        write_trec_run({q: candidates[q] for q in query_ids if q in candidates}, staging / "candidates.trec",
                       "first_stage")
        atomic_write_json(staging / "report.json", report)
    logger.info("%d pairs for %d queries (%d within queries: %.1f per query instead of %.1f for all pairs; %d "
                "across queries); wrote %s", len(rows), report["queries"], len(rows) - cross,
                report["pairs_per_query"], report["all_pairs_per_query"], cross, args.out)
    return report


# ---------------------------------------------------------------------------------------------------------------
# zerank judge
# ---------------------------------------------------------------------------------------------------------------


def read_pairs(path: Path) -> list[dict]:
    """pairs.jsonl rows, validated (the fields zerank pairs writes); errors name ``path:line``."""
    rows = []
    for line_no, row in iter_jsonl(path):
        cross = isinstance(row, dict) and "query_id_b" in row
        needed = PAIR_FIELDS + (("query_id_b", "query_b") if cross else ())
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in needed):
            raise ValueError(f"{path}:{line_no}: a pair needs string fields {list(needed)}.")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no pair.")
    return rows


def pointwise_judgments(rows: Sequence[dict], logits: dict[tuple[str, str], float]) -> list[Judgment]:
    """Judgments from pointwise logits of every (query id, document id): P(a beats b) = sigmoid(logit_a - logit_b),
    Bradley-Terry with the model's calibrated logit as the rating (logits are absolute, so this holds across
    queries as well)."""
    judgments = []
    for row in rows:
        qb = row.get("query_id_b", row["query_id"])
        delta = logits[row["query_id"], row["doc_a"]] - logits[qb, row["doc_b"]]
        judgments.append(Judgment(row["query_id"], row["doc_a"], row["doc_b"], float(expit(delta)), qb))
    return judgments


def judge_main(args: JudgeArguments, model_args: ModelArguments, scoring_args: ScoringArguments) -> dict:
    """``zerank judge``: score every (query, document) of the pairs once with a zerank model, write judgments."""
    import torch  # deferred: zerank pairs and zerank elo need no torch

    from zerank.model.loading import load_from_arguments
    from zerank.model.scoring import score_pairs

    torch.manual_seed(args.seed)
    began = time.perf_counter()
    rows = read_pairs(args.pairs)
    texts: dict[tuple[str, str], tuple[str, str]] = {}
    for row in rows:
        texts[row["query_id"], row["doc_a"]] = (row["query"], row["document_a"])
        if "query_id_b" in row:
            texts[row["query_id_b"], row["doc_b"]] = (row["query_b"], row["document_b"])
        else:
            texts[row["query_id"], row["doc_b"]] = (row["query"], row["document_b"])
    model = load_from_arguments(model_args)
    keys = list(texts)
    scoring_began = time.perf_counter()
    values = score_pairs(model, [texts[k] for k in keys], output="logit", max_batch_tokens=model_args.max_batch_tokens,
                         batch_size=scoring_args.batch_size, instruction=scoring_args.instruction,
                         show_progress_bar=True)
    scoring_s = time.perf_counter() - scoring_began
    judgments = pointwise_judgments(rows, dict(zip(keys, values.astype(float).tolist())))
    report = {"pairs": str(args.pairs), "model": model_args.model, "judgments": len(judgments),
              "documents_scored": len(keys), "scoring_s": scoring_s,
              "documents_per_s": len(keys) / scoring_s if scoring_s > 0 else None,
              "judge": "pointwise: sigmoid(logit_a - logit_b) of the model's calibrated logits",
              "wall_time_s": time.perf_counter() - began, "versions": library_versions()}
    with staged_output_dir(args.out, args.overwrite) as staging:
        atomic_write_text(staging / "judgments.jsonl", _jsonl([judgment_row(j) for j in judgments]))
        atomic_write_json(staging / "report.json", report)
    logger.info("%d judgments from %d scored documents (%.1f documents/s); wrote %s", len(judgments), len(keys),
                report["documents_per_s"] or 0.0, args.out)
    return report


# ---------------------------------------------------------------------------------------------------------------
# zerank elo
# ---------------------------------------------------------------------------------------------------------------


def elo_main(args: EloArguments) -> dict:
    """``zerank elo``: per-query fits, the cross-query normalisation, elo.jsonl and the fit report."""
    began = time.perf_counter()
    judgments = read_judgments(args.judgments)
    scores = fit_elo(judgments, link=args.link, prior_sd=args.prior_sd, progress=True)
    rows = list(scores.rows())
    queries = {qid: {**fit.report(), "bias": scores.bias[qid], "bias_stderr": scores.bias_stderr[qid],
                     "anchored": qid in scores.anchored} for qid, fit in scores.queries.items()}
    disconnected = sorted(q for q, r in queries.items() if r["components"] > 1)
    not_converged = sorted(q for q, r in queries.items() if not r["converged"])
    unanchored = sorted(set(queries) - scores.anchored)
    if disconnected:
        logger.warning("%d queries' comparison graphs are disconnected (each part is centred on its own; e.g. %s)",
                       len(disconnected), disconnected[:3])
    if not_converged or (scores.bias_fit is not None and not scores.bias_fit.converged):
        logger.warning("The fit did not converge for %d queries (e.g. %s)", len(not_converged), not_converged[:3])
    if unanchored:
        logger.warning("%d of %d queries have no cross-query judgment: their Elo scores are centred at 0 and "
                       "comparable within the query only", len(unanchored), len(queries))
    stderr = np.array([row["stderr"] for row in rows])
    report = {
        "judgments": str(args.judgments), "link": args.link, "prior_sd": args.prior_sd,
        "units": "natural log-odds: P(a beats b) = F(elo_a - elo_b); x 400 / ln 10 for chess Elo points",
        "normalisation": "elo = per-query rating (prior-centred at 0) + per-query bias fitted from cross-query "
                         "judgments (0 for queries without any)",
        "rows": len(rows), "queries": len(queries),
        "within_query_judgments": sum(r["judgments"] for r in queries.values()),
        "cross_query_judgments": sum(1 for j in judgments if j.cross_query),
        "anchored_queries": len(scores.anchored), "disconnected_queries": disconnected,
        "not_converged_queries": not_converged,
        "bias_fit": None if scores.bias_fit is None else {
            "converged": scores.bias_fit.converged, "iterations": scores.bias_fit.iterations,
            "neg_log_likelihood": scores.bias_fit.neg_log_likelihood},
        "stderr": {"median": float(np.median(stderr)), "max": float(stderr.max())},
        "elo": {"min": min(r["elo"] for r in rows), "max": max(r["elo"] for r in rows)},
        "per_query": queries, "wall_time_s": time.perf_counter() - began, "versions": library_versions(),
    }
    with staged_output_dir(args.out, args.overwrite) as staging:
        atomic_write_text(staging / "elo.jsonl", _jsonl(rows))
        atomic_write_json(staging / "report.json", report)
    logger.info("Elo scores of %d documents of %d queries (median stderr %.3f) in %.1fs; wrote %s", len(rows),
                len(queries), report["stderr"]["median"], report["wall_time_s"], args.out)
    return report
