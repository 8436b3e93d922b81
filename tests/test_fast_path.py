"""Inference fast path (zerank_fast_path.py: padding dropped, shared query prefix run once, length regrouping) equals
the plain path; its settings are code defaults per device kind, overridden at load time, never in the config."""

import functools
import warnings

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from modeling_zerank import ZerankConfig
from zerank_fast_path import (
    FastPath,
    FastPathSettings,
    SharedPrefixCache,
    group_by_shared_prefix,
    real_token_rows,
    token_budget_batches,
)

FORCED = {"fast_path": {"cpu_forward_overhead_flops": 0}}

QUERIES = ["What is the capital of France?", "How do I reset a forgotten Linux root password quickly and safely?",
           "What is the capital of Italy?"]
DOCS = ["Paris is the capital.", "The cat sat on the mat. " * 6, "Reboot and edit GRUB.", "x",
        "The capital of France is Paris, a city of art.", ""]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny model with the fast path forced: its per-forward cost would otherwise send small batches to the
    plain path."""
    return AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, trust_remote_code=True, **FORCED).eval()


def record_prefix_runs(model, monkeypatch) -> list[int]:
    """The lengths of the prefixes the fast path runs, recorded as it runs them."""
    calls = []
    original = type(model.fast_path).prefix_cache
    monkeypatch.setattr(type(model.fast_path), "prefix_cache",
                        lambda self, backbone, p: calls.append(len(p)) or original(self, backbone, p))
    return calls


def encode(tokenizer, pairs, side, **template_kwargs):
    texts = [tokenizer.apply_chat_template([{"role": "query", "content": q}, {"role": "document", "content": d}],
                                           tokenize=False, **template_kwargs) for q, d in pairs]
    tokenizer.padding_side = side
    try:
        return tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    finally:
        tokenizer.padding_side = "right"


def plain_logits(model, batch):
    with torch.enable_grad():  # gradients on: the plain, padded path
        return model(**batch).logits.detach()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("share", [True, False])
def test_fast_path_equals_plain_path(model, tokenizer, side, share):
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    batch = encode(tokenizer, pairs, side)
    with torch.inference_mode():
        fast = model(**batch, share_prefix=share).logits
    assert (fast - plain_logits(model, batch)).abs().max().item() <= 1e-5


def test_instruction_and_small_budget(model, tokenizer):
    """A budget of a few rows forces several batches per prefix group: the prefix cache is reused, not mutated."""
    pairs = [(QUERIES[1], d) for d in DOCS * 2]
    batch = encode(tokenizer, pairs, "left", instruction="Prefer official documentation.")
    with torch.inference_mode():
        fast = model(**batch, max_batch_tokens=64).logits
        again = model(**batch, max_batch_tokens=64).logits
    expected = plain_logits(model, batch)
    assert (fast - expected).abs().max().item() <= 1e-5 and torch.equal(fast, again)


def test_duplicate_rows_and_row_that_is_a_prefix_of_another(model, tokenizer):
    pairs = [(QUERIES[0], DOCS[0]), (QUERIES[0], DOCS[0]), (QUERIES[0], DOCS[0] + " More text follows.")]
    batch = encode(tokenizer, pairs, "right")
    with torch.inference_mode():
        fast = model(**batch).logits
    assert (fast - plain_logits(model, batch)).abs().max().item() <= 1e-5


def test_setting_turns_prefix_sharing_off(model, tokenizer, monkeypatch):
    pairs = [(QUERIES[0], d) for d in DOCS]
    batch = encode(tokenizer, pairs, "right")
    calls = record_prefix_runs(model, monkeypatch)
    with torch.inference_mode():
        model(**batch)
        assert len(calls) == 1 and calls[0] >= 8  # one prefix run for the whole batch
        with monkeypatch.context() as patch:
            patch.setattr(model.fast_path.settings, "share_query_prefix", False)
            model(**batch)
        model(**batch, share_prefix=False)
    assert len(calls) == 1


def test_bf16_fast_path_within_bf16_noise(tiny_model_dir, tokenizer):
    bf16 = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, trust_remote_code=True, dtype=torch.bfloat16).eval()
    pairs = [(q, d) for q in QUERIES[:2] for d in DOCS]
    batch = encode(tokenizer, pairs, "left")
    with torch.inference_mode():
        fast = bf16(**batch).logits
    plain = plain_logits(bf16, batch)
    assert (fast - plain).abs().max().item() <= 0.02 * max(1.0, plain.abs().max().item())


def test_grouping_finds_each_query_prefix(tokenizer):
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    batch = encode(tokenizer, pairs, "left")
    rows = real_token_rows(batch["input_ids"], batch["attention_mask"])
    groups = group_by_shared_prefix(rows, 8)
    prefix_of = {q: len(tokenizer(f"<|im_start|>system\n{q}<|im_end|>\n<|im_start|>user\n").input_ids) for q in QUERIES}
    assert sorted(len(m) for _, m in groups) == [len(DOCS)] * len(QUERIES)
    for prefix, members in groups:
        query = pairs[members[0]][0]
        assert {pairs[i][0] for i in members} == {query} and prefix >= prefix_of[query]
    assert group_by_shared_prefix(rows, None) == [(0, list(range(len(rows))))]


def test_masks_with_holes_are_rejected():
    with pytest.raises(ValueError, match="contiguous"):
        real_token_rows(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 0, 1]]))


def test_token_budget_batches_cover_every_index_within_budget():
    lengths = [5, 300, 40, 40, 1000, 7, 120, 3]
    batches = token_budget_batches(lengths, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 400 or len(batch) == 1
    assert [4] in batches
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_batches([1], 0)


def test_batch_budget_defaults_per_device_kind_and_override():
    settings = FastPathSettings()
    assert settings.batch_token_budget("cpu") == settings.cpu_max_batch_tokens == 512
    assert settings.batch_token_budget("cuda") == settings.accelerator_max_batch_tokens == 32768
    settings.max_batch_tokens = 100
    assert settings.batch_token_budget("cpu") == settings.batch_token_budget("cuda") == 100
    with pytest.raises(Exception, match="cpu_max_batch_tokens"):
        FastPathSettings(cpu_max_batch_tokens=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        FastPathSettings(max_batch_tokens=0)
    with pytest.raises(ValueError, match="cpu_forward_overhead_flops"):
        FastPathSettings(cpu_forward_overhead_flops=-1.0)


def test_settings_come_from_code_an_old_config_and_load_time_overrides(tiny_model_dir):
    """Defaults in code; the fields an older package's config.json carried are read; ``fast_path={...}`` wins."""
    assert FastPathSettings.from_values(ZerankConfig()) == FastPathSettings()
    old = ZerankConfig(share_query_prefix=False, cpu_max_batch_tokens=64, cpu_forward_overhead_flops=1.0)
    settings = FastPathSettings.from_values(old, {"cpu_max_batch_tokens": 128})
    assert (settings.share_query_prefix, settings.cpu_max_batch_tokens, settings.cpu_forward_overhead_flops) == (
        False, 128, 1.0)
    with pytest.raises(ValueError, match="max_batch_token"):
        FastPathSettings.from_values({"max_batch_token": 5})
    loaded = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, trust_remote_code=True, fast_path={"max_batch_tokens": 96, "pack_rows": True})
    assert loaded.fast_path.settings.max_batch_tokens == 96 and loaded.fast_path.packs_rows()
    assert not hasattr(loaded.config, "max_batch_tokens") and "max_batch_tokens" not in loaded.config.to_dict()


