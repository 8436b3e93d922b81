"""zerank.evaluation.first_stage: BM25 (bm25s), the first stage (BM25 or a run file) and the `zerank bm25` command."""

from __future__ import annotations

import json

import pytest
from conftest import shared_dir
from evaluate_data import write_synthetic_beir

from zerank import cli
from zerank.utils.arguments import FirstStageArguments
from zerank.data.readers import BeirDataset, load_beir, read_trec_run, write_trec_run
from zerank.evaluation.metrics import evaluate_run
from zerank.evaluation.first_stage import BM25Settings, FirstStage, bm25_search

IR = shared_dir() / "data" / "ir"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_beir(tmp_path_factory.mktemp("beir") / "synthetic", splits={"train": 0.5, "test": 0.5})


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


def test_first_stage_from_a_run_file_keeps_the_corpus_documents_of_the_queries(synthetic, tmp_path):
    data = load_beir(synthetic, "test")
    q0, q1 = data.judged_query_ids[:2]
    docs = list(data.qrels[q0])
    run_file = tmp_path / "mine.trec"
    write_trec_run({q0: {d: float(i) for i, d in enumerate(docs)} | {"not-in-corpus": 9.0}, "other": {docs[0]: 1.0}},
                   run_file, "mine")
    first_stage = FirstStage.from_arguments(FirstStageArguments(first_stage=str(run_file)))
    assert first_stage.describe() == "run file mine.trec" and first_stage.settings() == {"source": str(run_file)}
    candidates = first_stage.retrieve(data, [q0, q1], 2)
    assert candidates == {q0: {docs[-1]: float(len(docs) - 1), docs[-2]: float(len(docs) - 2)}, q1: {}}
    with pytest.raises(ValueError, match="none of the 1 judged queries"):
        first_stage.retrieve(data, [q1], 2)
    with pytest.raises(ValueError, match="--first-stage"):
        FirstStageArguments(first_stage=str(tmp_path / "no.trec"))


def test_bm25_command_reports_and_writes_the_run(synthetic, tmp_path, capsys):
    out = tmp_path / "bm25.trec"
    report = cli.main(["bm25", "--data", str(synthetic), "--top-k", "5", "--max-queries", "4",
                       "--bm25-stemmer", "none", "--output", str(out)])
    assert json.loads(capsys.readouterr().out) == report
    data = load_beir(synthetic, "test")
    query_ids = data.judged_query_ids[:4]
    assert report["dataset"] == "synthetic" and report["queries"] == 4
    assert report["first_stage"] == "BM25 (bm25s, k1=1.2, b=0.75, no stemmer)"
    expected = bm25_search(data, query_ids, 5, BM25Settings(stemmer="none"))
    written = read_trec_run(out)
    assert set(written) == set(expected)
    for qid in expected:
        assert written[qid] == pytest.approx(expected[qid], rel=1e-6)
    assert report["metrics"] == pytest.approx(evaluate_run(data.subset(query_ids).qrels, expected)[0], abs=1e-12)
    with pytest.raises(SystemExit) as error:
        cli.main(["bm25", "--data", str(synthetic), "--top-k", "0"])
    assert error.value.code == 2 and "--top-k" in capsys.readouterr().err


@pytest.mark.slow
def test_bm25_on_scifact_is_within_002_of_the_published_beir_figure():
    path = IR / "scifact"
    if not path.exists():
        pytest.skip(f"{path} not available")
    data = load_beir(path, "test")
    run = bm25_search(data, data.judged_query_ids, 100)
    ndcg = evaluate_run(data.qrels, run)[0]["ndcg@10"]
    print(f"BM25 scifact NDCG@10 = {ndcg:.4f} (BEIR: 0.665)")
    assert abs(ndcg - 0.665) <= 0.02
