"""zELO (zerank.training.zelo, zerank.training.zelo_commands): the random-cycles design, the Bradley-Terry / Thurstone fit and its
standard errors, the cross-query normalisation, the file formats and the three commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from evaluate_data import write_synthetic_beir
from scipy.special import expit, ndtr
from scipy.stats import spearmanr

from zerank.training import zelo
from zerank.cli import main as cli_main
from zerank.training.zelo_commands import pointwise_judgments, read_pairs

SEEDS = range(20)


def simulate(n: int, cycles: int, seed: int, *, binary: bool, link: str = "bradley-terry") -> float:
    """Spearman between the latent relevances (N(0, 1)) of n documents and their ratings fitted from ``cycles``
    random cycles of judgments by a known judge: the link's probability plus N(0, 0.1) noise, clipped (an
    ensemble's soft preference), or one outcome drawn from it (a single binary judge)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(0.0, 1.0, n)
    a, b = np.array(zelo.random_cycles(n, cycles, rng)).T
    p = (expit if link == "bradley-terry" else ndtr)(latent[a] - latent[b])
    p = (rng.random(len(p)) < p).astype(float) if binary else np.clip(p + rng.normal(0.0, 0.1, len(p)), 0.0, 1.0)
    fit = zelo.fit_ratings(n, a, b, p, link=link)
    assert fit.converged
    return float(spearmanr(fit.ratings, latent)[0])


# --- the design ---


@pytest.mark.parametrize("n, cycles", [(2, 1), (3, 2), (50, 2), (100, 4)])
def test_random_cycles_give_every_document_2c_comparisons_on_a_connected_graph(n, cycles):
    edges = zelo.random_cycles(n, cycles, np.random.default_rng(0))
    assert len(edges) == cycles * n
    assert np.bincount(np.array(edges).reshape(-1), minlength=n).tolist() == [2 * cycles] * n
    assert zelo.components(n, edges) == 1
    assert all(a != b for a, b in edges)
    assert edges == zelo.random_cycles(n, cycles, np.random.default_rng(0))  # seeded
    assert edges != zelo.random_cycles(n, cycles, np.random.default_rng(1)) or n <= 3


def test_the_design_check_rejects_uneven_degrees_and_disconnected_graphs():
    assert zelo.random_cycles(1, 3, np.random.default_rng(0)) == []
    with pytest.raises(ValueError, match="degrees"):
        zelo.check_design(4, [(0, 1), (1, 2), (2, 0)], 2)
    with pytest.raises(ValueError, match="not connected"):
        zelo.check_design(4, [(0, 1), (1, 0), (2, 3), (3, 2)], 2)
    with pytest.raises(ValueError, match="at least 1"):
        zelo.random_cycles(5, 0, np.random.default_rng(0))


# --- recovery of a latent order ---


def test_soft_judgments_on_two_cycles_recover_the_latent_order():
    # Measured over these 20 seeds: 2 cycles (k = 4 comparisons per document, 100 judgments for 50 documents)
    # median Spearman 0.948 (min 0.923); 4 cycles (k = 8) median 0.976 (min 0.963).
    two = [simulate(50, 2, seed, binary=False) for seed in SEEDS]
    four = [simulate(50, 4, seed, binary=False) for seed in SEEDS]
    assert np.median(two) >= 0.93 and min(two) >= 0.90
    assert np.median(four) >= 0.96 and min(four) >= 0.94


def test_binary_judges_need_about_sixteen_times_the_cycles():
    # Measured over these 20 seeds (median Spearman): 2 cycles 0.571, 4: 0.732, 8: 0.850, 16: 0.907, 32: 0.949,
    # i.e. single binary outcomes need ~32 cycles to match what soft preferences reach with 2.
    assert np.median([simulate(50, 2, seed, binary=True) for seed in SEEDS]) <= 0.70
    assert np.median([simulate(50, 32, seed, binary=True) for seed in SEEDS]) >= 0.93


def test_thurstone_fit_recovers_a_probit_judge():
    assert np.median([simulate(50, 2, seed, binary=False, link="thurstone") for seed in range(10)]) >= 0.93


