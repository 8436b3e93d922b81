"""zerank.model.scoring: the calibration formula, token-budget batching and order-preserving scoring."""

import numpy as np
import pytest
import torch

from zerank.model.scoring import (
    calibrated_logit,
    calibrated_score,
    pair_lengths,
    query_grouped_batches,
    raw_logit,
    score_pairs,
    template_overhead_tokens,
)


def test_query_grouped_batches_keep_queries_together_within_budget():
    queries = ["b", "a", "b", "a", "a", "c", "b"]
    lengths = [50, 10, 300, 40, 20, 500, 60]
    batches = query_grouped_batches(queries, lengths, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 400 or len(batch) == 1
        assert len({queries[i] for i in batch}) == 1
    assert [1, 3, 4] not in batches and [3, 4, 1] in batches  # query "a", longest first
    assert [5] in batches  # over budget: alone


def test_query_grouped_batches_cap_pairs_and_reject_bad_bounds():
    batches = query_grouped_batches(["q"] * 5, [3, 1, 2, 5, 4], max_pairs=2)
    assert batches == [[3, 4], [0, 2], [1]]
    with pytest.raises(ValueError, match="max_tokens"):
        query_grouped_batches(["q"], [1], 0)
    with pytest.raises(ValueError, match="max_pairs"):
        query_grouped_batches(["q"], [1], max_pairs=0)


def test_calibration_formula_round_trips():
    raw = np.array([-40.0, -3.0, 0.0, 2.5, 40.0])
    logit = calibrated_logit(raw, 5.0, 1.0)
    np.testing.assert_allclose(logit, (raw - 1.0) / 5.0)
    np.testing.assert_allclose(raw_logit(logit, 5.0, 1.0), raw)
    np.testing.assert_allclose(calibrated_score(raw, 5.0, 1.0), 1 / (1 + np.exp(-logit)), rtol=1e-12)
    assert np.isfinite(calibrated_score(np.array([-1e6, 1e6]), 1.0, 0.0)).all()


def test_pair_lengths_match_the_rendered_prompt(tiny_cross_encoder):
    assert template_overhead_tokens(tiny_cross_encoder.tokenizer) == 13
    pairs = [("What is 2+2?", "4"), ("q", "a much longer document " * 5)]
    lengths = pair_lengths(tiny_cross_encoder.tokenizer, pairs)
    actual = [len(tiny_cross_encoder.preprocess([p])["input_ids"][0]) for p in pairs]
    assert lengths == actual


def test_score_pairs_keeps_input_order_and_matches_predict(tiny_cross_encoder):
    pairs = [("q1", "short"), ("q2", "a longer document " * 20), ("q1", "mid length document " * 4), ("q3", "")]
    expected = tiny_cross_encoder.predict(pairs)
    scores = score_pairs(tiny_cross_encoder, pairs, batch_size=1)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    logits = score_pairs(tiny_cross_encoder, pairs, output="logit")
    np.testing.assert_allclose(scores, torch.sigmoid(torch.from_numpy(logits)).numpy(), atol=1e-6)
    raw = score_pairs(tiny_cross_encoder, pairs, output="raw")
    np.testing.assert_allclose(raw, logits * 5.0, atol=1e-5)
    assert score_pairs(tiny_cross_encoder, []).shape == (0,)


def test_max_batch_tokens_reaches_the_model(tiny_cross_encoder, monkeypatch):
    """The budget is passed with every forward: the loaded model's config and settings stay as they are."""
    model = tiny_cross_encoder.model
    config_before, settings_before = model.config.to_dict(), dict(vars(model.fast_path.settings))
    budgets = []
    original = type(model.fast_path).pooled_hidden
    monkeypatch.setattr(type(model.fast_path), "pooled_hidden", lambda self, *args, **kwargs: budgets.append(
        kwargs["max_batch_tokens"]) or original(self, *args, **kwargs))
    pairs = [("q1", "short"), ("q1", "a longer document " * 20)]
    scores = score_pairs(tiny_cross_encoder, pairs, max_batch_tokens=16)
    assert budgets and set(budgets) == {16}
    assert model.config.to_dict() == config_before and vars(model.fast_path.settings) == settings_before
    monkeypatch.undo()
    np.testing.assert_allclose(scores, tiny_cross_encoder.predict(pairs), atol=1e-5)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        score_pairs(tiny_cross_encoder, pairs, max_batch_tokens=0)
