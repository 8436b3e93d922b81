"""The scoring head equals transformers' Qwen3ForCausalLM "Yes" logit at the last position (fp32)."""

import pytest
import torch
from conftest import PARITY_PAIRS
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

PAIRS = PARITY_PAIRS


@pytest.fixture(scope="module")
def causal_lm(tiny_base_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def zerank(tiny_model_dir):
    return AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, trust_remote_code=True, dtype=torch.float32
    ).eval()


def prompt_ids(tokenizer, pairs):
    texts = [
        tokenizer.apply_chat_template([{"role": "query", "content": q}, {"role": "document", "content": d}], tokenize=False)
        for q, d in pairs
    ]
    return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def pad(rows, side, pad_id=151643):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, sl] = torch.tensor(row)
        mask[i, sl] = 1
    return ids, mask


@torch.inference_mode()
def reference_yes_logits(causal_lm, rows, yes_id):
    """Each prompt alone (batch 1, no padding) through the causal LM."""
    return torch.stack([causal_lm(input_ids=torch.tensor([r])).logits[0, -1, yes_id] for r in rows])


@torch.inference_mode()
@pytest.mark.parametrize("side", ["left", "right"])
def test_head_equals_causal_lm_yes_logit(causal_lm, zerank, tokenizer, side):
    rows = prompt_ids(tokenizer, PAIRS)
    cfg = zerank.config
    expected = reference_yes_logits(causal_lm, rows, cfg.yes_token_id)
    ids, mask = pad(rows, side)
    calibrated = zerank(input_ids=ids, attention_mask=mask).logits
    assert calibrated.shape == (len(PAIRS), 1) and calibrated.dtype == torch.float32
    raw = calibrated[:, 0] * cfg.score_temperature + cfg.score_bias
    assert (raw - expected).abs().max().item() <= 1e-5
    # Left-padded batches through the causal LM itself agree too (the reference is not a padding artefact).
    if side == "left":
        lm = causal_lm(input_ids=ids, attention_mask=mask).logits[:, -1, cfg.yes_token_id]
        assert (lm - expected).abs().max().item() <= 1e-4


@torch.inference_mode()
def test_batch_of_one_equals_batch_of_n(zerank, tokenizer):
    rows = prompt_ids(tokenizer, PAIRS)
    singles = torch.cat([zerank(input_ids=torch.tensor([r])).logits for r in rows])
    ids, mask = pad(rows, "left")
    batched = zerank(input_ids=ids, attention_mask=mask).logits
    assert (singles - batched).abs().max().item() <= 1e-5


def test_labels_give_bce_loss(zerank, tokenizer):
    rows = prompt_ids(tokenizer, PAIRS[:2])
    ids, mask = pad(rows, "right")
    labels = torch.tensor([1.0, 0.0])
    out = zerank(input_ids=ids, attention_mask=mask, labels=labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits[:, 0], labels)
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    assert zerank.score.weight.grad is not None and zerank.score.weight.grad.abs().sum() > 0
    zerank.zero_grad()


def test_head_is_one_vector(zerank):
    assert zerank.score.weight.shape == (1, zerank.config.hidden_size)
    assert not any("lm_head" in name for name, _ in zerank.named_parameters())