def test_standard_errors_match_the_spread_of_refits():
    rng = np.random.default_rng(0)
    n = 30
    latent = rng.normal(0.0, 1.0, n)
    a, b = np.array(zelo.random_cycles(n, 8, rng)).T
    p = expit(latent[a] - latent[b])
    fits = [zelo.fit_ratings(n, a, b, (rng.random(len(p)) < p).astype(float)) for _ in range(100)]
    spread = np.std([f.ratings for f in fits], axis=0)
    stderr = np.mean([f.stderr for f in fits], axis=0)
    assert np.median(spread / stderr) == pytest.approx(1.0, abs=0.2)  # measured 1.04


# --- degenerate data stay finite ---


def test_unanimous_judgments_give_finite_ordered_ratings():
    # A chain where the better document always wins (p = 1): the unpenalised likelihood has no maximum.
    n = 6
    a, b = np.arange(n - 1), np.arange(1, n)
    for link in zelo.LINKS:
        fit = zelo.fit_ratings(n, a, b, np.ones(n - 1), link=link)
        assert fit.converged and np.isfinite(fit.ratings).all() and np.isfinite(fit.stderr).all()
        assert (np.diff(fit.ratings) < 0).all() and np.abs(fit.ratings).max() < 20
        assert fit.ratings.mean() == pytest.approx(0.0, abs=1e-6)


def test_disconnected_judgments_centre_each_part():
    judgments = [zelo.Judgment("q", "a", "b", 0.9, "q"), zelo.Judgment("q", "b", "c", 0.8, "q"),
                 zelo.Judgment("q", "x", "y", 0.3, "q")]
    query = zelo.fit_query(judgments)
    assert query.components == 2 and query.fit.converged
    ratings = dict(zip(query.doc_ids, query.fit.ratings))
    assert ratings["a"] + ratings["b"] + ratings["c"] == pytest.approx(0.0, abs=1e-6)
    assert ratings["x"] + ratings["y"] == pytest.approx(0.0, abs=1e-6)
    assert ratings["a"] > ratings["b"] > ratings["c"] and ratings["y"] > ratings["x"]


# --- across queries ---


def cross_query_simulation(seed: int, with_cross: bool) -> tuple[np.ndarray, np.ndarray]:
    """(true absolute relevance, fitted Elo) of every document of 30 queries whose difficulty differs (query
    offsets N(0, 2^2)), judged by a soft logistic judge within queries and, optionally, across queries."""
    rng = np.random.default_rng(seed)
    offsets = rng.normal(0.0, 2.0, 30)
    latent = {f"q{i}": offsets[i] + rng.normal(0.0, 1.0, 20) for i in range(30)}
    judgments = []

    def judge(qa, da, qb, db):
        p = float(np.clip(expit(latent[qa][da] - latent[qb][db]) + rng.normal(0.0, 0.1), 0.0, 1.0))
        judgments.append(zelo.Judgment(qa, f"d{da}", f"d{db}", p, qb))

    for qid in latent:
        for a, b in zelo.random_cycles(20, 2, rng):
            judge(qid, a, qid, b)
    if with_cross:
        names = list(latent)
        for a, b in zelo.random_cycles(30, 4, rng):
            judge(names[a], int(rng.integers(20)), names[b], int(rng.integers(20)))
    scores = zelo.fit_elo(judgments)
    fitted = {(row["query_id"], row["doc_id"]): row["elo"] for row in scores.rows()}
    keys = sorted(fitted)
    return np.array([latent[q][int(d[1:])] for q, d in keys]), np.array([fitted[k] for k in keys])


def test_cross_query_biases_put_all_queries_on_one_scale():
    # Measured (seeds 0, 1, 2): Spearman with the absolute relevance 0.961, 0.966, 0.963 with 4 query cycles (120
    # cross-query judgments for 1,200 within-query ones); 0.490, 0.509, 0.422 with the per-query ratings alone.
    truth, normalised = cross_query_simulation(0, with_cross=True)
    _, per_query = cross_query_simulation(0, with_cross=False)
    assert spearmanr(truth, normalised)[0] >= 0.9
    assert spearmanr(truth, per_query)[0] <= 0.6


