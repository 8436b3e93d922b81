"""zerank rerank: shards of whole queries, the manifest and the resume rule, the local and Ray engines, input errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from evaluate_data import write_synthetic_beir

from zerank.rerank.arguments import RerankArguments
from zerank.utils.arguments import ModelArguments, ScoringArguments
from zerank.data.readers import read_trec_run
from zerank.rerank.inputs import read_beir_candidates, read_pairs
from zerank.rerank.batch import (
    MANIFEST,
    RUN_FILE,
    SCORES_DIR,
    ShardScorer,
    plan_shards,
    read_scores,
    rerank,
)
from zerank.model.scoring import calibrated_score, score_pairs

DOC_IDS = ("pos0", "pos1", "neg0", "neg1", "neg2", "neg3")
SHARD_PAIRS = 10


def write_pairs_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(dict(zip(("query_id", "query", "doc_id", "document"), row))) + "\n"
                            for row in rows))
    return path


@pytest.fixture(scope="module")
def candidates_dir(tmp_path_factory) -> Path:
    """A synthetic BEIR folder and a run of 6 candidates for each of its 12 queries (72 pairs)."""
    folder = tmp_path_factory.mktemp("rerank-data")
    write_synthetic_beir(folder / "beir", n_queries=12, negatives_per_query=4)
    (folder / "run.trec").write_text("".join(f"q{i} Q0 d{i}-{doc} {rank} {10 - rank} bm25\n" for i in range(12)
                                             for rank, doc in enumerate(DOC_IDS, 1)))
    return folder


def beir_args(folder: Path, out: Path, **kwargs) -> RerankArguments:
    return RerankArguments(out=out, data=folder / "beir", run=folder / "run.trec", shard_pairs=SHARD_PAIRS,
                           progress=False, **kwargs)


@pytest.fixture(scope="module")
def local_out(candidates_dir, tiny_model_dir, tmp_path_factory) -> Path:
    """The local engine's output on the candidates, in shards of at most 10 pairs."""
    out = tmp_path_factory.mktemp("rerank-local") / "out"
    rerank(beir_args(candidates_dir, out), ModelArguments(model=str(tiny_model_dir)), ScoringArguments())
    return out


def shard_tables(out: Path) -> dict[str, pa.Table]:
    return {p.name: read_scores(p) for p in sorted((out / SCORES_DIR).glob("shard-*"))}


def all_scores(out: Path) -> pa.Table:
    return pa.concat_tables(shard_tables(out).values())


