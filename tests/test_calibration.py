"""zerank.evaluation.calibration: the temperature/bias fit, calibration metrics, labelled pairs, the cache and --write."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from evaluate_data import write_synthetic_beir
from sentence_transformers import CrossEncoder

from zerank.evaluation import calibration
from zerank import cli
from zerank.evaluation.calibration import (
    CACHE_KEY_IGNORED_FIELDS,
    MAX_TEMPERATURE,
    calibration_metrics,
    fit_temperature_bias,
    load_pairs,
    precision_thresholds,
)
from zerank.data.readers import load_beir, pairs_from_beir
from zerank.model.fingerprint import model_fingerprint
from zerank.evaluation.first_stage import BM25Settings, FirstStage
from zerank.model.scoring import calibrated_score


def calibrate(*argv: str) -> dict:
    return cli.main(["calibrate", *argv])


def logistic_sample(temperature, bias, n, seed):
    rng = np.random.default_rng(seed)
    raw = rng.normal(bias, 3 * temperature, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(raw - bias) / temperature))).astype(float)
    return raw, labels


# --- fit and metrics --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature, bias", [(3.0, 2.0), (0.5, -1.5), (12.0, 6.0)])
def test_fit_recovers_the_temperature_and_bias_of_a_logistic_model(temperature, bias):
    raw, labels = logistic_sample(temperature, bias, 50_000, seed=1)
    fitted_t, fitted_b = fit_temperature_bias(raw, labels)
    assert fitted_t == pytest.approx(temperature, rel=0.05)
    assert fitted_b == pytest.approx(bias, rel=0.05)


def test_fitting_lowers_calibration_error_on_held_out_data():
    raw, labels = logistic_sample(3.0, 2.0, 20_000, seed=2)
    temperature, bias = fit_temperature_bias(raw[:10_000], labels[:10_000])
    before = calibration_metrics(calibrated_score(raw[10_000:], 5.0, 0.0), labels[10_000:])
    after = calibration_metrics(calibrated_score(raw[10_000:], temperature, bias), labels[10_000:])
    assert after["ece"] < before["ece"] / 3
    assert after["log_loss"] < before["log_loss"] and after["brier"] < before["brier"]


def test_calibration_metrics_known_values():
    y = np.array([0, 0, 1, 1.0])
    assert calibration_metrics(y.copy(), y) == pytest.approx({"log_loss": 0.0, "brier": 0.0, "ece": 0.0}, abs=1e-9)
    half = calibration_metrics(np.full(4, 0.5), y)
    assert half == pytest.approx({"log_loss": math.log(2), "brier": 0.25, "ece": 0.0})
    # Two bins: scores 0.1 (observed 0.5) and 0.9 (observed 1.0): ECE = 0.5 * 0.4 + 0.5 * 0.1.
    skewed = calibration_metrics(np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 1, 1, 1.0]))
    assert skewed["ece"] == pytest.approx(0.25)
    assert skewed["brier"] == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)


def test_precision_thresholds_pick_the_lowest_score_reaching_each_target():
    p = np.array([0.95, 0.9, 0.8, 0.8, 0.6, 0.3, 0.2])
    y = np.array([1, 1, 1, 0, 1, 0, 0.0])
    result = precision_thresholds(p, y, targets=(0.8, 1.0))
    assert result["1.0"] == {"threshold": 0.9, "precision": 1.0, "recall": 0.5}
    assert result["0.8"] == {"threshold": 0.6, "precision": 0.8, "recall": 1.0}  # the 0.8 tie is kept together
    assert precision_thresholds(p, np.zeros(7), targets=(0.5,))["0.5"] is None


def test_fit_rejects_unusable_input_and_never_inverts_the_ranking():
    with pytest.raises(ValueError, match="both relevant and irrelevant"):
        fit_temperature_bias(np.arange(4.0), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature_bias(np.array([0.0, np.nan]), np.array([0, 1.0]))
    with pytest.raises(ValueError, match="0 or 1"):
        fit_temperature_bias(np.arange(3.0), np.array([0, 2, 1.0]))
    raw, labels = logistic_sample(2.0, 0.0, 2000, seed=3)
    temperature, _ = fit_temperature_bias(raw, 1 - labels)  # labels opposed to the scores
    assert temperature == pytest.approx(MAX_TEMPERATURE, rel=1e-3)
    separated = fit_temperature_bias(np.array([0.0, 1, 2, 3, 10, 11, 12, 13]), np.array([0, 0, 0, 0, 1, 1, 1, 1.0]))
    assert 0 < separated[0] < 10 and 3 < separated[1] < 10  # finite, with the boundary between the classes


# --- labelled pairs ---------------------------------------------------------------------------------------------

def test_load_pairs_from_a_beir_folder_are_the_first_stage_labelled(tmp_path):
    """load_pairs = the first stage's top k + data.pairs_from_beir (whose rules tests/test_data.py checks)."""
    folder = write_synthetic_beir(tmp_path / "beir", n_queries=6)
    first_stage = FirstStage("bm25", BM25Settings(stemmer="none"))
    data = load_beir(folder, "test")
    candidates = first_stage.retrieve(data, data.judged_query_ids, 4)
    for level in (1, 2):
        pairs = load_pairs(folder, split="test", first_stage=first_stage, top_k=4, relevance_level=level)
        expected = pairs_from_beir(data, data.judged_query_ids, candidates, relevance_level=level)
        assert pairs.pairs == expected.pairs and pairs.groups == expected.groups
        assert (pairs.labels == expected.labels).all()
    assert set(load_pairs(folder, first_stage=first_stage, top_k=4, max_queries=2).groups) == {"q0", "q1"}