def test_the_bias_fit_reports_anchored_queries_and_adds_its_stderr():
    judgments = [zelo.Judgment("q1", "a", "b", 0.8, "q1"), zelo.Judgment("q2", "c", "d", 0.5, "q2"),
                 zelo.Judgment("q3", "e", "f", 0.5, "q3"), zelo.Judgment("q1", "b", "c", 0.9, "q2")]
    scores = zelo.fit_elo(judgments)
    assert scores.anchored == {"q1", "q2"} and scores.bias["q3"] == 0.0
    assert scores.bias["q1"] > 0 > scores.bias["q2"]
    rows = {(r["query_id"], r["doc_id"]): r for r in scores.rows()}
    se_b = scores.queries["q1"].fit.stderr[scores.queries["q1"].doc_ids.index("b")]
    assert rows["q1", "b"]["stderr"] == pytest.approx(np.hypot(se_b, scores.bias_stderr["q1"]))
    assert rows["q1", "b"]["elo"] == pytest.approx(scores.queries["q1"].fit.ratings[1] + scores.bias["q1"])
    with pytest.raises(ValueError, match="which no within-query judgment rates"):
        zelo.fit_elo([*judgments, zelo.Judgment("q1", "zz", "c", 0.5, "q2")])


# --- files ---


@pytest.mark.parametrize("row, message", [
    ({"query_id": "q", "doc_a": "a", "doc_b": "b", "p_a_wins": 1.5}, "must be a number in \\[0, 1\\]"),
    ({"query_id": "q", "doc_a": "a", "doc_b": "b", "p_a_wins": 0.5, "winner": "a"}, "exactly one of"),
    ({"query_id": "q", "doc_a": "a", "doc_b": "b"}, "exactly one of"),
    ({"query_id": "q", "doc_a": "a", "doc_b": "b", "winner": "c"}, "'winner' must be 'a' or 'b'"),
    ({"query_id": "q", "doc_a": "a", "doc_b": "a", "winner": "a"}, "compared with itself"),
    ({"query_id": "q", "doc_b": "b", "winner": "a"}, "'doc_a' must be a non-empty string"),
    ({"query_id": "q", "doc_a": "a", "doc_b": "b", "p_a_wins": True}, "must be a number"),
    (["q", "a", "b"], "a judgment is a JSON object"),
])
def test_bad_judgments_name_the_file_and_line(tmp_path, row, message):
    path = tmp_path / "judgments.jsonl"
    good = {"query_id": "q", "doc_a": "a", "doc_b": "b", "winner": "b"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=f"judgments.jsonl:3: .*{message}"):
        zelo.read_judgments(path)