def test_local_engine_scores_every_pair_in_shards_of_whole_queries(local_out, candidates_dir, tiny_cross_encoder):
    manifest = json.loads((local_out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["input"]["pairs"] == 72 and manifest["input"]["queries"] == 12
    tables = shard_tables(local_out)
    assert list(tables) == [f"shard-{i:05d}.parquet" for i in range(len(manifest["shards"]))]
    assert [t.num_rows for t in tables.values()] == [s["pairs"] for s in manifest["shards"]]
    assert all(t.num_rows <= SHARD_PAIRS for t in tables.values())
    owner = {}  # every query lies in exactly one shard
    for name, table in tables.items():
        for qid in table.column("query_id").to_pylist():
            assert owner.setdefault(qid, name) == name

    candidates = read_beir_candidates(candidates_dir / "beir", candidates_dir / "run.trec")
    scores = all_scores(local_out)
    assert scores.column("doc_id").to_pylist() == candidates.doc_ids  # input order
    expected = score_pairs(tiny_cross_encoder, list(zip(candidates.queries, candidates.documents)), output="raw")
    raw = scores.column("raw_logit").to_numpy()
    np.testing.assert_allclose(raw, expected, atol=1e-5)
    assert np.ptp(raw) > 0
    model = manifest["model"]
    np.testing.assert_array_equal(scores.column("score").to_numpy(),
                                  calibrated_score(raw, model["score_temperature"], model["score_bias"]))

    run = read_trec_run(local_out / RUN_FILE)
    assert list(run) == [f"q{i}" for i in range(12)]
    for qid, docs in run.items():
        mine = {d: r for q, d, r in zip(candidates.query_ids, candidates.doc_ids, raw) if q == qid}
        assert sorted(docs, key=docs.get, reverse=True) == sorted(mine, key=mine.get, reverse=True)
        np.testing.assert_allclose([docs[d] for d in mine], list(mine.values()), rtol=1e-6)


def test_pairs_files_give_the_same_rows_and_jsonl_shards_the_same_scores(local_out, candidates_dir, tiny_model_dir,
                                                                          tmp_path):
    candidates = read_beir_candidates(candidates_dir / "beir", candidates_dir / "run.trec")
    rows = list(zip(candidates.query_ids, candidates.queries, candidates.doc_ids, candidates.documents))
    jsonl = write_pairs_jsonl(tmp_path / "pairs.jsonl", rows)
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({k: list(v) for k, v in zip(("query_id", "query", "doc_id", "document"), zip(*rows))}),
                   parquet)
    assert read_pairs(jsonl).fingerprint() == read_pairs(parquet).fingerprint() == candidates.fingerprint()

    # the first two queries (one shard each), in jsonl shards: the scores of the local engine's first two shards
    out = tmp_path / "out"
    two = write_pairs_jsonl(tmp_path / "two.jsonl", rows[:12])
    manifest = rerank(RerankArguments(out=out, pairs=two, shard_pairs=SHARD_PAIRS, format="jsonl", progress=False),
                      ModelArguments(model=str(tiny_model_dir)), ScoringArguments())
    assert manifest["input"]["fingerprint"] == read_pairs(two).fingerprint() != candidates.fingerprint()
    assert sorted(p.name for p in (out / SCORES_DIR).iterdir()) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert list(shard_tables(out).values()) == list(shard_tables(local_out).values())[:2]
    assert (out / RUN_FILE).read_text() == "".join((local_out / RUN_FILE).read_text().splitlines(keepends=True)[:12])


def test_a_rerun_scores_only_the_missing_shards(local_out, candidates_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(local_out, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / SCORES_DIR).iterdir()}
    for name in ("shard-00001.parquet", "shard-00003.parquet"):
        (out / SCORES_DIR / name).unlink()
    (out / RUN_FILE).unlink()
    stale = out / SCORES_DIR / ".shard-00001.parquet.x1y2.tmp"  # what a killed atomic write leaves
    stale.write_bytes(b"half a shard")

    manifest = rerank(beir_args(candidates_dir, out), ModelArguments(model=str(tiny_model_dir)), ScoringArguments())
    session = manifest["sessions"][-1]
    assert session["shards_scored"] == 2
    assert session["pairs_scored"] == manifest["shards"][1]["pairs"] + manifest["shards"][3]["pairs"]
    assert not stale.exists()
    after = {p.name: p.stat().st_mtime_ns for p in (out / SCORES_DIR).iterdir()}
    assert after.keys() == before.keys()
    assert [n for n in after if after[n] != before[n]] == ["shard-00001.parquet", "shard-00003.parquet"]
    assert shard_tables(out) == shard_tables(local_out)
    assert (out / RUN_FILE).read_text() == (local_out / RUN_FILE).read_text()

    again = rerank(beir_args(candidates_dir, out), ModelArguments(model=str(tiny_model_dir)), ScoringArguments())
    assert again["sessions"][-1]["shards_scored"] == 0 and len(again["sessions"]) == len(manifest["sessions"]) + 1


def test_a_folder_of_other_inputs_model_or_settings_is_refused(local_out, candidates_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(local_out, out)
    model = ModelArguments(model=str(tiny_model_dir))
    fewer = tmp_path / "run.trec"
    fewer.write_text("".join((candidates_dir / "run.trec").read_text().splitlines(keepends=True)[1:]))
    args = RerankArguments(out=out, data=candidates_dir / "beir", run=fewer, shard_pairs=SHARD_PAIRS, progress=False)
    with pytest.raises(ValueError, match="other inputs.*input:"):
        rerank(args, model, ScoringArguments())

    other_model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, other_model)
    config = json.loads((other_model / "config.json").read_text())
    (other_model / "config.json").write_text(json.dumps({**config, "score_temperature": 2.0}))
    with pytest.raises(ValueError, match="model:"):
        rerank(beir_args(candidates_dir, out), ModelArguments(model=str(other_model)), ScoringArguments())
    with pytest.raises(ValueError, match="format:"):
        rerank(beir_args(candidates_dir, out, format="jsonl"), model, ScoringArguments())
    with pytest.raises(ValueError, match="instruction:"):
        rerank(beir_args(candidates_dir, out), model, ScoringArguments(instruction="Find abstracts."))
    assert shard_tables(out) == shard_tables(local_out)  # a refused run changes nothing

    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "scored_dtype": "bfloat16"}))
    (out / SCORES_DIR / "shard-00004.parquet").unlink()
    with pytest.raises(ValueError, match="were scored in bfloat16, this run scores in float32"):
        rerank(beir_args(candidates_dir, out), model, ScoringArguments())
    assert not (out / SCORES_DIR / "shard-00004.parquet").exists()

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not a rerank")
    with pytest.raises(FileExistsError, match="has no manifest.json"):
        rerank(beir_args(candidates_dir, stranger), model, ScoringArguments())


