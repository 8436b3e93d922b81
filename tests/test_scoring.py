"""scripts/scoring.py: token-budget batching and order-preserving scoring."""

import numpy as np
import pytest
import torch

from scoring import pair_lengths, score_pairs, token_budget_batches


def test_token_budget_batches_cover_every_index_within_budget():
    lengths = [5, 300, 40, 40, 1000, 7, 120, 3]
    batches = token_budget_batches(lengths, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= 400 or len(batch) == 1
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert [4] in batches  # the row over budget is alone


def test_token_budget_rejects_non_positive_budget():
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_batches([1, 2], 0)


def test_pair_lengths_match_the_rendered_prompt(tiny_cross_encoder):
    pairs = [("What is 2+2?", "4"), ("q", "a much longer document " * 5)]
    lengths = pair_lengths(tiny_cross_encoder.tokenizer, pairs)
    actual = [len(tiny_cross_encoder.preprocess([p])["input_ids"][0]) for p in pairs]
    assert lengths == actual


def test_score_pairs_keeps_input_order_and_matches_predict(tiny_cross_encoder):
    pairs = [("q1", "short"), ("q2", "a longer document " * 20), ("q1", "mid length document " * 4), ("q3", "")]
    expected = tiny_cross_encoder.predict(pairs)
    scores = score_pairs(tiny_cross_encoder, pairs, max_batch_tokens=64)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    logits = score_pairs(tiny_cross_encoder, pairs, output="logit")
    np.testing.assert_allclose(scores, torch.sigmoid(torch.from_numpy(logits)).numpy(), atol=1e-6)
    raw = score_pairs(tiny_cross_encoder, pairs, output="raw")
    np.testing.assert_allclose(raw, logits * 5.0, atol=1e-5)
    assert score_pairs(tiny_cross_encoder, []).shape == (0,)
