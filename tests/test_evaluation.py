"""zerank.evaluation.evaluate: reranking, the oracle, the results table and the `zerank evaluate` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from evaluate_data import ndcg_ceiling, write_synthetic_beir

from zerank import cli
from zerank.utils.arguments import ScoringArguments
from zerank.data.readers import load_beir, read_trec_run, write_trec_run
from zerank.evaluation.evaluate import cross_encoder_scorer, evaluate_reranker, evaluation_markdown, oracle_scorer, rerank
from zerank.evaluation.metrics import evaluate_run
from zerank.evaluation.first_stage import BM25Settings, FirstStage


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_beir(tmp_path_factory.mktemp("beir") / "synthetic", splits={"train": 0.5, "test": 0.5})


def evaluate(*argv: str) -> dict:
    return cli.main(["evaluate", *argv])


# --- reranking --------------------------------------------------------------------------------------------------

def test_oracle_reranker_reaches_the_best_ndcg_the_candidates_allow(synthetic):
    data = load_beir(synthetic, "test")
    query_ids = data.judged_query_ids
    first_stage = FirstStage("bm25", BM25Settings(stemmer="none"))
    results, candidates, reranked = evaluate_reranker(data, query_ids, first_stage, oracle_scorer(data.qrels),
                                                      top_k=3, show_progress=False)
    ceiling = ndcg_ceiling(data.qrels, candidates)
    assert results["reranked"]["ndcg@10"] == pytest.approx(ceiling, abs=1e-9)
    assert results["oracle"]["ndcg@10"] == pytest.approx(ceiling, abs=1e-9)
    assert results["reranked"]["recall@100"] == results["first_stage"]["recall@100"]
    assert {q: set(d) for q, d in reranked.items()} == {q: set(d) for q, d in candidates.items()}
    # A reranker that reverses the oracle does worse than the ceiling.
    worst, _, _ = rerank(candidates, lambda ids: -oracle_scorer(data.qrels)(ids), show_progress=False)
    assert evaluate_run(data.qrels, worst)[0]["ndcg@10"] < ceiling


def test_rerank_steps_cover_every_pair_once():
    candidates = {f"q{i}": {f"d{j}": 0.0 for j in range(i)} for i in range(6)}  # q0 has no candidate
    seen = []

    def scorer(ids):
        seen.append(list(ids))
        return np.arange(len(ids), dtype=np.float32)

    reranked, pairs, seconds = rerank(candidates, scorer, pairs_per_step=4, show_progress=False)
    assert pairs == 15 and seconds >= 0 and sorted(p for step in seen for p in step) == sorted(
        (q, d) for q, docs in candidates.items() for d in docs)
    assert all(len(step) <= 4 or len({q for q, _ in step}) == 1 for step in seen)  # a big query gets a step alone
    assert set(reranked) == set(candidates) and reranked["q0"] == {}


def test_cross_encoder_scorer_batch_size_cap_keeps_scores(synthetic, tiny_cross_encoder):
    data = load_beir(synthetic, "test")
    ids = [(q, d) for q in data.judged_query_ids[:3] for d in data.qrels[q]]
    free = cross_encoder_scorer(tiny_cross_encoder, data)(ids)
    capped = cross_encoder_scorer(tiny_cross_encoder, data, batch_size=1)(ids)
    np.testing.assert_allclose(capped, free, atol=1e-5)
    expected = tiny_cross_encoder.predict([(data.queries[q], data.document(d)) for q, d in ids],
                                          activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(free, expected, rtol=1e-5, atol=1e-5)  # the logit of (query, title + text)
    with pytest.raises(ValueError, match="batch-size"):
        ScoringArguments(batch_size=0)


def test_evaluation_markdown_tabulates_first_stage_and_reranked():
    metrics = {"ndcg@10": 0.5, "mrr@10": 0.25, "recall@100": 1.0}
    result = {"dataset": "scifact", "split": "test", "queries": 300, "top_k": 100, "relevance_level": 1,
              "first_stage_name": "BM25", "first_stage": metrics, "reranked": dict(metrics, **{"ndcg@10": 0.75})}
    table = evaluation_markdown([result], "zerank-1").splitlines()
    assert table[0] == "| Dataset | Queries | System | NDCG@10 | MRR@10 | Recall@100 |"
    assert table[2] == "| scifact (test) | 300 | BM25 | 0.5000 | 0.2500 | 1.0000 |"
    assert table[3] == "| scifact (test) | 300 | zerank-1 on its top 100 | 0.7500 | 0.2500 | 1.0000 |"
    with pytest.raises(ValueError, match="No results"):
        evaluation_markdown([])


# --- command line -----------------------------------------------------------------------------------------------

def test_evaluate_cli_end_to_end_on_the_tiny_model(synthetic, tiny_model_dir, tiny_cross_encoder, tmp_path):
    out = tmp_path / "eval"
    results = evaluate("--data", str(synthetic), "--model", str(tiny_model_dir), "--top-k", "4", "--max-queries",
                       "5", "--bm25-stemmer", "none", "--max-batch-tokens", "512", "--output-dir", str(out),
                       "--no-progress")
    saved = json.loads((out / "results.json").read_text())
    assert saved["queries"] == 5 and saved["pairs"] == 20 and saved["pairs_per_s"] > 0
    for key in ("first_stage", "reranked", "oracle"):
        assert set(saved[key]) == {"ndcg@10", "mrr@10", "recall@10", "recall@100"}
    assert saved["reranked"] == pytest.approx(results["reranked"])
    assert saved["settings"]["max_batch_tokens"] == 512 and saved["settings"]["dtype"] == "float32"
    data = load_beir(synthetic, "test")
    qrels = data.subset(data.judged_query_ids[:5]).qrels
    first_stage = read_trec_run(out / "first_stage.trec")
    reranked = read_trec_run(out / "reranked.trec")
    assert evaluate_run(qrels, reranked)[0] == pytest.approx(saved["reranked"], abs=1e-6)
    assert evaluate_run(qrels, first_stage)[0] == pytest.approx(saved["first_stage"], abs=1e-6)
    # The reranked scores are the model's logits of (query, title + text).
    qid = data.judged_query_ids[0]
    doc_ids = list(reranked[qid])
    expected = tiny_cross_encoder.predict([(data.queries[qid], data.document(d)) for d in doc_ids],
                                          activation_fn=torch.nn.Identity())
    np.testing.assert_allclose([reranked[qid][d] for d in doc_ids], expected, rtol=1e-5, atol=1e-5)
    table = (out / "results.md").read_text()
    assert table.startswith("| Dataset | Queries | System | NDCG@10 |")
    assert f"{saved['reranked']['ndcg@10']:.4f}" in table
    assert sorted(p.name for p in out.iterdir()) == ["first_stage.trec", "reranked.trec", "results.json",
                                                     "results.md"]  # no temporary file left behind


def test_evaluate_cli_accepts_a_run_file_and_rejects_bad_arguments(synthetic, tiny_model_dir, tmp_path, capsys):
    data = load_beir(synthetic, "test")
    qid = data.judged_query_ids[0]
    run_file = tmp_path / "mine.trec"
    write_trec_run({qid: {d: float(i) for i, d in enumerate(data.qrels[qid])} | {"not-in-corpus": 9.0}}, run_file,
                   "mine")
    out = tmp_path / "eval"
    results = evaluate("--data", str(synthetic), "--model", str(tiny_model_dir), "--first-stage", str(run_file),
                       "--max-queries", "2", "--output-dir", str(out), "--no-progress")
    assert results["pairs"] == len(data.qrels[qid])  # the unknown document is dropped, the other query has none
    assert set(read_trec_run(out / "reranked.trec")) == {qid}
    capsys.readouterr()
    with pytest.raises(SystemExit) as error:
        evaluate("--data", str(synthetic), "--model", str(tiny_model_dir), "--first-stage", str(tmp_path / "no.trec"),
                 "--output-dir", str(out))
    assert error.value.code == 2 and "--first-stage" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        evaluate("--data", str(synthetic), "--model", str(tiny_model_dir), "--max-queries", "0",
                 "--output-dir", str(out))
    assert error.value.code == 2 and "--max-queries" in capsys.readouterr().err


def test_evaluate_cli_long_documents_chunk(synthetic, tiny_model_dir, tiny_cross_encoder, tmp_path):
    """--long-documents chunk: each candidate scores as the aggregation of its windows (here: tiny windows, so the
    synthetic documents are chunked), recorded in results.json."""
    from zerank.model.long_documents import ChunkSettings, score_documents

    out = tmp_path / "eval-chunk"
    evaluate("--data", str(synthetic), "--model", str(tiny_model_dir), "--top-k", "3", "--max-queries", "3",
             "--bm25-stemmer", "none", "--output-dir", str(out), "--no-progress", "--long-documents", "chunk",
             "--chunk-tokens", "40", "--chunk-overlap", "8", "--chunk-aggregation", "mean", "--chunk-top-k", "2")
    saved = json.loads((out / "results.json").read_text())
    settings = ChunkSettings(max_tokens=40, overlap=8, aggregation="mean", top_k=2)
    assert saved["settings"]["long_documents"] == "chunk" and saved["settings"]["chunking"] == settings.describe()
    assert saved["long_documents"]["documents_chunked"] > 0
    assert saved["long_documents"]["windows_scored"] > saved["pairs"]
    data = load_beir(synthetic, "test")
    reranked = read_trec_run(out / "reranked.trec")
    qid = data.judged_query_ids[0]
    doc_ids = list(reranked[qid])
    expected = score_documents(tiny_cross_encoder, [(data.queries[qid], data.document(d)) for d in doc_ids],
                               settings, output="logit")
    np.testing.assert_allclose([reranked[qid][d] for d in doc_ids], [r.score for r in expected], atol=1e-5)
