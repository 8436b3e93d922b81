"""zerank.data.readers: BEIR folders, qrels, TREC run files, document text and labelled pairs."""

from __future__ import annotations

import json
import logging

import pytest
from evaluate_data import write_synthetic_beir

from zerank.data.readers import (
    cut_run,
    document_text,
    holdout_mask,
    load_beir,
    pairs_from_beir,
    pairs_from_jsonl,
    read_qrels,
    read_trec_run,
    write_trec_run,
)
from zerank.evaluation.first_stage import BM25Settings, FirstStage


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_beir(tmp_path_factory.mktemp("beir") / "synthetic", splits={"train": 0.5, "test": 0.5})


# --- BEIR folders -----------------------------------------------------------------------------------------------

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


def beir_folder(root, corpus: str, queries: str, qrels: str):
    """A BEIR folder from the texts of its three files."""
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(corpus)
    (root / "queries.jsonl").write_text(queries)
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


CORPUS = '{"_id": "d1", "title": "T", "text": "one"}\n{"_id": "d2", "text": "two"}\n'
QUERIES = '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n'
QRELS = "q1\td1\t2\nq2\td2\t1\n"


@pytest.mark.parametrize(
    "corpus, queries, qrels, message",
    [
        # A repeated id whose two lines disagree: neither silently wins.
        (CORPUS + '{"_id": "d1", "title": "T", "text": "changed"}\n', QUERIES, QRELS,
         r"corpus.jsonl:3: document id 'd1' was given on line 1 with different content"),
        (CORPUS, QUERIES + '{"_id": "q2", "text": "other"}\n', QRELS,
         r"queries.jsonl:3: query id 'q2' was given on line 2 with different content"),
        (CORPUS, QUERIES, QRELS + "q1\td1\t0\n",
         r"test.tsv:3: judgment \('q1', 'd1'\) was given on line 1 with different content \(2 there, 0 here\)"),
        # Grades are finite integers.
        (CORPUS, QUERIES, "q1\td1\tinf\n", r"test.tsv:1: the grade 'inf' is not a finite integer"),
        (CORPUS, QUERIES, QRELS + "q1\td2\tnan\n", r"test.tsv:3: the grade 'nan' is not a finite integer"),
        (CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\t1.7\n", r"test.tsv:2: the grade '1.7' is not a finite"),
        # Texts are strings; ids are strings or integers.
        (CORPUS + '{"_id": "d3", "text": ["a", "list"]}\n', QUERIES, QRELS,
         r"corpus.jsonl:3: 'text' must be a string or null, got \['a', 'list'\]"),
        (CORPUS + '{"_id": "d3", "title": 7, "text": "x"}\n', QUERIES, QRELS, r"corpus.jsonl:3: 'title' must be"),
        (CORPUS, QUERIES + '{"_id": "q3", "text": null}\n', QRELS, r"queries.jsonl:3: 'text' must be a string, got None"),
        (CORPUS, '{"_id": null, "text": "x"}\n', QRELS, r"queries.jsonl:1: '_id' must be a string or an integer"),
        (CORPUS, '["q1", "first"]\n', QRELS, r"queries.jsonl:1: a BEIR row is a JSON object"),
    ],
)
def test_load_beir_refuses_data_that_would_change_meaning(tmp_path, corpus, queries, qrels, message):
    folder = beir_folder(tmp_path / "beir", corpus, queries, qrels)
    with pytest.raises(ValueError, match=message):
        load_beir(folder, "test")


def test_repeats_that_agree_are_read_once_with_a_warning(tmp_path, caplog):
    folder = beir_folder(tmp_path / "beir", CORPUS + CORPUS.splitlines(True)[0], QUERIES * 2,
                         QRELS + "q1\td1\t2\n" + QRELS)
    with caplog.at_level(logging.WARNING, logger="zerank.data.readers"):
        data = load_beir(folder, "test")
    assert data.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}} and list(data.queries) == ["q1", "q2"]
    assert data.corpus["d1"] == {"title": "T", "text": "one"} and len(data.corpus) == 2
    assert "corpus.jsonl: 1 repeated document ids" in caplog.text
    assert "queries.jsonl: 2 repeated query ids" in caplog.text
    assert "test.tsv: 3 repeated judgments" in caplog.text


def test_integer_ids_whole_number_grades_and_null_titles_are_read(tmp_path):
    folder = beir_folder(tmp_path / "beir", '{"_id": 1, "title": null, "text": "one"}\n',
                         '{"_id": 7, "text": "q"}\n', "7\t1\t2.0\n7\t2\t-1\n")
    data = load_beir(folder, "test")
    assert data.qrels == {"7": {"1": 2, "2": -1}} and data.corpus == {"1": {"title": "", "text": "one"}}


