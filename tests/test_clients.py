"""Clients that call ``tokenizer(query, document)`` get zerank's scores, on the package and on its vLLM export.

The pair template in ``tokenizer.json`` (zerank.model.pair_template) renders the prompt; each client's own
activation is noted where it applies one. The reference is ``CrossEncoder(pkg, trust_remote_code=True).predict``.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "日本の首都は東京です。 Die Hauptstadt Frankreichs ist Paris.",
    "The Eiffel Tower was completed in 1889. " * 240,  # about 2,400 tokens
    " Leading whitespace, trailing newline\n",
]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def vllm_export(tiny_vllm_export):
    return tiny_vllm_export[0]


@pytest.fixture(scope="module")
def reference(tiny_cross_encoder):
    return tiny_cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])


@pytest.fixture(params=["package", "export"])
def model_path(request, tiny_model_dir, vllm_export):
    return str(tiny_model_dir if request.param == "package" else vllm_export)


def check(scores, reference):
    scores = np.asarray(scores, dtype=np.float64)
    assert np.abs(scores - reference).max() <= TOLERANCE
    assert list(np.argsort(-scores)) == list(np.argsort(-reference))


def sigmoid(values):
    return 1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float64)))


def test_tokenizer_pair_call_is_the_prompt(model_path):
    from transformers import AutoTokenizer

    from zerank_st import encode_pairs

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    pairs = [(QUERY, d) for d in DOCUMENTS]
    got = tokenizer([q for q, _ in pairs], [d for _, d in pairs])["input_ids"]
    assert got == encode_pairs(tokenizer, pairs)
    assert tokenizer(QUERY)["input_ids"] == tokenizer(QUERY, add_special_tokens=False)["input_ids"]  # singles as before


def test_auto_classes_pair_call(model_path, reference):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, trust_remote_code=True,
                                                               dtype=torch.float32).eval()
    batch = tokenizer([QUERY] * len(DOCUMENTS), DOCUMENTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.squeeze(-1).numpy()
    check(sigmoid(logits), reference)


def test_text_classification_pipeline(model_path, reference):
    from transformers import pipeline

    classifier = pipeline("text-classification", model=model_path, trust_remote_code=True, dtype=torch.float32,
                          device="cpu")
    outputs = classifier([{"text": QUERY, "text_pair": d} for d in DOCUMENTS])  # one label: sigmoid applied
    check([o["score"] for o in outputs], reference)


def test_rerankers_cross_encoder(model_path, reference):
    from rerankers import Reranker

    ranker = Reranker(model_path, model_type="cross-encoder", device="cpu", dtype=torch.float32, verbose=0,
                      model_kwargs={"trust_remote_code": True}, tokenizer_kwargs={"trust_remote_code": True})
    results = ranker.rank(QUERY, DOCUMENTS, doc_ids=list(range(len(DOCUMENTS))))
    raw = {r.document.doc_id: r.score for r in results.results}  # rerankers returns the logit: no activation
    check(sigmoid([raw[i] for i in range(len(DOCUMENTS))]), reference)


def test_haystack_transformers_similarity_ranker(model_path, reference):
    from haystack import Document
    from haystack.components.rankers import TransformersSimilarityRanker

    ranker = TransformersSimilarityRanker(model=model_path, device=None, top_k=len(DOCUMENTS), scale_score=True,
                                          model_kwargs={"trust_remote_code": True, "dtype": torch.float32},
                                          tokenizer_kwargs={"trust_remote_code": True})
    ranker.warm_up()
    documents = [Document(content=d, id=str(i)) for i, d in enumerate(DOCUMENTS)]
    ranked = ranker.run(query=QUERY, documents=documents)["documents"]  # sigmoid(logit * calibration_factor=1)
    by_id = {d.id: d.score for d in ranked}
    check([by_id[str(i)] for i in range(len(DOCUMENTS))], reference)


def test_the_model_warns_once_on_an_unrendered_pair(tiny_model_dir, caplog):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, trust_remote_code=True,
                                                               dtype=torch.float32).eval()
    rendered = tokenizer([QUERY, QUERY], DOCUMENTS[:2], padding=True, return_tensors="pt")
    plain = tokenizer([f"{QUERY} {DOCUMENTS[0]}"], return_tensors="pt")
    # transformers drops an empty text_pair in a single call: the query alone reaches the model.
    empty = tokenizer(QUERY, "", return_tensors="pt")
    with caplog.at_level(logging.WARNING), torch.no_grad():
        model(**rendered)
        assert "not its rendered prompt" not in caplog.text
        model(**plain)
        model(**empty)
    assert caplog.text.count("not its rendered prompt") == 1
    assert "tokenizer(query, document)" in caplog.text


def test_the_export_writes_what_transformers4_reads(vllm_export, tiny_model_dir):
    import json

    config = json.loads((vllm_export / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 1_000_000
    assert config["rope_scaling"] is None and config["torch_dtype"] == config["dtype"]
    assert "prompt_prefix_ids" not in config  # zerank's fields stay in the package
    tokenizer_config = json.loads((vllm_export / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in tokenizer_config  # a list here is a dict in transformers 4.x
    assert "<|im_start|>" in tokenizer_config["additional_special_tokens"]
