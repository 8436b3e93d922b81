"""zerank.evaluation.metrics: trec_eval's values through pytrec_eval, checked by hand, against pytrec_eval and against ranx."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import pytrec_eval
from conftest import shared_dir
from evaluate_data import ndcg_ceiling

from zerank.data.readers import cut_run, load_beir
from zerank.evaluation.evaluate import evaluate_reranker, oracle_scorer
from zerank.evaluation.metrics import evaluate_run
from zerank.evaluation.first_stage import FirstStage

IR = shared_dir() / "data" / "ir"
REAL_SETS = ("scifact", "msmarco-trecdl-subset", "dbpedia-entity-subset")

QRELS = {"a": {"d1": 2, "d2": 1, "d3": 0, "dX": 1}, "b": {"e1": 1}, "c": {"f1": 1}}
RUN = {
    "a": {"d3": 3.0, "d1": 1.0, "d2": 1.0, "n1": 0.5},  # d1/d2 tie: trec_eval ranks d2 first
    "b": {**{f"n{i}": 20.0 - i for i in range(10)}, "e1": 1.0},  # the relevant document is 11th
    "other": {"z": 1.0},  # not judged: ignored; "c" is judged but not retrieved: counts 0
}


def test_metrics_equal_trec_eval_values():
    mean, per_query = evaluate_run(QRELS, RUN)
    assert set(per_query) == {"a", "b", "c"}
    reference = pytrec_eval.RelevanceEvaluator(QRELS, {"ndcg_cut.10", "recall.10,100", "recip_rank"}).evaluate(RUN)
    for qid in ("a", "b"):
        assert per_query[qid]["ndcg@10"] == pytest.approx(reference[qid]["ndcg_cut_10"], abs=1e-6)
        assert per_query[qid]["recall@10"] == pytest.approx(reference[qid]["recall_10"], abs=1e-6)
        assert per_query[qid]["recall@100"] == pytest.approx(reference[qid]["recall_100"], abs=1e-6)
    # Worked by hand: a ranks d3 (0), d2 (1), d1 (2); ideal 2, 1, 1.
    ndcg_a = (1 / math.log2(3) + 2 / 2) / (2 + 1 / math.log2(3) + 1 / 2)
    assert per_query["a"] == pytest.approx({"ndcg@10": ndcg_a, "mrr@10": 0.5, "recall@10": 2 / 3,
                                            "recall@100": 2 / 3}, abs=1e-6)
    assert reference["b"]["recip_rank"] == pytest.approx(1 / 11)
    assert per_query["b"]["mrr@10"] == 0.0 and per_query["b"]["recall@100"] == 1.0  # MRR is cut at 10
    assert per_query["c"] == dict.fromkeys(per_query["c"], 0.0)
    for name in mean:
        assert mean[name] == pytest.approx(np.mean([per_query[q][name] for q in "abc"]), abs=1e-12)


def test_relevance_level_raises_the_bar_for_binary_metrics():
    _, strict = evaluate_run(QRELS, RUN, relevance_level=2)
    assert strict["a"]["mrr@10"] == pytest.approx(1 / 3) and strict["a"]["recall@10"] == 1.0
    assert evaluate_run(QRELS, RUN)[1]["a"]["ndcg@10"] == pytest.approx(strict["a"]["ndcg@10"])  # graded gains
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluate_run(QRELS, RUN, ["ndcg"])


# --- real data (slow) -------------------------------------------------------------------------------------------

def _real(name):
    path = IR / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_SETS)
def test_metrics_agree_with_an_independent_implementation_and_the_oracle_ceiling(name):
    """ranx (a separate implementation) agrees with our trec_eval metrics to 1e-6 on the real BM25 runs."""
    ranx = pytest.importorskip("ranx")
    data = load_beir(_real(name), "test")
    query_ids = data.judged_query_ids
    results, candidates, _ = evaluate_reranker(data, query_ids, FirstStage(), oracle_scorer(data.qrels),
                                               show_progress=False)
    # ranx breaks score ties differently from trec_eval: give it trec_eval's order as distinct scores.
    ordered = {q: {d: -i for i, d in enumerate(cut_run({q: docs}, len(docs))[q])} for q, docs in candidates.items()}
    reference = ranx.evaluate(ranx.Qrels(data.qrels), ranx.Run(ordered), ["ndcg@10", "mrr@10", "recall@10",
                                                                          "recall@100"], make_comparable=True)
    assert results["first_stage"] == pytest.approx(reference, abs=1e-6)
    assert results["oracle"]["ndcg@10"] == pytest.approx(ndcg_ceiling(data.qrels, candidates), abs=1e-9)
    print(name, json.dumps({k: results[k] for k in ("first_stage", "oracle")}))