def test_per_call_budget_leaves_the_model_as_it_is(model, tokenizer):
    pairs = [(QUERIES[1], d) for d in DOCS * 2]
    batch = encode(tokenizer, pairs, "right")
    before = (model.config.to_dict(), dict(vars(model.fast_path.settings)))
    with torch.inference_mode():
        fast = model(**batch, max_batch_tokens=32).logits
        with pytest.raises(ValueError, match="max_batch_tokens"):
            model(**batch, max_batch_tokens=0)
    assert (model.config.to_dict(), vars(model.fast_path.settings)) == before
    assert (fast - plain_logits(model, batch)).abs().max().item() <= 1e-5


def test_fast_path_raises_no_deprecation_warning(model, tokenizer):
    """The fast path uses public transformers APIs only: no FutureWarning/DeprecationWarning from any call."""
    pairs = [(QUERIES[1], d) for d in DOCS]
    batch = encode(tokenizer, pairs, "left")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            model(**batch)


def test_shared_prefix_cache_is_read_only_after_the_prefix():
    cache = SharedPrefixCache()
    prefix_k, prefix_v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    assert cache.get_seq_length() == 0
    assert cache.update(prefix_k, prefix_v, 0) == (prefix_k, prefix_v)  # the prefix's own forward stores it
    assert cache.get_seq_length() == 5
    new_k, new_v = torch.randn(3, 2, 7, 4), torch.randn(3, 2, 7, 4)
    for _ in range(2):  # every batch sees the prefix followed by its own keys/values; nothing is stored
        keys, values = cache.update(new_k, new_v, 0)
        assert keys.shape == (3, 2, 12, 4) and torch.equal(keys[:, :, :5], prefix_k.expand(3, -1, -1, -1))
        assert torch.equal(values[:, :, 5:], new_v)
        assert cache.get_seq_length() == 5 and len(cache.prefix) == 1


def test_large_prefix_mask_runs_rows_whole(model, tokenizer, monkeypatch):
    """A batch whose prefix mask would exceed ``max_prefix_mask_elements`` runs its rows whole: no prefix forward."""
    pairs = [(QUERIES[1], d) for d in DOCS]
    batch = encode(tokenizer, pairs, "left")
    calls = record_prefix_runs(model, monkeypatch)
    monkeypatch.setattr(model.fast_path.settings, "max_prefix_mask_elements", 1)
    with torch.inference_mode():
        fast = model(**batch).logits
    assert calls == [] and (fast - plain_logits(model, batch)).abs().max().item() <= 1e-5


