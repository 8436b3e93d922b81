"""The rendered prompt reproduces the published zerank prompts token for token."""

import json

import pytest
from conftest import DATA

from zerank_st import encode_pairs

# Ten published zerank-2 prompts (source and licence: tests/data/README.md).
PROMPTS = DATA / "zerank-prompts.jsonl"


def render(tokenizer, query, document, **kwargs):
    messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_crossencoder_token_ids_equal_published_prompts(tiny_cross_encoder):
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    assert len(rows) >= 10
    for row in rows:
        features = tiny_cross_encoder.preprocess([(row["query"], row["document"])])
        assert features["input_ids"][0].tolist() == row["token_ids"], row["query"]


@pytest.mark.parametrize("split_special_tokens", [True, False])
def test_encode_pairs_gives_the_published_token_ids(tokenizer, split_special_tokens):
    """Content without special-token strings encodes the same whether special tokens in content are split or not."""
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line.strip()]
    ids = encode_pairs(tokenizer, [(row["query"], row["document"]) for row in rows],
                       split_special_tokens=split_special_tokens)
    assert ids == [row["token_ids"] for row in rows]


def test_prompt_format_by_hand(tokenizer):
    expected = (
        "<|im_start|>system\nWhat is 2+2?<|im_end|>\n<|im_start|>user\n4<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(tokenizer, "What is 2+2?", "4") == expected
    assert "<think>" not in expected


def test_instruction_wraps_query(tokenizer):
    text = render(tokenizer, "q?", "doc", instruction="Prefer recent documents.")
    assert text == (
        "<|im_start|>system\n<query>q?</query>\n<instruction>Prefer recent documents.</instruction><|im_end|>\n"
        "<|im_start|>user\ndoc<|im_end|>\n<|im_start|>assistant\n"
    )
    # No (or an empty) instruction leaves the prompt byte-identical.
    assert render(tokenizer, "q?", "doc", instruction="") == render(tokenizer, "q?", "doc")


def test_system_message_is_the_instruction(tokenizer):
    messages = [
        {"role": "system", "content": "Prefer recent documents."},
        {"role": "query", "content": "q?"},
        {"role": "document", "content": "doc"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == render(
        tokenizer, "q?", "doc", instruction="Prefer recent documents."
    )


def test_instruction_through_crossencoder(tiny_cross_encoder, tokenizer):
    features = tiny_cross_encoder.preprocess(
        [("q?", "doc")], processing_kwargs={"chat_template": {"instruction": "Be strict."}}
    )
    expected = tokenizer(render(tokenizer, "q?", "doc", instruction="Be strict."), add_special_tokens=False)
    assert features["input_ids"][0].tolist() == expected["input_ids"]
    # prompt= (sentence-transformers' system message) is the same instruction.
    assert tiny_cross_encoder.preprocess([("q?", "doc")], prompt="Be strict.")["input_ids"][0].tolist() == expected[
        "input_ids"]


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "query", "content": "q"}], "one 'query' and one 'document'"),
        ([{"role": "user", "content": "q"}, {"role": "document", "content": "d"}], "unknown role: user"),
        ([{"role": "query", "content": "q"}, {"role": "document", "content": None}], "strings"),
    ],
)
def test_template_rejects_malformed_messages(tokenizer, messages, message):
    with pytest.raises(Exception, match=message):
        tokenizer.apply_chat_template(messages, tokenize=False)
