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
        ([("q", None)], TypeError, "Input \\('q', None\\): the document must be a string, got NoneType"),
        ([(None, "d")], TypeError, "Input \\(None, 'd'\\): the query must be a string, got NoneType"),
        ([("q", "d"), ("q", 42)], TypeError, "Input \\('q', 42\\): the document must be a string, got int"),
        ([("q", "d", "e")], ValueError, "must be a \\(query, document\\) pair"),
        ([("just one string",)], ValueError, "must be a \\(query, document\\) pair"),
    ],
)
def test_bad_inputs_name_the_problem(tiny_cross_encoder, pairs, error, message):
    with pytest.raises(error, match=message):
        tiny_cross_encoder.predict(pairs)


@pytest.mark.parametrize(
    "pairs, message",
    [
        # predict sorts pairs by length before they reach the module, so the error names the pair by its text.
        ([("q", "d"), ("q", "ab\ud800c")],
         "Input \\('q', 'ab\\\\ud800c'\\): the document is not valid Unicode text: character 2 is a lone surrogate"),
        ([("\udfff", "d")], "the query is not valid Unicode text: character 0 is a lone surrogate"),
    ],
)
def test_lone_surrogate_names_the_input(tiny_cross_encoder, pairs, message):
    with pytest.raises(ValueError, match=message):
        tiny_cross_encoder.predict(pairs)


def test_lone_surrogate_in_the_instruction_is_named(tiny_cross_encoder):
    with pytest.raises(ValueError, match="The instruction is not valid Unicode text"):
        tiny_cross_encoder.predict([("q", "d")], prompt="be \ud800 strict")


def test_valid_astral_characters_are_unaffected(tiny_cross_encoder, tokenizer):
    """Emoji (one code point each in Python) and the escaped text of a surrogate are ordinary text."""
    pairs = [("😀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\\ud800 is how JSON escapes a surrogate 🕐")]
    ids = tiny_cross_encoder.preprocess(pairs)["input_ids"][0].tolist()
    text = tokenizer.apply_chat_template([{"role": "query", "content": pairs[0][0]},
                                          {"role": "document", "content": pairs[0][1]}], tokenize=False)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


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


def test_fp32_scores_do_not_depend_on_batching(tiny_cross_encoder, monkeypatch):
    """A pair's fp32 score is the same whatever the batch size, the order, the padding side and prefix sharing."""
    model = tiny_cross_encoder
    queries = ["What is the capital of France?", "side effects of ibuprofen", ""]
    documents = ["Paris.", "The capital of France is Paris, a city of art. " * 3, "", "日本の首都は東京です。 😀"]
    pairs = [(q, d) for q in queries for d in documents]
    reference = model.predict(pairs, batch_size=len(pairs))
    order = np.random.default_rng(0).permutation(len(pairs))
    variants = [model.predict(pairs, batch_size=1), model.predict(pairs, batch_size=5),
                model.predict([pairs[i] for i in order], batch_size=len(pairs))[np.argsort(order)]]
    monkeypatch.setattr(model.tokenizer, "padding_side", "left" if model.tokenizer.padding_side == "right" else "right")
    variants.append(model.predict(pairs, batch_size=len(pairs)))
    settings = model.model.fast_path.settings
    monkeypatch.setattr(settings, "share_query_prefix", not settings.share_query_prefix)
    variants.append(model.predict(pairs, batch_size=len(pairs)))
    for scores in variants:
        np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-6)


def test_processing_kwargs_sizes_are_honoured_and_unknown_ones_refused(tiny_cross_encoder):
    document = "word " * 100
    cut = tiny_cross_encoder.preprocess([("q", document)], processing_kwargs={"text": {"max_length": 32}})
    whole = tiny_cross_encoder.preprocess([("q", document)], max_length=32,
                                          processing_kwargs={"text": {"truncation": False}})
    assert cut["input_ids"].shape[1] == 32 and whole["input_ids"].shape[1] > 100
    with pytest.raises(ValueError, match="reads only 'instruction', 'max_length' and 'truncation'.*padding"):
        tiny_cross_encoder.preprocess([("q", "d")], processing_kwargs={"text": {"padding": "max_length"}})
