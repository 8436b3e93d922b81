"""zerank's inference fast path: a padded batch of (query, document) rows run as fewer, denser forwards.

The contract is one call, :meth:`FastPath.pooled_hidden`: given the Qwen3 backbone and a padded batch (input ids and
attention mask, left or right padding), it returns the final hidden state of every row's last real token, equal to
the plain padded forward's within float rounding, or ``None`` when its cost rule estimates the plain forward cheaper
(the caller then runs that). On the way it

- drops the padding (:func:`real_token_rows`),
- groups rows that start with the same tokens (a rerank call's query) and runs that prefix once, its keys/values
  shared by the group's rows through :class:`SharedPrefixCache` (:func:`group_by_shared_prefix`),
- regroups the remaining tokens by length into batches of at most ``max_batch_tokens`` tokens (rows x longest row,
  :func:`token_budget_batches`), right-padded, or packed into one row without padding (``pack_rows``),
- prices every choice with :meth:`FastPath.forward_cost` (FLOPs plus a fixed cost per layer and forward).

How attention sees "the shared prefix, then causally its own row" depends on the attention kind the backbone was
loaded with (transformers' ``attn_implementation``, a load-time choice; :data:`ATTENTION_KINDS`): one dense boolean
mask under ``sdpa``/``eager`` (the reference), a block mask built from row boundaries under ``flex_attention``
(:func:`prefix_block_mask`: no dense mask, rows packed without padding), the varlen lengths under flash attention.

Runtime tuning lives in :class:`FastPathSettings`, with defaults per device kind in code (not in ``config.json``).
The model head holds one ``FastPath``; override its settings when loading with
``from_pretrained(path, fast_path={"max_batch_tokens": 1024})`` (sentence-transformers:
``CrossEncoder(path, trust_remote_code=True, model_kwargs={"fast_path": {...}})``), and the token budget per call with
the forward keyword ``max_batch_tokens``.

This file is remote code: it is copied next to the weights with ``modeling_zerank.py``, which imports it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import DynamicCache


@dataclasses.dataclass
class FastPathSettings:
    r"""
    Runtime tuning of the fast path: none of it changes a score.

    Args:
        share_query_prefix (`bool`, defaults to `True`):
            Rows of a batch that begin with the same tokens (the query prefix of a rerank call) have that prefix run
            once; its keys/values are shared by the rows and only their remaining tokens are run. Exact.
        min_shared_prefix_tokens (`int`, defaults to 8):
            Prefix sharing engages for a group of at least 2 rows whose common prefix has at least this many tokens.
        max_batch_tokens (`int`, *optional*):
            Tokens of one batch (rows x longest row). Unset: the device kind's default below.
        cpu_max_batch_tokens (`int`, defaults to 512):
            ``max_batch_tokens`` on CPU when it is unset.
        accelerator_max_batch_tokens (`int`, defaults to 32768):
            ``max_batch_tokens`` on an accelerator (CUDA, MPS, ...) when it is unset.
        max_prefix_mask_elements (`int`, defaults to 4194304):
            A batch that continues a shared prefix needs one boolean attention mask of (continuation length) x
            (prefix + continuation length) elements, shared by its rows. A batch whose mask would have more elements
            runs its rows whole instead (prefix included). This bounds memory only (2048 x 2048 is 4 MiB as booleans,
            16 MiB if the kernel makes it fp32); below it, the cost rule decides whether the prefix pays.
        pack_rows (`bool`, *optional*):
            Run each batch as one packed row without padding (position ids restart after the prefix at every row)
            instead of right-padded rows. Unset: packed under flash attention (its varlen kernel needs no mask) and
            flex attention (a block mask of the row boundaries), padded under sdpa/eager, where packing needs a
            dense (tokens x tokens) mask.
        cpu_forward_overhead_flops (`float`, defaults to 4.8e7):
            The fixed cost of running one decoder layer once (Python, dispatch, kernel launches) on CPU, in the FLOPs
            the device would do in that time. Measured by ``zerank bench --crossover-docs N ...``
            (``forward_overhead_flops_measured``); the default is its value on a 2-thread AVX-512 CPU (a 2-token
            forward of the 2-layer model took 0.25 ms per layer, at a same-run matmul rate of 190 GFLOP/s).
        accelerator_forward_overhead_flops (`float`, defaults to 0.0):
            ``cpu_forward_overhead_flops`` on an accelerator. Not measured yet (0: the plan runs whenever it needs
            fewer FLOPs than the padded batch).
    """

    share_query_prefix: bool = True
    min_shared_prefix_tokens: int = 8
    max_batch_tokens: int | None = None
    cpu_max_batch_tokens: int = 512
    accelerator_max_batch_tokens: int = 32768
    max_prefix_mask_elements: int = 4194304
    pack_rows: bool | None = None
    cpu_forward_overhead_flops: float = 4.8e7
    accelerator_forward_overhead_flops: float = 0.0

    def __post_init__(self):
        for name in ("min_shared_prefix_tokens", "max_batch_tokens", "cpu_max_batch_tokens",
                     "accelerator_max_batch_tokens", "max_prefix_mask_elements"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}.")
        for name in ("cpu_forward_overhead_flops", "accelerator_forward_overhead_flops"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}.")

    @classmethod
    def from_values(cls, *sources: Any) -> FastPathSettings:
        """Settings from mappings or objects (later ones win), reading only this class's fields: e.g. a config of an
        older package, which carried these fields, then the load-time overrides. Unknown override keys raise."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {}
        for source in sources:
            if isinstance(source, Mapping):
                unknown = sorted(set(source) - names)
                if unknown:
                    raise ValueError(f"Unknown fast path settings {unknown}; known: {sorted(names)}.")
                values.update(source)
            elif source is not None:
                values.update({name: getattr(source, name) for name in names if hasattr(source, name)})
        return cls(**values)

    def batch_token_budget(self, device_type: str) -> int:
        """Tokens of one inference batch (rows x longest row) on a device of this type ("cpu", "cuda", ...)."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return self.cpu_max_batch_tokens if device_type == "cpu" else self.accelerator_max_batch_tokens

    def forward_overhead_flops(self, device_type: str) -> float:
        """The fixed cost of one layer's forward on a device of this type, in FLOPs."""
        return self.cpu_forward_overhead_flops if device_type == "cpu" else self.accelerator_forward_overhead_flops