def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_output(tiny_model_dir, tmp_path):
    rows = [(f"q{i}", f"what do we know about topic {i}", f"d{i}-{j}", f"document {j} on topic {i} " * (1 + j))
            for i in range(30) for j in range(2)]
    pairs = write_pairs_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "zerank.cli", "rerank", "--model", str(tiny_model_dir), "--pairs", str(pairs),
               "--out", str(out), "--shard-pairs", "2", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and len(list(out.glob(f"{SCORES_DIR}/shard-*"))) < 2:
            assert time.monotonic() < deadline, "the rerank wrote no shard in 300 s"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    finished = sorted(out.glob(f"{SCORES_DIR}/shard-*"))
    assert 2 <= len(finished) < 30 and not (out / RUN_FILE).exists()
    assert not json.loads((out / MANIFEST).read_text())["complete"]
    assert all(pq.read_table(p).num_rows == 2 for p in finished)  # no half shard under a shard's name

    args = {"pairs": pairs, "shard_pairs": 2, "progress": False}
    model = ModelArguments(model=str(tiny_model_dir))
    resumed = rerank(RerankArguments(out=out, **args), model, ScoringArguments())
    assert resumed["sessions"][-1]["shards_scored"] == 30 - len(finished)
    reference = tmp_path / "reference"
    rerank(RerankArguments(out=reference, **args), model, ScoringArguments())
    assert shard_tables(out) == shard_tables(reference)
    assert (out / RUN_FILE).read_text() == (reference / RUN_FILE).read_text()


def test_the_ray_actor_scores_a_shard_as_the_local_engine(local_out, candidates_dir, tiny_model_dir):
    candidates = read_beir_candidates(candidates_dir / "beir", candidates_dir / "run.trec")
    shard = plan_shards(candidates, SHARD_PAIRS)[2]
    actor = ShardScorer(ModelArguments(model=str(tiny_model_dir)), ScoringArguments(), seed=0, threads=None)
    batch = pa.table({"shard": [2], "query": [[candidates.queries[i] for i in shard.rows]],
                      "document": [[candidates.documents[i] for i in shard.rows]]})
    result = actor(batch)
    assert result.column("shard").to_pylist() == [2] and result.column("dtype").to_pylist() == ["float32"]
    local = read_scores(local_out / SCORES_DIR / "shard-00002.parquet")
    np.testing.assert_array_equal(result.column("raw_logit")[0].values.to_numpy(), local.column("raw_logit").to_numpy())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")  # Ray Data's own context fields
def test_the_ray_engine_writes_what_the_local_engine_writes(local_out, candidates_dir, tiny_model_dir, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        out = tmp_path / "out"
        manifest = rerank(beir_args(candidates_dir, out, engine="ray", workers=2),
                          ModelArguments(model=str(tiny_model_dir)), ScoringArguments())
    finally:
        ray.shutdown()
    assert manifest["sessions"][-1]["workers"] == 2
    local = json.loads((local_out / MANIFEST).read_text())
    assert {k: manifest[k] for k in ("input", "model", "output", "shards", "complete", "scored_dtype")} == {
        k: local[k] for k in ("input", "model", "output", "shards", "complete", "scored_dtype")}
    assert shard_tables(out) == shard_tables(local_out)
    assert (out / RUN_FILE).read_text() == (local_out / RUN_FILE).read_text()


ROW = '{"query_id": "q1", "query": "a", "doc_id": "d1", "document": "x"}\n'
MALFORMED_JSONL = [
    (ROW + '{"query_id": "q1", "query": "a"', r"pairs\.jsonl:2: not valid JSON"),
    ('{"query_id": "q1", "query": "a", "doc_id": "d1"}\n', r"pairs\.jsonl:1: missing field\(s\) \['document'\]"),
    ('\n{"query_id": "q1", "query": "a", "doc_id": "d1", "document": 3}\n',
     r"pairs\.jsonl:2: 'document' must be a string"),
    ('{"query_id": "q 1", "query": "a", "doc_id": "d1", "document": "x"}\n',
     r"pairs\.jsonl:1: 'query_id' 'q 1' is empty or holds whitespace"),
    (ROW + ROW.replace('"a"', '"b"').replace("d1", "d2"),
     r"pairs\.jsonl:2: query 'q1' has another text than at .*pairs\.jsonl:1"),
    (ROW + ROW, r"pairs\.jsonl:2: the pair \(q1, d1\) is repeated \(first at .*pairs\.jsonl:1\)"),
    ('["q1", "a", "d1", "x"]\n', r"pairs\.jsonl:1: expected an object"),
    ("\n", r"pairs\.jsonl holds no candidate pair"),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED_JSONL)
def test_malformed_pairs_rows_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / "pairs.jsonl").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_pairs(tmp_path / "pairs.jsonl")


