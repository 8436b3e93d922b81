"""No emulated bf16 by default: a bf16-stored package loaded without a dtype computes in fp32 on a CPU without native
bf16 (and says so once), keeps bf16 where the CPU has it, and always keeps a dtype that was asked for. The CPU's
capability is mocked both ways."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

import modeling_zerank


@pytest.fixture(scope="module")
def bf16_model_dir(tokenizer_dir, tmp_path_factory):
    from zerank.packaging.arguments import BuildArguments
    from zerank.packaging.convert import build
    from zerank.utils.resources import shape_config

    shape = json.loads(shape_config("tiny").read_text()) | {"dtype": "bfloat16"}
    shape_file = tmp_path_factory.mktemp("shape") / "tiny-bf16.json"
    shape_file.write_text(json.dumps(shape))
    out = tmp_path_factory.mktemp("bf16") / "model"
    build(BuildArguments(out=out, random=str(shape_file), tokenizer=str(tokenizer_dir), verify=False))
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    return out


@pytest.fixture
def cpu(monkeypatch):
    """Set the mocked CPU: ``cpu(native_bf16, accelerator=False)``; the one-time log message is re-armed."""
    def set_cpu(native_bf16: bool, accelerator: bool = False, module=modeling_zerank):
        monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: native_bf16)
        monkeypatch.setattr(module, "accelerator_available", lambda: accelerator)
        module.logger.warning_once.cache_clear()  # transformers' once-per-process cache
    return set_cpu


def load(path, **kwargs):
    return modeling_zerank.ZerankForSequenceClassification.from_pretrained(path, **kwargs)


def test_no_native_bf16_computes_in_fp32_and_says_so_once(bf16_model_dir, cpu, caplog):
    cpu(native_bf16=False)
    with caplog.at_level(logging.WARNING, logger="modeling_zerank"):
        assert load(bf16_model_dir).dtype == torch.float32
        assert load(bf16_model_dir).dtype == torch.float32
    assert len([r for r in caplog.records if "no native bf16" in r.getMessage()]) == 1


def test_native_bf16_keeps_the_stored_dtype(bf16_model_dir, cpu, caplog):
    cpu(native_bf16=True)
    with caplog.at_level(logging.WARNING, logger="modeling_zerank"):
        assert load(bf16_model_dir).dtype == torch.bfloat16
    assert not [r for r in caplog.records if "no native bf16" in r.getMessage()]


def test_a_requested_dtype_is_kept(bf16_model_dir, cpu):
    cpu(native_bf16=False)
    assert load(bf16_model_dir, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert load(bf16_model_dir, dtype="auto").dtype == torch.bfloat16  # "as stored", asked for
    assert load(bf16_model_dir, torch_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_an_accelerator_keeps_the_stored_dtype_unless_loaded_on_the_cpu(bf16_model_dir, cpu):
    cpu(native_bf16=False, accelerator=True)  # the model will probably move to the GPU: keep what is stored
    assert load(bf16_model_dir).dtype == torch.bfloat16
    pytest.importorskip("accelerate", reason="transformers needs accelerate for device_map")
    assert load(bf16_model_dir, device_map="cpu").dtype == torch.float32


def test_fp32_packages_are_untouched(tiny_model_dir, cpu):
    cpu(native_bf16=False)
    assert load(tiny_model_dir).dtype == torch.float32


def test_crossencoder_with_remote_code_gets_the_decision(bf16_model_dir, cpu):
    """The README's first snippet, ``CrossEncoder(path, trust_remote_code=True)``, through the package's copy of
    the remote code (its module is patched once transformers has imported it)."""
    from sentence_transformers import CrossEncoder

    first = CrossEncoder(str(bf16_model_dir), trust_remote_code=True, device="cpu")
    remote = sys.modules[type(first.model).__module__]
    assert remote is not modeling_zerank and hasattr(remote, "cpu_compute_dtype")
    cpu(native_bf16=False, module=remote)
    emulated = CrossEncoder(str(bf16_model_dir), trust_remote_code=True, device="cpu")
    cpu(native_bf16=True, module=remote)
    native = CrossEncoder(str(bf16_model_dir), trust_remote_code=True, device="cpu")
    assert sys.modules[type(emulated.model).__module__] is remote
    assert emulated.model.dtype == torch.float32 and native.model.dtype == torch.bfloat16
    pair = [("What is 2+2?", "4")]
    assert abs(float(emulated.predict(pair)[0]) - float(native.predict(pair)[0])) < 0.01


def test_the_capability_check_answers_on_this_machine():
    assert isinstance(modeling_zerank.cpu_has_native_bf16(), bool)