def test_load_pairs_from_jsonl_and_other_files(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "q1", "document": "a", "label": 2}) + "\n"
                    + json.dumps({"query": "q2", "positive": "c", "negatives": ["d"]}) + "\n")
    assert load_pairs(path, relevance_level=3).labels.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="BEIR folder or a .jsonl"):
        load_pairs(tmp_path / "pairs.csv")


# --- the raw-logit cache key ------------------------------------------------------------------------------------

def test_model_fingerprint_ignores_calibration_and_batching_fields_only(tiny_model_dir, tmp_path):
    assert {"score_temperature", "score_bias", "max_batch_tokens", "cpu_max_batch_tokens",
            "accelerator_max_batch_tokens", "share_query_prefix", "min_shared_prefix_tokens"} <= set(
        CACHE_KEY_IGNORED_FIELDS)
    assert not {"yes_token_id", "max_query_tokens"} & set(CACHE_KEY_IGNORED_FIELDS)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    fingerprint = partial(model_fingerprint, ignored_config_fields=CACHE_KEY_IGNORED_FIELDS)
    reference = fingerprint(str(model))
    config = json.loads((model / "config.json").read_text())
    for key, value in {"score_temperature": 2.0, "score_bias": 1.0, "cpu_max_batch_tokens": 64,
                       "share_query_prefix": False, "max_batch_tokens": 128}.items():
        (model / "config.json").write_text(json.dumps({**config, key: value}))
        assert fingerprint(str(model)) == reference, key
    for key, value in {"yes_token_id": 1, "max_query_tokens": 16}.items():
        (model / "config.json").write_text(json.dumps({**config, key: value}))
        assert fingerprint(str(model)) != reference, key
    (model / "config.json").write_text(json.dumps(config))
    assert fingerprint(str(model)) == reference
    assert fingerprint("org/some-hub-id") == fingerprint("org/some-hub-id") != fingerprint("org/other-hub-id")


# --- command line on the tiny model -----------------------------------------------------------------------------

@pytest.fixture()
def labelled_jsonl(tiny_cross_encoder, tmp_path):
    """Pairs whose labels follow a logistic model of the tiny model's own raw logits, so the fit has a signal."""
    rng = np.random.default_rng(0)
    queries = [f"question {i} about topic {i * 7}" for i in range(6)]
    docs = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma"], 8)) for _ in range(16)]
    pairs = [(q, d) for q in queries for d in docs]
    raw = tiny_cross_encoder.predict(pairs, activation_fn=torch.nn.Identity()) * 5.0
    center, scale = np.median(raw), raw.std() / 3
    labels = rng.random(len(raw)) < 1 / (1 + np.exp(-(raw - center) / scale))
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps({"query": q, "document": d, "label": int(y)}) + "\n"
                            for (q, d), y in zip(pairs, labels)))
    return path, pairs, raw


def test_calibrate_cli_writes_a_config_that_scores_as_fitted_and_reuses_its_cache(
        tiny_model_dir, labelled_jsonl, tmp_path, monkeypatch):
    path, pairs, raw = labelled_jsonl
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    original = (model / "config.json").read_text()
    out = tmp_path / "calib"
    result = calibrate("--model", str(model), "--data", str(path), "--output-dir", str(out), "--write")

    saved = json.loads((out / "calibration.json").read_text())
    assert saved["temperature"] == result["temperature"] and saved["bias"] == result["bias"]
    assert 0 < saved["temperature"] < 5.0  # the labels are sharper than the default temperature
    for part in ("before", "after"):
        assert set(saved[part]) == {"log_loss", "brier", "ece"}
    assert saved["fit_log_loss"]["after"] <= saved["fit_log_loss"]["before"] + 1e-12  # the fit is the minimum
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "| after (T=" in (out / "calibration.md").read_text()
    assert json.loads(Path(result["backup"]).read_text()) == json.loads(original)
    assert Path(result["backup"]).parent == out and not list(model.glob("*.bak"))  # kept outside the package
    assert set(saved["thresholds"]["after"]) == {"0.5", "0.8", "0.9", "0.95"}  # the default targets
    assert not list(out.glob(".*.tmp")) and not list(model.glob(".*.tmp"))  # atomic writes leave nothing behind

    scores = CrossEncoder(str(model), trust_remote_code=True, device="cpu").predict(pairs)
    expected = 1 / (1 + np.exp(-(raw.astype(np.float64) - saved["bias"]) / saved["temperature"]))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although its raw logits are cached")

    monkeypatch.setattr(calibration, "load_from_arguments", no_model)
    again = calibrate("--model", str(model), "--data", str(path), "--output-dir", str(out),
                      "--precision-targets", "0.7", "0.99", "--max-batch-tokens", "256")
    assert again["cache"]["hit"] and again["temperature"] == pytest.approx(saved["temperature"], rel=1e-9)
    assert again["initial"] == {"temperature": saved["temperature"], "bias": saved["bias"]}
    assert set(again["thresholds"]["after"]) == {"0.7", "0.99"}  # space-separated targets


