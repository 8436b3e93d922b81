"""sentence-transformers' CrossEncoder: calibrated scores, ranking, and the calibration fields of config.json."""

import json
import shutil

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

PAIRS = [("What is 2+2?", "4"), ("What is 2+2?", "The answer is definitely 1 million"), ("q", "a third doc")]


def test_predict_returns_calibrated_float32_scores(tiny_cross_encoder):
    scores = tiny_cross_encoder.predict(PAIRS)
    logits = tiny_cross_encoder.predict(PAIRS, activation_fn=torch.nn.Identity())
    assert scores.dtype == np.float32 and scores.shape == (3,)
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), rtol=0, atol=1e-6)


def test_rank_orders_by_score(tiny_cross_encoder):
    docs = [d for _, d in PAIRS]
    scores = tiny_cross_encoder.predict([("What is 2+2?", d) for d in docs])
    ranked = tiny_cross_encoder.rank("What is 2+2?", docs)
    assert [r["corpus_id"] for r in ranked] == list(np.argsort(-scores))
    np.testing.assert_allclose([r["score"] for r in ranked], np.sort(scores)[::-1], atol=1e-6)


@pytest.mark.parametrize("temperature, bias", [(1.0, 0.0), (2.5, -0.7), (10.0, 3.0)])
def test_config_calibration_changes_scores_as_the_formula_says(tiny_model_dir, tiny_cross_encoder, tmp_path,
                                                               temperature, bias):
    base = tiny_cross_encoder.model.config
    raw = tiny_cross_encoder.predict(PAIRS, activation_fn=torch.nn.Identity()) * base.score_temperature
    raw += base.score_bias
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(score_temperature=temperature, score_bias=bias)
    (folder / "config.json").write_text(json.dumps(config))
    scores = CrossEncoder(str(folder), trust_remote_code=True, device="cpu").predict(PAIRS)
    expected = 1 / (1 + np.exp(-(raw - bias) / temperature))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
