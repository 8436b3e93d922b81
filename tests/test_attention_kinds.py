"""Every attention kind of the fast path (transformers' ``attn_implementation``: sdpa, eager, flex_attention) gives
the plain path's scores: the same "shared prefix, then causally its own row" rule as a dense mask or a block mask."""

import shutil
import warnings

import pytest
import torch
from test_fast_path import DOCS, QUERIES, encode, plain_logits
from torch.nn.attention.flex_attention import flex_attention
from transformers import AutoModelForSequenceClassification

from zerank_fast_path import ATTENTION_KINDS, FastPath, prefix_block_mask

# torch imports its compiler on the first flex attention call, which warns about torch.jit (torch's own code, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

FORCED = {"cpu_forward_overhead_flops": 0}


def dense_rule(row_starts: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """The visibility rule as a dense (queries x prefix + queries) boolean mask: the reference."""
    queries = torch.arange(len(row_starts))[:, None]
    keys = torch.arange(prefix_len + len(row_starts))[None, :]
    own = (keys >= prefix_len + row_starts[:, None]) & (keys <= prefix_len + queries)
    return (keys < prefix_len) | own


@pytest.mark.parametrize("lengths, prefix_len", [([40], 0), ([40], 9), ([12, 20, 5, 33, 1], 7),
                                                 ([16, 16, 16], 16), ([70], 0)])
@pytest.mark.parametrize("block_size", [8, 16])
def test_block_mask_is_the_dense_rule(lengths, prefix_len, block_size):
    """Blocks marked full hold only visible keys, skipped blocks none, and flex attention under the block mask equals
    sdpa under the dense mask (fp32, the unfused reference implementation: no compiler needed)."""
    row_starts = torch.repeat_interleave(torch.tensor([0, *lengths[:-1]]).cumsum(0), torch.tensor(lengths))
    rule = dense_rule(row_starts, prefix_len)
    mask = prefix_block_mask(row_starts, prefix_len, block_size=block_size)
    assert mask.shape[-2:] == rule.shape
    queries, keys = rule.shape
    full, partial = mask.full_kv_num_blocks[0, 0], mask.kv_num_blocks[0, 0]
    for qb in range(-(-queries // block_size)):
        rows = rule[qb * block_size:(qb + 1) * block_size]
        full_blocks = set(mask.full_kv_indices[0, 0, qb, : full[qb]].tolist())
        partial_blocks = set(mask.kv_indices[0, 0, qb, : partial[qb]].tolist())
        assert not full_blocks & partial_blocks
        for kb in range(-(-keys // block_size)):
            block = rows[:, kb * block_size:(kb + 1) * block_size]
            if kb in full_blocks:
                assert bool(block.all())
            elif kb not in partial_blocks:
                assert not bool(block.any())
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, queries, 16), torch.randn(1, 2, keys, 16), torch.randn(1, 2, keys, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "called without torch.compile()": the reference, on purpose
        got = flex_attention(q, k, v, block_mask=mask, enable_gqa=True)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=rule, enable_gqa=True)
    assert (got - expected).abs().max().item() <= 1e-5


def test_attention_kinds_are_supported_and_packing_follows_the_kind(tiny_model_dir):
    config = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, trust_remote_code=True).config
    for kind in ATTENTION_KINDS:
        config._attn_implementation = kind
        fast_path = FastPath(config)
        assert fast_path.supports()
        assert fast_path.packs_rows() == (kind == "flex_attention") == fast_path.uses_block_masks()
    config._attn_implementation = "flash_attention_2"
    assert FastPath(config).supports() and FastPath(config).packs_rows()
    # Under a block mask a prefix batch costs the prefix plus half the square (as the kernel runs it), under a
    # dense mask every key of the mask.
    q_dim, layers = config.num_attention_heads * config.head_dim, config.num_hidden_layers
    for kind, keys in [("flex_attention", 20 + 50.5), ("sdpa", 120)]:
        config._attn_implementation = kind
        fast_path = FastPath(config)
        extra = fast_path.forward_cost("cpu", 1, 100, 20, masked=True) - fast_path.forward_cost("cpu", 1, 100)
        assert extra == pytest.approx(layers * 100 * 4 * q_dim * (keys - 50.5))


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="torch compiles flex attention into C++ on a CPU: no C++ compiler here")
def test_flex_attention_fast_path_equals_plain_path(tiny_model_dir, tokenizer):
    """The fast path under flex attention (compiled, as transformers runs it; the CPU kernel here, Triton on a GPU),
    packed and padded, with and without the shared prefix, against the plain path under sdpa: <= 1e-5 in fp32."""
    reference = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()
    flex = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, trust_remote_code=True, attn_implementation="flex_attention", fast_path=FORCED).eval()
    assert flex.config._attn_implementation == "flex_attention" and flex.fast_path.packs_rows()
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    batch = encode(tokenizer, pairs, "left", instruction="Prefer official documentation.")
    expected = plain_logits(reference, batch)
    for pack, share in [(True, True), (False, True), (True, False)]:
        flex.fast_path.settings.pack_rows = pack
        with torch.inference_mode():
            fast = flex(**batch, share_prefix=share, max_batch_tokens=256).logits
        assert (fast - expected).abs().max().item() <= 1e-5, (pack, share)