def test_calibrate_cli_on_a_beir_folder_and_its_argument_errors(tiny_model_dir, tmp_path, capsys):
    folder = write_synthetic_beir(tmp_path / "beir", n_queries=6)
    out = tmp_path / "calib"
    result = calibrate("--model", str(tiny_model_dir), "--data", str(folder), "--top-k", "3", "--bm25-stemmer",
                       "none", "--output-dir", str(out))
    assert result["fit"]["queries"] + result["heldout"]["queries"] == 6
    assert result["fit"]["pairs"] + result["heldout"]["pairs"] == len(np.load(result["cache"]["file"])["raw"])
    assert result["fit_log_loss"]["after"] <= result["fit_log_loss"]["before"] + 1e-12
    assert not list(tiny_model_dir.glob("config.json.*.bak"))  # no --write, no change
    with pytest.raises(SystemExit) as error:
        calibrate("--model", "org/some-hub-id", "--data", str(folder), "--output-dir", str(out), "--write")
    assert error.value.code == 2 and "--write needs --model to be a local folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="BEIR folder or a .jsonl"):
        calibrate("--model", str(tiny_model_dir), "--data", str(tmp_path / "pairs.csv"), "--output-dir", str(out))
    capsys.readouterr()
    with pytest.raises(SystemExit) as error:
        calibrate("--model", str(tiny_model_dir), "--data", str(folder), "--output-dir", str(out),
                  "--precision-targets", "0.5", "1.5")
    assert error.value.code == 2 and "--precision-targets" in capsys.readouterr().err


# Imports zerank.evaluation.calibration once, then for each number K on stdin forks a child that runs write_calibration with
# an audit hook pausing it before its Kth file operation (open, rename, remove) in the model or backup folder: the
# child prints `PAUSED PID EVENT PATH` and waits to be killed. `EXIT STATUS` when the child is gone.
PAUSING_WRITES = r"""
import os, signal, sys
from zerank.evaluation.calibration import write_calibration

model, backups = sys.argv[1:3]
for line in sys.stdin:
    k = int(line)
    pid = os.fork()
    if pid == 0:
        seen = []

        def pause_at_kth(event, args):
            if event in ("open", "os.rename", "os.remove") and str(args[0]).startswith((model, backups)):
                seen.append(event)
                if len(seen) == k:
                    print("PAUSED", os.getpid(), event, args[0], flush=True)
                    signal.pause()

        sys.addaudithook(pause_at_kth)
        try:
            write_calibration(model, 2.5, -1.25, backups)
        finally:
            os._exit(0)
    print("EXIT", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_write_killed_at_every_file_operation_leaves_the_old_or_the_new_config(tiny_model_dir, tmp_path):
    """SIGKILL before each file operation of ``calibrate --write``: config.json is always the old or the new one,
    whole; the backup, when there is one, is whole and outside the package, which gains no visible file."""
    from zerank.packaging.publish import folder_contents

    model, backups = tmp_path / "model", tmp_path / "calib"
    shutil.copytree(tiny_model_dir, model)
    original = (model / "config.json").read_bytes()
    old = json.loads(original)
    new = {**old, "score_temperature": 2.5, "score_bias": -1.25}
    package = sorted(p.name for p in model.iterdir())
    writes = subprocess.Popen([sys.executable, "-c", PAUSING_WRITES, str(model), str(backups)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    killed_at = []
    for k in itertools.count(1):
        (model / "config.json").write_bytes(original)
        writes.stdin.write(f"{k}\n")
        writes.stdin.flush()
        word, *rest = writes.stdout.readline().split()
        if word == "EXIT":  # the whole write ran: no Kth operation
            assert rest == ["0"]
            break
        os.kill(int(rest[0]), signal.SIGKILL)
        assert writes.stdout.readline().split() == ["EXIT", str(-signal.SIGKILL)]
        killed_at.append(" ".join(rest[1:]))
        assert json.loads((model / "config.json").read_text()) in (old, new), f"killed before {killed_at[-1]}"
        assert sorted(p.name for p in model.iterdir() if not p.name.startswith(".")) == package
        assert all(json.loads(b.read_text()) == old for b in backups.glob("config.json.*.bak"))
    writes.stdin.close()
    assert writes.wait() == 0
    assert any(event.startswith("os.rename") and "/model/" in event for event in killed_at), killed_at
    assert len(killed_at) >= 4, killed_at
    assert json.loads((model / "config.json").read_text()) == new
    assert sorted(folder_contents(model).upload) == sorted(set(package) - {"build_report.json"})
