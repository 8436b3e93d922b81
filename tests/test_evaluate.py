"""scripts/beir.py and scripts/evaluate.py: BEIR loading, BM25, trec_eval metrics, reranking and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import pytrec_eval
import torch
from conftest import shared_dir
from evaluate_data import write_synthetic_beir

from beir import (
    BeirDataset,
    BM25Settings,
    FirstStage,
    bm25_search,
    cut_run,
    document_text,
    evaluate_run,
    load_beir,
    read_qrels,
    read_trec_run,
    write_trec_run,
)
from evaluate import evaluate_reranker, main, oracle_scorer, rerank, score_texts

IR = shared_dir() / "data" / "ir"
REAL_SETS = ("scifact", "msmarco-trecdl-subset", "dbpedia-entity-subset")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_beir(tmp_path_factory.mktemp("beir") / "synthetic", splits={"train": 0.5, "test": 0.5})


def ndcg_ceiling(qrels, candidates, k=10):
    """Best NDCG@k any order of the candidates reaches (linear gains, as trec_eval), averaged over qrels' queries."""
    values = []
    for qid, judged in qrels.items():
        def dcg(gains):
            return sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains, reverse=True)[:k]))
        ideal = dcg([g for g in judged.values() if g > 0])
        best = dcg([max(judged.get(d, 0), 0) for d in candidates.get(qid, {})])
        values.append(best / ideal if ideal else 0.0)
    return float(np.mean(values))


# --- data -------------------------------------------------------------------------------------------------------

def test_document_text_joins_title_and_text_and_skips_empty_titles():
    assert document_text("Title", "Body.") == "Title\nBody."
    assert document_text("", "Body.") == "Body."
    assert document_text(None, "Body.") == "Body."
    assert document_text("  ", "Body.") == "Body."


def test_load_beir_reads_headerless_and_header_qrels_graded_labels(synthetic):
    test = load_beir(synthetic, "test")
    train = load_beir(synthetic, "train")
    assert set(test.qrels).isdisjoint(train.qrels)
    assert len(test.judged_query_ids) == len(train.judged_query_ids) == 6
    assert "unjudged" in test.queries and "unjudged" not in test.judged_query_ids
    first = test.judged_query_ids[0]
    assert sorted(test.qrels[first].values()) == [0, 1, 2]  # graded, with a judged zero
    assert (synthetic / "qrels" / "test.tsv").read_text().split("\t")[0] != "query-id"  # really no header
    empty_title = next(d for d, doc in test.corpus.items() if not doc["title"])
    assert test.document(empty_title) == test.corpus[empty_title]["text"]