def test_malformed_parquet_rows_and_beir_inputs_name_the_file_and_row_or_line(candidates_dir, tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query_id": ["q1", "q2"], "query": ["a", None], "doc_id": ["d1", "d2"],
                             "document": ["x", "y"]}), path)
    with pytest.raises(ValueError, match=r"pairs\.parquet: row 2: 'query' must be a string"):
        read_pairs(path)
    pq.write_table(pa.table({"query_id": ["q1"], "query": ["a"]}), path)
    with pytest.raises(ValueError, match=r"pairs\.parquet: missing column\(s\) \['doc_id', 'document'\]"):
        read_pairs(path)

    beir = candidates_dir / "beir"
    run = tmp_path / "run.trec"
    run.write_text("q0 Q0 d0-pos0 1 2.0 bm25\nq0 Q0 nowhere 2 1.0 bm25\n")
    with pytest.raises(ValueError, match=r"run\.trec:2: document 'nowhere' is not in .*corpus\.jsonl"):
        read_beir_candidates(beir, run)
    run.write_text("q0 Q0 d0-pos0 1 2.0 bm25\nq99 Q0 d0-pos0 1 1.0 bm25\n")
    with pytest.raises(ValueError, match=r"run\.trec:2: query 'q99' is not in .*queries\.jsonl"):
        read_beir_candidates(beir, run)
    run.write_text("q0 Q0 d0-pos0 1 bm25\n")
    with pytest.raises(ValueError, match=r"run\.trec:1: a TREC run line has 6 fields"):
        read_beir_candidates(beir, run)
    broken = tmp_path / "beir"
    shutil.copytree(beir, broken)
    with (broken / "queries.jsonl").open("a") as f:
        f.write('{"_id": "q0"}\n')
    lines = len((broken / "queries.jsonl").read_text().splitlines())
    with pytest.raises(ValueError, match=rf"queries\.jsonl:{lines}: missing field\(s\) \['text'\]; BEIR rows need"):
        read_beir_candidates(broken, candidates_dir / "run.trec")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "either --data and --run, or --pairs"),
    ({"pairs": Path("p.jsonl"), "data": Path("beir")}, "either --data and --run, or --pairs"),
    ({"data": Path("beir")}, "--data and --run go together"),
    ({"pairs": Path("p.csv")}, "must be a .jsonl or .parquet file"),
    ({"pairs": Path("p.jsonl"), "shard_pairs": 0}, "--shard-pairs must be at least 1"),
    ({"pairs": Path("p.jsonl"), "workers": 2}, "need --engine ray"),
    ({"pairs": Path("p.jsonl"), "engine": "ray", "cpus_per_worker": 0}, "--cpus-per-worker must be positive"),
])
def test_rerank_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RerankArguments(out=Path("out"), **kwargs)


def test_shards_hold_whole_queries_and_depend_only_on_the_rows(candidates_dir):
    candidates = read_beir_candidates(candidates_dir / "beir", candidates_dir / "run.trec")
    shards = plan_shards(candidates, 13)
    assert [len(s.rows) for s in shards] == [12] * 6 and [s.queries for s in shards] == [2] * 6
    assert [len(s.rows) for s in plan_shards(candidates, 4)] == [6] * 12  # a query larger than a shard: alone
    assert plan_shards(candidates, 13) == shards