def test_judgment_rows_round_trip(tmp_path):
    path = tmp_path / "judgments.jsonl"
    rows = [{"query_id": "q", "doc_a": "a", "doc_b": "b", "winner": "a", "judge": "mine"},
            {"query_id": "q", "doc_a": "a", "doc_b": "c", "p_a_wins": 0.25},
            {"query_id": "q", "doc_a": "a", "query_id_b": "r", "doc_b": "a", "p_a_wins": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judgments = zelo.read_judgments(path)
    assert [j.p_a_wins for j in judgments] == [1.0, 0.25, 0.5] and [j.cross_query for j in judgments] == \
        [False, False, True]
    assert zelo.judgment_row(judgments[2]) == rows[2]
    bad = tmp_path / "elo.jsonl"
    bad.write_text(json.dumps({"query_id": "q", "doc_id": "a", "elo": "high"}) + "\n")
    with pytest.raises(ValueError, match="elo.jsonl:1: 'elo' must be a finite number"):
        zelo.read_elo(bad)


def test_bad_pairs_name_the_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    pair = {"query_id": "q", "doc_a": "a", "doc_b": "b", "query": "?", "document_a": "A", "document_b": "B"}
    path.write_text(json.dumps(pair) + "\n" + json.dumps({**pair, "query_id_b": "r"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: a pair needs string fields .*'query_b'"):
        read_pairs(path)
    path.write_text("")
    with pytest.raises(ValueError, match="holds no pair"):
        read_pairs(path)


def test_the_built_in_judge_compares_pointwise_logits():
    rows = [{"query_id": "q", "doc_a": "a", "doc_b": "b"}, {"query_id": "q", "doc_a": "b", "doc_b": "x",
                                                              "query_id_b": "r"}]
    logits = {("q", "a"): 2.0, ("q", "b"): 0.5, ("r", "x"): 1.0}
    judgments = pointwise_judgments(rows, logits)
    assert judgments[0].p_a_wins == pytest.approx(expit(1.5)) and judgments[1].p_a_wins == pytest.approx(expit(-0.5))
    assert judgments[1].query_id_b == "r"


# --- the commands ---


def test_pairs_judge_elo_run_end_to_end_on_a_beir_folder(tiny_model_dir, tmp_path):
    data = write_synthetic_beir(tmp_path / "beir", n_queries=6, splits={"train": 0.5, "test": 0.5})
    out = tmp_path / "zelo"
    pairs = cli_main(["pairs", "--data", str(data), "--split", "train", "--top-k", "5", "--cycles", "2",
                      "--query-cycles", "1", "--bm25-stemmer", "none", "--out", str(out / "pairs")])
    rows = [json.loads(line) for line in (out / "pairs" / "pairs.jsonl").read_text().splitlines()]
    within = [r for r in rows if "query_id_b" not in r]
    assert pairs["queries"] == 3 and pairs["cross_query_pairs"] == 3 == len(rows) - len(within)
    per_query = {q: sum(1 for r in within if r["query_id"] == q) for q in {r["query_id"] for r in within}}
    candidates = {}
    for line in (out / "pairs" / "candidates.trec").read_text().splitlines():
        candidates.setdefault(line.split()[0], set()).add(line.split()[2])
    assert per_query == {q: 2 * len(docs) for q, docs in candidates.items()}  # cycles x n

    judged = cli_main(["judge", "--pairs", str(out / "pairs" / "pairs.jsonl"), "--model", str(tiny_model_dir),
                       "--device", "cpu", "--out", str(out / "judged")])
    judgments = zelo.read_judgments(out / "judged" / "judgments.jsonl")
    assert len(judgments) == len(rows) == judged["judgments"]
    assert judged["documents_scored"] == sum(len(d) for d in candidates.values())  # each (query, document) once
    assert all(0.0 < j.p_a_wins < 1.0 for j in judgments)

    report = cli_main(["elo", "--judgments", str(out / "judged" / "judgments.jsonl"), "--out", str(out / "elo")])
    scores = zelo.read_elo(out / "elo" / "elo.jsonl")
    assert {q: set(d) for q, d in scores.items()} == candidates
    assert report["anchored_queries"] == 3 and not report["not_converged_queries"]
    assert json.loads((out / "elo" / "report.json").read_text())["rows"] == report["rows"]
    # The built-in judge is a consistent Bradley-Terry judge (p = sigmoid of a logit difference): the fitted Elo
    # differences reproduce its log-odds, up to the prior's slight shrinkage.
    fitted = [scores[j.query_id][j.doc_a] - scores[j.query_id_b][j.doc_b] for j in judgments]
    log_odds = [np.log(j.p_a_wins / (1 - j.p_a_wins)) for j in judgments]
    assert np.corrcoef(fitted, log_odds)[0, 1] >= 0.99
    with pytest.raises(FileExistsError):
        cli_main(["elo", "--judgments", str(out / "judged" / "judgments.jsonl"), "--out", str(out / "elo")])


def test_command_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["elo", "--judgments", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        cli_main(["pairs", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--cycles", "0"])
    (tmp_path / "j.jsonl").write_text("")
    with pytest.raises(SystemExit):
        cli_main(["elo", "--judgments", str(tmp_path / "j.jsonl"), "--out", str(tmp_path / "o"), "--prior-sd", "0"])
