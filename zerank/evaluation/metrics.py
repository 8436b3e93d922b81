"""Ranking metrics from trec_eval's own code (pytrec_eval), never from hand-written formulas.

``ndcg@k`` is trec_eval's ``ndcg_cut_k`` (linear gains), ``recall@k`` is ``recall_k``, ``mrr@k`` is ``recip_rank``
of the run cut to its top k, all averaged over the judged queries (a judged query with no retrieved document counts
0, as ``trec_eval -c`` does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytrec_eval

from zerank.data.readers import Qrels, cut_run

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


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