class RepackedBatch(NamedTuple):
    """One forward of the fast path: rows ``indices`` of the incoming batch, right-padded to ``width`` tokens after
    the first ``prefix_len`` tokens they share (their prefix ``group``'s, run once), or run whole if it is 0."""

    indices: list[int]
    group: int
    prefix_len: int
    width: int


class FastPath:
    """The fast path of one model: its backbone ``config`` (shapes, attention implementation) and ``settings``."""

    def __init__(self, config, settings: FastPathSettings | None = None):
        self.config = config
        self.settings = settings if settings is not None else FastPathSettings()

    def supports(self) -> bool:
        """Whether the backbone's attention allows it: an attention kind of :data:`ATTENTION_KINDS` or flash
        attention, every layer full attention."""
        implementation = self.config._attn_implementation
        return (implementation in ATTENTION_KINDS or is_flash_attention(implementation)) and all(
            layer_type == "full_attention" for layer_type in self.config.layer_types
        )

    def pooled_hidden(self, backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
                      share_prefix: bool | None = None, max_batch_tokens: int | None = None) -> torch.Tensor | None:
        """The final hidden state (rows, hidden) of each row's last real token, or ``None`` when the plain padded
        forward is estimated cheaper. ``share_prefix`` and ``max_batch_tokens`` override the settings for this call.
        Call it at inference only (no gradients), on a backbone :meth:`supports`."""
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}.")
        device_type = input_ids.device.type
        share = self.settings.share_query_prefix if share_prefix is None else share_prefix
        budget = max_batch_tokens or self.settings.batch_token_budget(device_type)
        rows = real_token_rows(input_ids, attention_mask)
        plan = self.plan(rows, share, device_type, budget)
        padded = attention_mask is not None and not bool(attention_mask.all())
        if self.plan_cost(plan, device_type) >= self.forward_cost(device_type, *input_ids.shape, masked=padded):
            return None
        return self.run(backbone, rows, plan)

    def plan(self, rows: list[torch.Tensor], share: bool, device_type: str, budget: int) -> list[RepackedBatch]:
        """The forwards that replace the padded batch: rows grouped by shared prefix, then by length under the token
        budget; a batch keeps its group's prefix when its mask fits and the cost rule says the prefix pays."""
        min_prefix = self.settings.min_shared_prefix_tokens if share else None
        plan = []
        for group, (prefix_len, members) in enumerate(group_by_shared_prefix(rows, min_prefix)):
            lengths = [len(rows[i]) - prefix_len for i in members]
            for batch in token_budget_batches(lengths, budget):
                width = max(lengths[i] for i in batch)
                # The mask cap bounds a dense mask's memory; a block mask is as small as its row boundaries.
                dense_mask = width * (prefix_len + width)
                shared = bool(prefix_len) and (self.uses_block_masks()
                                               or dense_mask <= self.settings.max_prefix_mask_elements)
                shared = shared and (self.forward_cost(device_type, len(batch), width, prefix_len, masked=True)
                                     < self.forward_cost(device_type, len(batch), prefix_len + width))
                kept = prefix_len if shared else 0
                plan.append(RepackedBatch([members[i] for i in batch], group, kept, prefix_len + width - kept))
        return plan

    def plan_cost(self, plan: list[RepackedBatch], device_type: str) -> float:
        """Estimated cost (FLOPs) of a plan: its batches plus one forward per prefix it uses."""
        prefixes = {batch.group: batch.prefix_len for batch in plan if batch.prefix_len}
        return sum(self.forward_cost(device_type, 1, n) for n in prefixes.values()) + sum(
            self.forward_cost(device_type, len(b.indices), b.width, b.prefix_len, masked=bool(b.prefix_len))
            for b in plan
        )

    def forward_cost(self, device_type: str, rows: int, width: int, context: int = 0, masked: bool = False) -> float:
        """Estimated cost, in FLOPs, of one forward of ``rows`` rows of ``width`` tokens that attend to ``context``
        earlier tokens (a shared prefix): the linear layers, the attention (every key of the mask when one is passed,
        half the square under the kernel's own causal attention; under a block mask, the prefix plus half the square)
        and the per-layer fixed cost of the device kind."""
        config = self.config
        q_dim, kv_dim = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
        linear = 2 * config.hidden_size * (2 * q_dim + 2 * kv_dim + 3 * config.intermediate_size)
        keys = context + (width if masked and not self.uses_block_masks() else (width + 1) / 2)
        attention = 4 * q_dim * keys
        overhead = self.settings.forward_overhead_flops(device_type)
        return config.num_hidden_layers * (rows * width * (linear + attention) + overhead)

    def packs_rows(self) -> bool:
        """Whether batches run as one packed row (``pack_rows``; by default under flash and flex attention)."""
        if self.settings.pack_rows is not None:
            return self.settings.pack_rows
        return is_flash_attention(self.config._attn_implementation) or self.uses_block_masks()

    def uses_block_masks(self) -> bool:
        """Whether the backbone runs flex attention, which takes the fast path's masks as block masks."""
        return self.config._attn_implementation == FLEX_ATTENTION

    def run(self, backbone: nn.Module, rows: list[torch.Tensor], plan: list[RepackedBatch]) -> torch.Tensor:
        """Last-token hidden states of ``rows``, batch by batch as ``plan`` says; each prefix runs once, when first
        used."""
        pooled = torch.empty(len(rows), self.config.hidden_size, device=rows[0].device, dtype=backbone.dtype)
        prefix_caches = {}
        for batch in plan:
            cache = None
            if batch.prefix_len:
                if batch.group not in prefix_caches:
                    prefix_caches[batch.group] = self.prefix_cache(backbone, rows[batch.indices[0]][: batch.prefix_len])
                cache = prefix_caches[batch.group]
            continuations = [rows[i][batch.prefix_len :] for i in batch.indices]
            last_hidden = self._last_hidden_packed if self.packs_rows() else self._last_hidden_padded
            pooled[batch.indices] = last_hidden(backbone, continuations, batch.prefix_len, cache)
        return pooled

    def prefix_cache(self, backbone: nn.Module, prefix: torch.Tensor) -> SharedPrefixCache:
        """The keys and values of every layer for one prefix (batch 1)."""
        cache = SharedPrefixCache()
        # Under flex attention the causal block mask is given, so that transformers builds none of its own.
        mask = {}
        if self.uses_block_masks():
            mask["attention_mask"] = prefix_block_mask(prefix.new_zeros(len(prefix)), 0)
        backbone(input_ids=prefix[None], use_cache=True, **cache_argument(backbone, cache), **mask)
        return cache

    def _last_hidden_padded(self, backbone: nn.Module, rows: list[torch.Tensor], prefix_len: int,
                            cache: SharedPrefixCache | None) -> torch.Tensor:
        """Final hidden state of the last token of each row, the rows right-padded and continuing a shared prefix of
        ``prefix_len``."""
        device = rows[0].device
        lengths = torch.tensor([len(r) for r in rows], device=device)
        width = int(lengths.max())
        ids = torch.zeros((len(rows), width), dtype=rows[0].dtype, device=device)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        # Rows are right-padded, so under causal attention a real token never sees padding: every row needs the
        # same mask, and without a prefix none at all (the kernel's own causal attention, as in the plain path).
        position_ids = visible = None
        if prefix_len:
            position_ids = (prefix_len + torch.arange(width, device=device))[None]
        if self.uses_block_masks():
            # One block mask for every row: the whole prefix, then causally the row itself.
            visible = prefix_block_mask(torch.zeros(width, dtype=torch.long, device=device), prefix_len)
        elif prefix_len:
            # (1, 1, width, prefix_len + width): every token sees the whole prefix and, causally, its own row.
            keys = torch.arange(prefix_len + width, device=device)
            visible = self._mask((keys[None, :] <= position_ids[0, :, None])[None, None], backbone.dtype)
        hidden = backbone(input_ids=ids, attention_mask=visible, position_ids=position_ids, use_cache=False,
                          **cache_argument(backbone, cache)).last_hidden_state
        return hidden[torch.arange(len(rows), device=device), lengths - 1]

    def _last_hidden_packed(self, backbone: nn.Module, rows: list[torch.Tensor], prefix_len: int,
                            cache: SharedPrefixCache | None) -> torch.Tensor:
        """``_last_hidden_padded`` with the rows packed into one row of their total length: no padding. Position ids
        restart (after the prefix) at every row. Flash attention gets the row boundaries as varlen lengths (each
        row's keys are the prefix and its own tokens, laid out by the cache) and needs no mask; flex attention gets
        a block mask of the row boundaries (:func:`prefix_block_mask`); sdpa and eager get one dense (tokens x
        (prefix + tokens)) mask. Each says the same: the prefix (stored once), then causally the token's own row."""
        device = rows[0].device
        lengths = torch.tensor([len(r) for r in rows], device=device)
        ends = lengths.cumsum(0)
        total = int(ends[-1])
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=device), lengths)
        steps = torch.arange(total, device=device)
        position_ids = (prefix_len + steps - (ends - lengths)[row_of])[None]
        if is_flash_attention(self.config._attn_implementation):
            starts = nn.functional.pad(ends, (1, 0))
            kwargs = {
                "cu_seq_lens_q": starts.to(torch.int32),
                "cu_seq_lens_k": (starts + prefix_len * torch.arange(len(rows) + 1, device=device)).to(torch.int32),
                "max_length_q": int(lengths.max()),
                "max_length_k": prefix_len + int(lengths.max()),
                "attention_mask": None,
            }
            if cache is not None:
                cache = cache.continued_by(lengths.tolist())
        elif self.uses_block_masks():
            kwargs = {"attention_mask": prefix_block_mask((ends - lengths)[row_of], prefix_len)}
        else:
            own = (row_of[:, None] == row_of[None, :]) & (steps[None, :] <= steps[:, None])
            visible = torch.cat([own.new_ones(total, prefix_len), own], dim=-1)[None, None]
            kwargs = {"attention_mask": self._mask(visible, backbone.dtype)}
        hidden = backbone(input_ids=torch.cat(rows)[None], position_ids=position_ids, use_cache=False,
                          **cache_argument(backbone, cache), **kwargs).last_hidden_state
        return hidden[0, ends - 1]

    def _mask(self, visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A boolean attention mask as the attention implementation takes it: as is, or additive under eager."""
        if self.config._attn_implementation != "eager":
            return visible
        return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(
            ~visible, torch.finfo(dtype).min
        )


class SharedPrefixCache(DynamicCache):
    """The keys/values of one shared prefix (batch 1), read-only once filled.

    It implements the ``Cache`` interface the backbone calls (``update``, ``get_seq_length``). The first forward (the
    prefix, batch 1) stores each layer's keys/values. Every later forward continues the prefix: ``update`` returns
    the prefix expanded to the batch (a view) followed by the new keys/values and stores nothing, so one cache serves
    every batch of a group and the continuation's keys/values are freed layer by layer. For rows packed into one
    row for a varlen kernel, ``continued_by`` gives a view that lays out the prefix before every row instead.
    ``get_mask_sizes`` counts the prefix, so transformers sizes any mask it builds over prefix + continuation.
    """

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 packed_lengths: list[int] | None = None):
        super().__init__()
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] = [] if prefix is None else prefix
        self.packed_lengths = packed_lengths

    def continued_by(self, packed_lengths: list[int]) -> SharedPrefixCache:
        """A view of this prefix for one forward of rows packed into one row (batch 1) of these lengths, for a
        varlen attention kernel: ``update`` lays the keys/values out as prefix, row 1, prefix, row 2, ..."""
        return SharedPrefixCache(self.prefix, packed_lengths)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if len(self.prefix) == layer_idx:  # the prefix's own forward
            self.prefix.append((key_states, value_states))
            return key_states, value_states
        keys, values = self.prefix[layer_idx]
        return self._continued(keys, key_states), self._continued(values, value_states)

    def _continued(self, cached: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if self.packed_lengths is None:
            return torch.cat([cached.expand(new.shape[0], -1, -1, -1), new], dim=-2)
        pieces = [piece for row in new.split(self.packed_lengths, dim=-2) for piece in (cached, row)]
        return torch.cat(pieces, dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix[layer_idx][0].shape[-2] if len(self.prefix) > layer_idx else 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.get_seq_length(layer_idx) + query_length, 0


def cache_argument(backbone: nn.Module, cache: SharedPrefixCache | None) -> dict:
    """The backbone's keyword for a key/value cache: ``cache`` in recent transformers, ``past_key_values`` before
    (recent versions still take the old name, with a deprecation warning); none without a cache."""
    if cache is None:
        return {}
    name = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    return {name: cache}


FLEX_ATTENTION = "flex_attention"
#: The attention kinds (transformers' ``attn_implementation``, chosen when loading) the fast path builds masks for;
#: flash attention (any ``*flash*`` kernel) needs none. ``sdpa`` is transformers' default and the reference.
ATTENTION_KINDS = ("sdpa", "eager", FLEX_ATTENTION)
BLOCK_SIZE = 128  # flex attention's default sparse block size (tokens per query/key block)


def prefix_block_mask(row_starts: torch.Tensor, prefix_len: int, block_size: int = BLOCK_SIZE):
    """A flex-attention block mask for queries that see a shared prefix, then causally their own row.

    Query ``q`` (of ``len(row_starts)``, packed or one padded row) sees keys ``[0, prefix_len)`` and
    ``[prefix_len + row_starts[q], prefix_len + q]``, where ``row_starts[q]`` (non-decreasing) is where its row
    begins; keys are the prefix followed by the queries' own keys (``SharedPrefixCache``'s layout). The mask is
    built from the row boundaries per (query block, key block), never as a dense (queries x keys) tensor: blocks
    wholly visible are marked full (no mask evaluated), blocks that may hold a visible key partial (the mask is
    evaluated inside them), the rest skipped. One mask serves every row and head of a batch.
    """
    from torch.nn.attention.flex_attention import BlockMask

    device = row_starts.device
    queries, keys = len(row_starts), prefix_len + len(row_starts)
    row_starts = row_starts.to(torch.long)
    # The mask reads everything from per-query tensors, never from Python ints (a compiled kernel would recompile
    # for each prefix length) nor 0-d tensors (torch 2.13's CPU template miscompiles them): the prefix end and the
    # first own key of each query, padded to whole blocks (and one more) since kernels may evaluate the mask past
    # the last query up to the end of its block.
    padding = block_size * (2 + queries // block_size) - queries
    own_first_key = prefix_len + torch.cat([row_starts, row_starts[-1:].expand(padding)])
    prefix_end = torch.full_like(own_first_key, prefix_len)

    def mask_mod(batch, head, q, kv):
        return (kv < prefix_end[q]) | ((kv >= own_first_key[q]) & (kv <= prefix_end[q] + q))

    q_first = torch.arange(0, queries, block_size, device=device)
    q_last = (q_first + block_size - 1).clamp(max=queries - 1)
    kv_first = torch.arange(0, keys, block_size, device=device)
    kv_last = (kv_first + block_size - 1).clamp(max=keys - 1)
    # Over the queries of a block, the first row start is the smallest (the lowest first own key) and the last the
    # largest; the last visible own key is prefix_len + q, smallest at the block's first query.
    low_min, low_max = (prefix_len + row_starts[q_first])[:, None], (prefix_len + row_starts[q_last])[:, None]
    high_min, high_max = (prefix_len + q_first)[:, None], (prefix_len + q_last)[:, None]
    kv_first, kv_last = kv_first[None, :], kv_last[None, :]
    own_first = kv_first.clamp(min=prefix_len)
    full = (kv_last < prefix_len) | ((own_first >= low_max) & (kv_last <= high_min))
    # Blocks on the edge of the sequences (a partial block) are evaluated, not assumed full.
    full &= ((q_last - q_first + 1 == block_size)[:, None]) & (kv_last - kv_first + 1 == block_size)
    partial = ((kv_first < prefix_len) | ((low_min <= kv_last) & (high_max >= kv_first))) & ~full

    def indexed(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = blocks.sum(-1, dtype=torch.int32)
        order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return counts[None, None], order[None, None]

    return BlockMask.from_kv_blocks(*indexed(partial), *indexed(full), BLOCK_SIZE=block_size, mask_mod=mask_mod,
                                    seq_lengths=(queries, keys))


def is_flash_attention(implementation: str | None) -> bool:
    """Whether an attention implementation is a flash-attention kernel (varlen: packed rows need no mask)."""
    return bool(implementation) and "flash" in implementation


def real_token_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Each row's real tokens (padding dropped, left or right). The real tokens of a row must be contiguous."""
    if attention_mask is None:
        return list(input_ids)
    mask = attention_mask.bool()
    counts = mask.sum(-1)
    if not bool((counts > 0).all()):
        raise ValueError("Every row needs at least one real token, but the attention mask has an all-zero row.")
    first = mask.long().argmax(-1)
    if not bool((mask.long().cumsum(-1).gather(-1, (first + counts - 1)[:, None])[:, 0] == counts).all()):
        raise ValueError(
            "The attention mask must mark one contiguous run of real tokens per row (left or right padding)."
        )
    return [row[start : start + n] for row, start, n in zip(input_ids, first.tolist(), counts.tolist())]