def test_batches_without_prefix_pass_no_mask(model, tokenizer, monkeypatch):
    """Right-padded rows under causal attention need no mask: prefix-free batches leave it to the kernel (no
    (rows x width x width) tensor), batches continuing a prefix pass one mask shared by all their rows."""
    pairs = [(q, d) for q in QUERIES[:2] for d in DOCS]
    batch = encode(tokenizer, pairs, "left")
    masks = []
    original = type(model.model).forward

    @functools.wraps(original)
    def recording_forward(self, **kwargs):
        masks.append(kwargs.get("attention_mask"))
        return original(self, **kwargs)

    monkeypatch.setattr(type(model.model), "forward", recording_forward)
    with torch.inference_mode():
        model(**batch, share_prefix=False)
        assert masks and all(m is None for m in masks)
        masks.clear()
        model(**batch)
    shared = [m for m in masks if m is not None]
    assert shared and all(m.shape[0] == 1 and m.dtype == torch.bool for m in shared)


@pytest.mark.parametrize("share", [True, False])
def test_eager_attention_fast_path_equals_plain_path(tiny_model_dir, tokenizer, share):
    eager = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, trust_remote_code=True, attn_implementation="eager", **FORCED).eval()
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    batch = encode(tokenizer, pairs, "right")
    with torch.inference_mode():
        fast = eager(**batch, share_prefix=share).logits
    assert (fast - plain_logits(eager, batch)).abs().max().item() <= 1e-5


def test_plan_dearer_than_the_padded_batch_runs_the_plain_path(model, tokenizer, monkeypatch):
    pairs = [(QUERIES[0], d) for d in DOCS]
    batch = encode(tokenizer, pairs, "left")
    calls = []
    original = type(model.fast_path).run
    monkeypatch.setattr(type(model.fast_path), "run",
                        lambda self, backbone, rows, plan: calls.append(plan) or original(self, backbone, rows, plan))
    monkeypatch.setattr(model.fast_path.settings, "cpu_forward_overhead_flops", 1e15)
    with torch.inference_mode():
        plain = model(**batch).logits
    assert calls == [] and (plain - plain_logits(model, batch)).abs().max().item() <= 1e-6
    monkeypatch.setattr(model.fast_path.settings, "cpu_forward_overhead_flops", 0)
    with torch.inference_mode():
        model(**batch)
    assert len(calls) == 1 and any(b.prefix_len for b in calls[0])


def test_one_unpadded_row_runs_the_plain_path(model):
    """Nothing to drop or share: the plan's estimate equals the padded batch's, and the plain path runs."""
    fast_path = model.fast_path
    rows = [torch.arange(100, 400)]
    plan = fast_path.plan(rows, True, "cpu", fast_path.settings.batch_token_budget("cpu"))
    assert len(plan) == 1 and plan[0].prefix_len == 0
    assert fast_path.plan_cost(plan, "cpu") == fast_path.forward_cost("cpu", 1, 300)


def test_forward_cost_counts_mask_keys_and_fixed_cost():
    config = ZerankConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=16, num_hidden_layers=2)
    fast_path = FastPath(config, FastPathSettings(cpu_forward_overhead_flops=10.0,
                                                  accelerator_forward_overhead_flops=7.0))
    causal, masked = fast_path.forward_cost("cpu", 1, 100), fast_path.forward_cost("cpu", 1, 100, 20, masked=True)
    q_dim = 64
    assert masked - causal == pytest.approx(2 * 100 * 4 * q_dim * (120 - 50.5))
    assert fast_path.forward_cost("cpu", 0, 0) == 20.0
    assert fast_path.forward_cost("cuda", 0, 0) == 14.0


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("share", [True, False])
def test_packed_rows_equal_plain_path(tiny_model_dir, tokenizer, attention, share):
    """The padding-free path (rows packed into one, position ids restarting after the prefix; the GPU path under
    flash attention) gives the plain path's logits under sdpa and eager too."""
    packed = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, trust_remote_code=True, attn_implementation=attention,
        fast_path={"pack_rows": True, "cpu_forward_overhead_flops": 0}).eval()
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    batch = encode(tokenizer, pairs, "left", instruction="Prefer official documentation.")
    with torch.inference_mode():
        fast = packed(**batch, share_prefix=share).logits
    assert (fast - plain_logits(packed, batch)).abs().max().item() <= 1e-5


def test_packed_continuation_lays_out_prefix_before_every_row():
    """For a varlen kernel each packed row's keys are the prefix followed by its own keys."""
    cache = SharedPrefixCache()
    prefix_k, prefix_v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    cache.update(prefix_k, prefix_v, 0)
    new_k, new_v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    keys, values = cache.continued_by([2, 3]).update(new_k, new_v, 0)
    assert torch.equal(keys, torch.cat([prefix_k, new_k[:, :, :2], prefix_k, new_k[:, :, 2:]], dim=-2))
    assert torch.equal(values, torch.cat([prefix_v, new_v[:, :, :2], prefix_v, new_v[:, :, 2:]], dim=-2))
    assert len(cache.prefix) == 1 and cache.packed_lengths is None  # the shared cache itself is unchanged
