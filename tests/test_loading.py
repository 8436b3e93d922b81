"""Loading: transformers with trust_remote_code, a loud failure without it, round trips, bf16."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoConfig, AutoModelForSequenceClassification

from modeling_zerank import MIN_TRANSFORMERS, ZerankConfig, ZerankForSequenceClassification, check_transformers_version
from zerank.model.loading import load_reranker, resolve_dtype

ROOT = Path(__file__).resolve().parents[1]
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
    assert model.model.fast_path.settings.batch_token_budget("cpu") == 512 and model.max_seq_length == 128
    assert "max_batch_tokens" not in model.model.config.to_dict()
    assert model.model.model.embed_tokens.weight.dtype == torch.float32 and not model.model.training
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int4")


# --- the remote code: its sibling module, old packages, the transformers version ----------------------------------

LEGACY_FIELDS = {"share_query_prefix": False, "min_shared_prefix_tokens": 4, "max_batch_tokens": None,
                 "cpu_max_batch_tokens": 64, "accelerator_max_batch_tokens": 32768, "max_prefix_mask_elements": 4194304,
                 "pack_rows": None, "cpu_forward_overhead_flops": 4.8e7, "accelerator_forward_overhead_flops": 0.0}

COPIED_REMOTE_CODE = """
import json, sys
sys.modules["zerank_fast_path"] = sys.modules["modeling_zerank"] = None  # not importable as top-level modules
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps([type(model).__module__, type(model.fast_path).__module__]))
"""


def test_built_config_holds_no_runtime_settings(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert not set(LEGACY_FIELDS) & set(config), sorted(set(LEGACY_FIELDS) & set(config))
    assert (tiny_model_dir / "zerank_fast_path.py").read_text() == (ROOT / "zerank_fast_path.py").read_text()


def test_copied_package_uses_its_own_fast_path_module(tiny_model_dir, tmp_path):
    """transformers copies the relatively imported sibling with the remote code; the copy works from another folder,
    where neither remote-code module is importable as a top-level module."""
    package = tmp_path / "package"
    shutil.copytree(tiny_model_dir, package)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", COPIED_REMOTE_CODE, str(package)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True)
    model_module, fast_path_module = json.loads(result.stdout.strip().splitlines()[-1])
    assert model_module.endswith(".modeling_zerank") and fast_path_module.endswith(".zerank_fast_path")
    assert model_module.startswith("transformers_modules.") and fast_path_module.startswith("transformers_modules.")
    assert list((tmp_path / "modules").rglob("zerank_fast_path.py"))


def test_old_package_with_runtime_settings_in_its_config_loads(tiny_model_dir, tmp_path):
    """An older package's config.json carried the fast-path settings: they are read as the model's settings, and
    the scores are unchanged."""
    package = tmp_path / "old"
    shutil.copytree(tiny_model_dir, package)
    config = json.loads((package / "config.json").read_text())
    (package / "config.json").write_text(json.dumps({**config, **LEGACY_FIELDS}))
    old = CrossEncoder(str(package), trust_remote_code=True, device="cpu")
    settings = old.model.fast_path.settings
    assert (settings.share_query_prefix, settings.min_shared_prefix_tokens, settings.cpu_max_batch_tokens) == (
        False, 4, 64)
    new = CrossEncoder(str(tiny_model_dir), trust_remote_code=True, device="cpu")
    pairs = [(q, d) for q, _ in PAIRS for _, d in PAIRS]
    np.testing.assert_allclose(old.predict(pairs), new.predict(pairs), rtol=0, atol=1e-6)


def test_old_transformers_fails_with_the_needed_version():
    with pytest.raises(ImportError, match=r"needs transformers>=5\.18, found 4\.57\.1") as error:
        check_transformers_version("4.57.1")
    assert "\n" not in str(error.value)
    for version in ("5.18.0", "5.25.1", "6.0.0.dev0"):
        check_transformers_version(version)
    pinned = re.search(r'"transformers>=([\d.]+)', (ROOT / "pyproject.toml").read_text()).group(1)
    assert MIN_TRANSFORMERS == pinned
