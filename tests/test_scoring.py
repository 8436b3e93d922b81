"""scripts/scoring.py: token-budget batching and order-preserving scoring."""

import numpy as np
import pytest
import torch

from scoring import pair_lengths, query_grouped_batches, score_pairs


def test_query_grouped_batches_keep_queries_together_within_budget():
    queries = ["b", "a", "b", "a", "a", "c", "b"]
    lengths = [50, 10, 300, 40, 20, 500, 60]
    batches = query_grouped_batches(queries, lengths, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 400 or len(batch) == 1
    assert [1, 3, 4] not in batches and [3, 4, 1] in batches  # query "a", longest first
    assert [5] in batches  # over budget: alone


def test_query_grouped_batches_reject_non_positive_budget():
    with pytest.raises(ValueError, match="max_tokens"):
        query_grouped_batches(["q"], [1], 0)


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
