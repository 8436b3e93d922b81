"""Loading: transformers with trust_remote_code, a loud failure without it, round trips, bf16."""

import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoConfig, AutoModelForSequenceClassification

from modeling_zerank import ZerankConfig, ZerankForSequenceClassification
from zerank.model.loading import load_reranker, resolve_dtype

PAIRS = [("What is 2+2?", "4"), ("What is 2+2?", "The answer is definitely 1 million")]


def test_auto_classes_with_trust_remote_code(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True)
    assert config.model_type == "zerank" and config.num_labels == 1
    assert config.yes_token_id == 9454 and config.score_temperature == 5.0 and config.score_bias == 0.0
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, trust_remote_code=True)
    assert type(model).__name__ == "ZerankForSequenceClassification"
    assert model.config.auto_map["AutoModelForSequenceClassification"].startswith("modeling_zerank.")


@pytest.mark.parametrize("loader", [AutoModelForSequenceClassification.from_pretrained, AutoConfig.from_pretrained])
def test_without_trust_remote_code_fails_loudly(tiny_model_dir, loader):
    with pytest.raises(ValueError, match="trust_remote_code"):
        loader(tiny_model_dir)


def test_crossencoder_without_trust_remote_code_fails_loudly(tiny_model_dir):
    with pytest.raises(ValueError, match="trust_remote_code"):
        CrossEncoder(str(tiny_model_dir))


def test_save_load_round_trip_has_no_missing_or_unexpected_keys(tiny_model_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, trust_remote_code=True)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_zerank.py").exists()
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, trust_remote_code=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_crossencoder_save_round_trip(tiny_cross_encoder, tmp_path):
    tiny_cross_encoder.save_pretrained(str(tmp_path))
    assert (tmp_path / "modeling_zerank.py").exists() and (tmp_path / "zerank_st.py").exists()
    reloaded = CrossEncoder(str(tmp_path), trust_remote_code=True, device="cpu")
    assert (reloaded.predict(PAIRS) == tiny_cross_encoder.predict(PAIRS)).all()


def test_bf16_scores_within_bf16_tolerance(tiny_model_dir, tiny_cross_encoder):
    bf16 = CrossEncoder(str(tiny_model_dir), trust_remote_code=True, device="cpu", model_kwargs={"dtype": torch.bfloat16})
    assert bf16.model.model.embed_tokens.weight.dtype == torch.bfloat16
    identity = torch.nn.Identity()
    a = tiny_cross_encoder.predict(PAIRS, activation_fn=identity) * 5.0
    b = bf16.predict(PAIRS, activation_fn=identity) * 5.0
    scale = max(1.0, float(abs(a).max()))
    assert abs(a - b).max() <= 0.05 * scale


def test_sdpa_is_the_attention(tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, trust_remote_code=True)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    "kwargs, message",
    [({"score_temperature": 0.0}, "score_temperature"), ({"yes_token_id": 10**7}, "yes_token_id"),
     ({"num_labels": 2}, "num_labels"), ({"max_query_tokens": 0}, "max_query_tokens")],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(Exception, match=message):
        ZerankConfig(**kwargs)


def test_config_defaults():
    config = ZerankConfig()
    assert (config.num_labels, config.yes_token_id, config.score_temperature, config.score_bias) == (1, 9454, 5.0, 0.0)
    assert ZerankForSequenceClassification.config_class is ZerankConfig


def test_load_reranker_applies_dtype_length_and_budget(tiny_model_dir):
    model = load_reranker(str(tiny_model_dir), device="cpu", dtype="auto", max_length=128, max_batch_tokens=512)
    assert model.model.config.max_batch_tokens == 512 and model.max_seq_length == 128
    assert model.model.model.embed_tokens.weight.dtype == torch.float32 and not model.model.training
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int4")