# --- TREC runs --------------------------------------------------------------------------------------------------

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


def test_write_trec_run_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "runs" / "run.trec"  # the folder is created
    write_trec_run({"q1": {"a": 1.0, "b": 2.0}}, path, "first")
    write_trec_run({"q2": {"x": 3.0}}, path, "second")
    assert path.read_text() == "q2 Q0 x 1 3 second\n"
    assert [p.name for p in path.parent.iterdir()] == ["run.trec"]


# --- labelled pairs ---------------------------------------------------------------------------------------------

def test_pairs_from_beir_take_judged_positives_and_unjudged_or_irrelevant_candidates(tmp_path):
    folder = write_synthetic_beir(tmp_path / "beir", n_queries=6)
    data = load_beir(folder, "test")
    candidates = FirstStage("bm25", BM25Settings(stemmer="none")).retrieve(data, data.judged_query_ids, 4)
    pairs = pairs_from_beir(data, data.judged_query_ids, candidates)
    for qid in data.judged_query_ids:
        rows = [i for i, g in enumerate(pairs.groups) if g == qid]
        positives = {pairs.documents[i] for i in rows if pairs.labels[i] == 1}
        assert positives == {data.document(d) for d, g in data.qrels[qid].items() if g >= 1}
        negatives = [pairs.documents[i] for i in rows if pairs.labels[i] == 0]
        assert len(negatives) <= 4 and not positives & set(negatives)
    strict = pairs_from_beir(data, data.judged_query_ids, candidates, relevance_level=2)
    assert strict.labels.sum() == 6  # only the grade-2 document of each query
    assert set(pairs.grades.tolist()) <= {0.0, 1.0, 2.0} and set(strict.grades.tolist()) <= {0.0, 1.0, 2.0}
    assert ((pairs.grades >= 1) == (pairs.labels == 1)).all() and ((strict.grades >= 2) == (strict.labels == 1)).all()


def test_pairs_from_jsonl_reads_both_row_formats_and_names_bad_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "q1", "document": "a", "label": 2}) + "\n"
                    + json.dumps({"query": "q1", "document": "b", "label": 0}) + "\n\n"
                    + json.dumps({"query": "q2", "positive": "c", "negatives": ["d", "e"]}) + "\n")
    pairs = pairs_from_jsonl(path)
    assert pairs.take([4, 0]).grades.tolist() == [0, 2]
    assert pairs.pairs == [("q1", "a"), ("q1", "b"), ("q2", "c"), ("q2", "d"), ("q2", "e")]
    assert pairs.labels.tolist() == [1, 0, 1, 0, 0] and pairs.groups == ["q1", "q1", "q2", "q2", "q2"]
    assert pairs.grades.tolist() == [2, 0, 1, 0, 0]  # a positive is graded max(1, threshold)
    assert pairs_from_jsonl(path, label_threshold=3).labels.tolist()[:2] == [0, 0]
    assert pairs_from_jsonl(path, label_threshold=3).grades.tolist() == [2, 0, 3, 0, 0]
    path.write_text('{"query": "q", "doc": "x", "label": 1}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:1: expected"):
        pairs_from_jsonl(path)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"query": "q", "document": "d", "label": float("nan")}, r"pairs.jsonl:2: 'label' must be a finite number"),
        ({"query": "q", "document": "d", "label": float("inf")}, r"pairs.jsonl:2: 'label' must be a finite number"),
        ({"query": "q", "document": "d", "label": True}, r"pairs.jsonl:2: 'label' must be a finite number"),
        ({"query": "q", "document": 5, "label": 1}, r"pairs.jsonl:2: 'document' must be a string, got 5"),
        ({"query": None, "document": "d", "label": 1}, r"pairs.jsonl:2: each row needs a string 'query'"),
    ],
)
def test_pairs_from_jsonl_refuses_labels_and_texts_that_would_change_meaning(tmp_path, row, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "q", "document": "ok", "label": 1}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message):
        pairs_from_jsonl(path)


def test_holdout_mask_keeps_each_query_on_one_side():
    groups = [f"q{i // 3}" for i in range(30)]
    mask = holdout_mask(groups, 0.3, seed=0)
    held = {g for g, m in zip(groups, mask) if m}
    assert mask.sum() == 9 and held.isdisjoint(g for g, m in zip(groups, mask) if not m)
    assert (holdout_mask(groups, 0.3, seed=0) == mask).all() and not (holdout_mask(groups, 0.3, seed=1) == mask).all()
    with pytest.raises(ValueError, match="two queries"):
        holdout_mask(["q"] * 4, 0.5, 0)
