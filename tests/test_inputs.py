"""Truncation and bad input: a correct score or a clear error naming the problem."""

import logging

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder

SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def short_model(tiny_model_dir):
    return CrossEncoder(str(tiny_model_dir), trust_remote_code=True, device="cpu", max_length=64)


def test_context_is_32k_by_default(tiny_cross_encoder):
    assert tiny_cross_encoder.tokenizer.model_max_length == 32768


def test_long_document_is_cut_and_query_and_suffix_survive(short_model, tokenizer):
    query = "Which planet is the largest?"
    document = " ".join(f"word{i}" for i in range(500))
    ids = short_model.preprocess([(query, document)])["input_ids"][0].tolist()
    assert len(ids) == 64
    text = tokenizer.decode(ids)
    assert text.startswith(f"<|im_start|>system\n{query}<|im_end|>\n<|im_start|>user\nword0 word1")
    assert text.endswith(SUFFIX) and "word499" not in text
    assert ids[-3:] == tokenizer(SUFFIX, add_special_tokens=False).input_ids[-3:]


def test_long_query_is_capped_with_a_warning(short_model, tokenizer, caplog):
    query = " ".join(f"q{i}" for i in range(200))
    with caplog.at_level(logging.WARNING):
        ids = short_model.preprocess([(query, "the document")])["input_ids"][0].tolist()
    assert "max_query_tokens" in caplog.text
    text = tokenizer.decode(ids)
    # The query was cut to half the context, so the document and the suffix are still there.
    assert "<|im_start|>user\nthe document" in text and text.endswith(SUFFIX)


def test_query_cap_from_config(tiny_model_dir, tokenizer, caplog):
    model = CrossEncoder(str(tiny_model_dir), trust_remote_code=True, device="cpu")
    model.model.config.max_query_tokens = 8
    query = " ".join(f"q{i}" for i in range(50))
    with caplog.at_level(logging.WARNING):
        ids = model.preprocess([(query, "doc")])["input_ids"][0].tolist()
    prefix = tokenizer("<|im_start|>system\n", add_special_tokens=False).input_ids
    end = tokenizer("<|im_end|>", add_special_tokens=False).input_ids[0]
    assert ids.index(end) - len(prefix) == 8 and "keeping its first 8 tokens" in caplog.text


@pytest.mark.parametrize(
    "pairs",
    [[("", "document")], [("query", "")], [("", "")], [("Quelle heure est-il ? 🕐", "Il est 15 h — 東京")],
     [("q", "d")]],
)
def test_edge_inputs_get_valid_scores(tiny_cross_encoder, pairs):
    scores = tiny_cross_encoder.predict(pairs)
    assert scores.shape == (len(pairs),) and np.isfinite(scores).all() and ((0 <= scores) & (scores <= 1)).all()


def test_empty_list_gives_empty_scores(tiny_cross_encoder):
    assert tiny_cross_encoder.predict([]).shape == (0,)
    assert tiny_cross_encoder.rank("q", []) == []


def test_single_pair_gives_a_scalar(tiny_cross_encoder):
    assert np.ndim(tiny_cross_encoder.predict(("q", "d"))) == 0


def test_document_far_over_the_context(short_model, tiny_cross_encoder):
    document = "lorem ipsum " * 20000
    score = short_model.predict([("q", document)])
    assert np.isfinite(score).all()
    # Cut to the context, the score equals that of the prompt the model actually saw.
    ids = short_model.preprocess([("q", document)])["input_ids"]
    logit = short_model.model(input_ids=ids).logits[0, 0]
    assert abs(float(torch.sigmoid(logit.detach())) - float(score[0])) < 1e-6


@pytest.mark.parametrize(
    "pairs, error, message",
    [
        ([("q", None)], TypeError, "Input 0: the document must be a string, got NoneType"),
        ([(None, "d")], TypeError, "Input 0: the query must be a string, got NoneType"),
        ([("q", "d"), ("q", 42)], TypeError, "Input 1: the document must be a string, got int"),
        ([("q", "d", "e")], ValueError, "must be a \\(query, document\\) pair"),
        ([("just one string",)], ValueError, "must be a \\(query, document\\) pair"),
    ],
)
def test_bad_inputs_name_the_problem(tiny_cross_encoder, pairs, error, message):
    with pytest.raises(error, match=message):
        tiny_cross_encoder.predict(pairs)


def test_all_padding_row_is_rejected(tiny_cross_encoder):
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match="all-zero row"):
        tiny_cross_encoder.model(input_ids=ids, attention_mask=mask)


def test_single_texts_are_counted_not_scored(tiny_cross_encoder):
    """sentence-transformers' dataset statistics (the trainer's model card) tokenize single columns with a task."""
    features = tiny_cross_encoder.preprocess(["a query", "a longer document text"], task="document")
    assert features["attention_mask"].sum(dim=1).tolist() == [2, 4]
    with pytest.raises(ValueError, match="must be a \\(query, document\\) pair"):
        tiny_cross_encoder.predict(["three", "lone", "strings"])