def test_read_qrels_and_load_beir_name_the_problem(tmp_path, synthetic):
    (tmp_path / "bad.tsv").write_text("q1\td1\t1\nq1\td2\tmaybe\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2.*'maybe'"):
        read_qrels(tmp_path / "bad.tsv")
    (tmp_path / "four.tsv").write_text("q1 0 d1 2\n".replace(" ", "\t"))
    assert read_qrels(tmp_path / "four.tsv") == {"q1": {"d1": 2}}
    with pytest.raises(FileNotFoundError, match=r"splits available.*\['test', 'train'\]"):
        load_beir(synthetic, "dev")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "qrels").mkdir()
    (broken / "qrels" / "test.tsv").write_text("q\td\t1\n")
    (broken / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    (broken / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n{"_id": "e", "text": \n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: not valid JSON"):
        load_beir(broken, "test")


def test_trec_run_round_trip_in_trec_eval_order(tmp_path):
    run = {"q1": {"a": 0.5, "b": 2.0, "c": 0.5}, "q2": {"x": -1.0}}
    write_trec_run(run, tmp_path / "run.trec", "test")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[:3] == ["q1 Q0 b 1 2 test", "q1 Q0 c 2 0.5 test", "q1 Q0 a 3 0.5 test"]  # ties: higher id first
    assert read_trec_run(tmp_path / "run.trec") == run
    assert cut_run(run, 2) == {"q1": {"b": 2.0, "c": 0.5}, "q2": {"x": -1.0}}
    (tmp_path / "bad.trec").write_text("q1 Q0 a 1 0.5\n")
    with pytest.raises(ValueError, match="6 fields"):
        read_trec_run(tmp_path / "bad.trec")


# --- metrics ----------------------------------------------------------------------------------------------------

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


# --- first stage and reranking ----------------------------------------------------------------------------------

def test_bm25_finds_the_documents_that_share_the_rare_word(synthetic):
    data = load_beir(synthetic, "test")
    run = bm25_search(data, data.judged_query_ids, 5, BM25Settings(stemmer="none"))
    for qid in data.judged_query_ids:
        top = max(run[qid], key=run[qid].get)
        assert data.qrels[qid].get(top, 0) >= 1, (qid, top)
        assert len(run[qid]) <= 5 and all(s > 0 for s in run[qid].values())


def test_bm25_stemming_and_queries_without_matches():
    pytest.importorskip("Stemmer")
    data = BeirDataset("tiny", "test", {"d1": {"title": "", "text": "cats running fast"},
                                        "d2": {"title": "Dogs", "text": "a dog sits"}},
                       {"q1": "cat runs", "q2": "the of and"}, {"q1": {"d1": 1}, "q2": {"d2": 1}})
    assert list(bm25_search(data, ["q1"], 10, BM25Settings(stemmer="english"))["q1"]) == ["d1"]
    assert bm25_search(data, ["q1", "q2"], 10, BM25Settings(stemmer="none")) == {"q1": {}, "q2": {}}
    with pytest.raises(ValueError, match="Unknown stemmer"):
        bm25_search(data, ["q1"], 10, BM25Settings(stemmer="klingon"))


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


def test_score_texts_batch_size_cap_keeps_scores(tiny_cross_encoder):
    pairs = [("q1", "short"), ("q2", "a longer document " * 20), ("q1", "mid length document " * 4), ("q2", "x")]
    free = score_texts(tiny_cross_encoder, pairs)
    capped = score_texts(tiny_cross_encoder, pairs, batch_size=1)
    np.testing.assert_allclose(capped, free, atol=1e-5)
    with pytest.raises(ValueError, match="batch-size"):
        score_texts(tiny_cross_encoder, pairs, batch_size=0)


# --- command line -----------------------------------------------------------------------------------------------

def test_evaluate_cli_end_to_end_on_the_tiny_model(synthetic, tiny_model_dir, tiny_cross_encoder, tmp_path):
    out = tmp_path / "eval"
    results = main(["--data", str(synthetic), "--model", str(tiny_model_dir), "--top-k", "4", "--max-queries", "5",
                    "--bm25-stemmer", "none", "--max-batch-tokens", "512", "--output-dir", str(out),
                    "--no-progress"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["queries"] == 5 and saved["pairs"] == 20 and saved["pairs_per_s"] > 0
    for key in ("first_stage", "reranked", "oracle"):
        assert set(saved[key]) == {"ndcg@10", "mrr@10", "recall@10", "recall@100"}
    assert saved["reranked"] == pytest.approx(results["reranked"])
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


def test_evaluate_cli_accepts_a_run_file_and_rejects_bad_arguments(synthetic, tiny_model_dir, tmp_path):
    data = load_beir(synthetic, "test")
    qid = data.judged_query_ids[0]
    run_file = tmp_path / "mine.trec"
    write_trec_run({qid: {d: float(i) for i, d in enumerate(data.qrels[qid])} | {"not-in-corpus": 9.0}}, run_file,
                   "mine")
    out = tmp_path / "eval"
    results = main(["--data", str(synthetic), "--model", str(tiny_model_dir), "--first-stage", str(run_file),
                    "--max-queries", "2", "--output-dir", str(out), "--no-progress"])
    assert results["pairs"] == len(data.qrels[qid])  # the unknown document is dropped, the other query has none
    assert set(read_trec_run(out / "reranked.trec")) == {qid}
    with pytest.raises(FileNotFoundError, match="--first-stage"):
        main(["--data", str(synthetic), "--model", str(tiny_model_dir), "--first-stage", str(tmp_path / "no.trec"),
              "--output-dir", str(out)])
    with pytest.raises(ValueError, match="--max-queries"):
        main(["--data", str(synthetic), "--model", str(tiny_model_dir), "--max-queries", "0",
              "--output-dir", str(out)])


# --- real data (slow) -------------------------------------------------------------------------------------------

def _real(name):
    path = IR / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.mark.slow
def test_bm25_on_scifact_is_within_002_of_the_published_beir_figure():
    data = load_beir(_real("scifact"), "test")
    run = bm25_search(data, data.judged_query_ids, 100)
    ndcg = evaluate_run(data.qrels, run)[0]["ndcg@10"]
    print(f"BM25 scifact NDCG@10 = {ndcg:.4f} (BEIR: 0.665)")
    assert abs(ndcg - 0.665) <= 0.02


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