def group_by_shared_prefix(rows: list[torch.Tensor], min_prefix: int | None) -> list[tuple[int, list[int]]]:
    """Partition row indices into (shared prefix length, members) groups that save the most tokens.

    Rows are sorted by their tokens, so rows with a common prefix (a rerank call's query) are neighbours, and a group
    is a run of neighbours: its prefix is the run's common prefix, capped so that every member keeps at least one
    token of its own. A group of k rows with prefix p saves (k - 1) * p tokens; runs are chosen by dynamic programming
    to save the most, using only prefixes of at least ``min_prefix`` tokens (so two queries that merely start alike
    are not merged into one short prefix when each has a longer one). Rows in no group (every row when ``min_prefix``
    is None) form one group with prefix length 0.
    """
    n = len(rows)
    if min_prefix is None or n < 2:
        return [(0, list(range(n)))]
    tokens = [r.tolist() for r in rows]
    order = sorted(range(n), key=lambda i: tokens[i])
    # limit[k]: the longest prefix sorted rows k and k + 1 can share while both keep a token of their own.
    limit = [
        min(common_prefix_length(tokens[a], tokens[b]), len(tokens[a]) - 1, len(tokens[b]) - 1)
        for a, b in zip(order, order[1:])
    ]
    best = [0] * (n + 1)  # best[j]: most tokens saved by grouping the first j sorted rows
    choice = [(j - 1, 0) for j in range(n + 1)]  # (start of the last group, its prefix); prefix 0 = a lone row
    for j in range(2, n + 1):
        best[j] = best[j - 1]
        prefix = None
        for i in range(j - 2, -1, -1):  # last group = sorted rows i .. j-1
            prefix = limit[i] if prefix is None else min(prefix, limit[i])
            if prefix < min_prefix:
                break
            saved = best[i] + (j - i - 1) * prefix
            if saved > best[j]:
                best[j], choice[j] = saved, (i, prefix)
    groups, unshared, j = [], [], n
    while j > 0:
        i, prefix = choice[j]
        if prefix:
            groups.append((prefix, order[i:j]))
        else:
            unshared.extend(order[i:j])
        j = i
    return groups[::-1] + ([(0, sorted(unshared))] if unshared else [])


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def token_budget_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group indices into batches, longest first, so that rows x longest row <= ``max_tokens``.

    A row longer than the budget gets a batch of its own. Every index appears exactly once.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}.")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        # Sorted longest first, so the first row of a batch is its longest.
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches
