"""``tokenizer(query, document)`` against ``encode_pairs``: where they agree, and the one class where they do not.

The pair template tokenizes the content alone; the rendered prompt tokenizes the template's ``\\n`` together with
the content. So content that begins with whitespace holding a line break may tokenize differently (and otherwise
never does). Special-token text agrees when both split it or both do not (``split_special_tokens``).
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import shared_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from zerank.model.pair_template import compare_with_encode_pairs, install_pair_template, template_pieces
from zerank_st import encode_pairs

LEADING_LINE_BREAK = re.compile(r"^\s*[\r\n]")
PIECES = [" ", "\n", "\r", "\t", "\u00a0", "\u2028", "\u3000", "a", "Z", "1", "é", "e\u0301", "日本", "😀", ".", "'s",
          "<|im_end|>", "<|im_start|>user\n", "<|endoftext|>", "Yes"]
text = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)


@pytest.fixture(scope="module")
def package_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir, trust_remote_code=True)


def test_the_template_pieces_are_zeranks_prompt(package_tokenizer):
    before, between, after = (package_tokenizer.decode(ids) for ids in template_pieces(package_tokenizer))
    assert (before, between, after) == ("<|im_start|>system\n", "<|im_end|>\n<|im_start|>user\n",
                                        "<|im_end|>\n<|im_start|>assistant\n")


def test_the_package_tokenizer_json_carries_the_template(tiny_model_dir):
    processor = json.loads((tiny_model_dir / "tokenizer.json").read_text())["post_processor"]
    assert processor["type"] == "Sequence"
    assert [p["type"] for p in processor["processors"]] == ["ByteLevel", "TemplateProcessing"]


def test_installing_twice_keeps_one_template(package_tokenizer):
    once = package_tokenizer("q", "d")["input_ids"]
    install_pair_template(package_tokenizer)
    assert package_tokenizer("q", "d")["input_ids"] == once


@settings(max_examples=300, deadline=None)
@given(query=text, document=text, split=st.booleans())
def test_pair_call_equals_encode_pairs_unless_content_opens_with_a_line_break(package_tokenizer, query, document,
                                                                            split):
    result = compare_with_encode_pairs(package_tokenizer, [(query, document)], split_special_tokens=split)
    if not (LEADING_LINE_BREAK.match(query) or LEADING_LINE_BREAK.match(document)):
        assert result.identical == 1


@settings(max_examples=100, deadline=None)
@given(query=st.text(max_size=40), words=st.integers(0, 200), max_length=st.integers(40, 120))
def test_only_second_truncation_cuts_the_document_as_encode_pairs_does(package_tokenizer, query, words, max_length):
    query = query.lstrip()
    document = "relevant passage " * words
    if len(package_tokenizer(query)["input_ids"]) + 13 >= max_length:
        return  # no room for the document: the tokenizer refuses to cut the query (an error)
    # A batch call: a single call drops an empty text (transformers reads "" as no text).
    got = package_tokenizer([query], [document], truncation="only_second", max_length=max_length)["input_ids"][0]
    assert got == encode_pairs(package_tokenizer, [(query, document)], max_length=max_length,
                               split_special_tokens=False)[0]


def test_a_leading_line_break_is_the_known_difference(package_tokenizer):
    result = compare_with_encode_pairs(package_tokenizer, [("q", "\n\nd"), ("\nq", "d")])
    assert result.identical == 0


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["scifact", "msmarco-trecdl-subset", "dbpedia-entity-subset"])
def test_exactness_on_the_shared_corpora(package_tokenizer, dataset):
    from zerank.data.readers import document_text, read_corpus, read_queries

    folder = shared_dir() / "data" / "ir" / dataset
    if not folder.exists():
        pytest.skip(f"{folder} is not here")
    queries = list(read_queries(folder / "queries.jsonl").values())
    corpus = read_corpus(folder / "corpus.jsonl")
    documents = [document_text(doc["title"], doc["text"]) for doc in list(corpus.values())[:5000]]
    pairs = [(q, documents[i % len(documents)]) for i, q in enumerate(queries)]
    pairs += [(queries[i % len(queries)], d) for i, d in enumerate(documents)]
    result = compare_with_encode_pairs(package_tokenizer, pairs, split_special_tokens=True)
    print(dataset, result.as_dict())
    assert all(LEADING_LINE_BREAK.match(q) or LEADING_LINE_BREAK.match(d) for q, d in result.differing)
