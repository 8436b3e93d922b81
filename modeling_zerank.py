"""zerank: a Qwen3 decoder scored as a reranker.

A (query, document) pair is rendered with zerank's chat template (system turn = query, user turn = document, then
the assistant prompt) and run through a Qwen3 backbone. The relevance logit is the language-model logit of the
"Yes" token at the last position, which is the hidden state of the last real token projected on one row of the LM
head. This file keeps only that row (``score.weight``, shape [1, hidden]) instead of the full-vocabulary head, and
returns the calibrated logit ``(h . w_yes - score_bias) / score_temperature``: its sigmoid is the 0..1 relevance
score (sentence-transformers applies the sigmoid by default for one label).

This file is self-contained: it is copied next to the weights and loaded with ``trust_remote_code=True``.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import DynamicCache
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model, Qwen3PreTrainedModel


@strict
class ZerankConfig(Qwen3Config):
    r"""
    Configuration of a zerank reranker: a Qwen3 backbone plus the scoring head.

    Args:
        yes_token_id (`int`, *optional*, defaults to 9454):
            Vocabulary id of the token "Yes" whose LM-head row becomes the scoring vector.
        score_temperature (`float`, *optional*, defaults to 5.0):
            Calibration temperature T in ``sigmoid((raw_logit - score_bias) / T)``. Must be positive.
        score_bias (`float`, *optional*, defaults to 0.0):
            Calibration bias b in ``sigmoid((raw_logit - b) / score_temperature)``.
        max_query_tokens (`int`, *optional*, defaults to 4096):
            Longest query (in tokens, instruction included) that the sentence-transformers input module keeps;
            longer queries are cut with a warning so that the document always has room in the context.
        split_special_tokens_in_content (`bool`, *optional*, defaults to `True`):
            The sentence-transformers input module tokenizes the query, the document and the instruction as text:
            a special-token string in them (``<|im_end|>``) becomes ordinary characters, never a control token, so
            content cannot close its turn. False restores upstream's encoding (the rendered prompt tokenized as one
            string), for parity with runtimes that do so.
        share_query_prefix (`bool`, *optional*, defaults to `True`):
            At inference, rows of a batch that begin with the same tokens (the query prefix of a rerank call) have that
            prefix run once; its keys/values are shared by the rows and only their remaining tokens are run. Exact.
        min_shared_prefix_tokens (`int`, *optional*, defaults to 8):
            Prefix sharing engages for a group of at least 2 rows whose common prefix has at least this many tokens.
        max_batch_tokens (`int`, *optional*):
            At inference, the padding of the incoming batch is dropped and rows are regrouped by length into batches
            of at most this many tokens (rows x longest row). When unset, the device kind's default below applies.
        cpu_max_batch_tokens (`int`, *optional*, defaults to 512):
            ``max_batch_tokens`` on CPU when it is unset.
        accelerator_max_batch_tokens (`int`, *optional*, defaults to 32768):
            ``max_batch_tokens`` on an accelerator (CUDA, MPS, ...) when it is unset.
        max_prefix_mask_elements (`int`, *optional*, defaults to 4194304):
            A batch that continues a shared prefix needs one boolean attention mask of (continuation length) x
            (prefix + continuation length) elements, shared by its rows; a batch without a prefix needs none (causal
            attention over right-padded rows). A batch whose mask would have more elements than this runs its rows
            whole instead (prefix included), so that long rows cost what the plain path costs. This bounds memory
            only (the default, 2048 x 2048, is 4 MiB as booleans and 16 MiB if the kernel makes it fp32); below it,
            ``forward_cost`` decides whether the prefix pays.
        pack_rows (`bool`, *optional*):
            Run each batch of the fast path as one packed row without padding (position ids restart after the
            prefix at every row) instead of right-padded rows. Unset: packed under flash attention, whose varlen
            kernel needs no mask, and padded under sdpa/eager, where packing needs a (tokens x tokens) mask and
            attention over all of it.
        cpu_forward_overhead_flops (`float`, *optional*, defaults to 4.8e7):
            The fixed cost of running one decoder layer once (Python, dispatch, kernel launches), on CPU, expressed
            as the FLOPs the device would do in that time. The fast path estimates the cost of its plan (FLOPs of
            the tokens it runs plus this per layer and forward) and runs the plain padded batch instead when that
            is estimated cheaper, as on tiny models where the per-forward cost outweighs the tokens saved.
            Measured by ``zerank bench --crossover-docs N ...`` (``forward_overhead_flops_measured``; the default
            is its value on a 2-thread AVX-512 CPU: a 2-token forward of the 2-layer model took 0.25 ms per layer,
            at a same-run matmul rate of 190 GFLOP/s).
        accelerator_forward_overhead_flops (`float`, *optional*, defaults to 0.0):
            ``cpu_forward_overhead_flops`` on an accelerator. Not measured yet (0: the plan runs whenever it needs
            fewer FLOPs than the padded batch).
        num_labels (`int`, *optional*, defaults to 1):
            One relevance logit per pair. Qwen3Config's default of 2 would make sentence-transformers skip the sigmoid.
    """

    model_type = "zerank"

    yes_token_id: int = 9454
    score_temperature: float = 5.0
    score_bias: float = 0.0
    max_query_tokens: int = 4096
    split_special_tokens_in_content: bool = True
    share_query_prefix: bool = True
    min_shared_prefix_tokens: int = 8
    max_batch_tokens: int | None = None
    cpu_max_batch_tokens: int = 512
    accelerator_max_batch_tokens: int = 32768
    max_prefix_mask_elements: int = 4194304
    pack_rows: bool | None = None
    cpu_forward_overhead_flops: float = 4.8e7
    accelerator_forward_overhead_flops: float = 0.0

    def __post_init__(self, **kwargs):
        if self.id2label is None:
            kwargs.setdefault("num_labels", 1)
        super().__post_init__(**kwargs)

    def validate_score(self):
        if not self.score_temperature > 0:
            raise ValueError(f"score_temperature must be positive, got {self.score_temperature}.")
        if not 0 <= self.yes_token_id < self.vocab_size:
            raise ValueError(f"yes_token_id {self.yes_token_id} is outside the vocabulary (size {self.vocab_size}).")
        if self.max_query_tokens < 1:
            raise ValueError(f"max_query_tokens must be at least 1, got {self.max_query_tokens}.")
        if self.min_shared_prefix_tokens < 1:
            raise ValueError(f"min_shared_prefix_tokens must be at least 1, got {self.min_shared_prefix_tokens}.")
        for name in ("max_batch_tokens", "cpu_max_batch_tokens", "accelerator_max_batch_tokens",
                     "max_prefix_mask_elements"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}.")
        for name in ("cpu_forward_overhead_flops", "accelerator_forward_overhead_flops"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}.")
        if self.num_labels != 1:
            raise ValueError(f"zerank scores one logit per pair, so num_labels must be 1, got {self.num_labels}.")

    def batch_token_budget(self, device_type: str) -> int:
        """Tokens of one inference batch (rows x longest row) on a device of this type ("cpu", "cuda", ...)."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return self.cpu_max_batch_tokens if device_type == "cpu" else self.accelerator_max_batch_tokens

    def packs_rows(self) -> bool:
        """Whether the fast path packs the rows of a batch into one row (``pack_rows``, by default under flash
        attention only)."""
        return self.pack_rows if self.pack_rows is not None else is_flash_attention(self._attn_implementation)

    def forward_cost(self, device_type: str, rows: int, width: int, context: int = 0, masked: bool = False) -> float:
        """Estimated cost, in FLOPs, of one forward of ``rows`` rows of ``width`` tokens that attend to ``context``
        earlier tokens (a shared prefix): the linear layers, the attention (every key of the mask when one is passed,
        half the square under the kernel's own causal attention) and the per-layer fixed cost of the device kind."""
        q_dim, kv_dim = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        linear = 2 * self.hidden_size * (2 * q_dim + 2 * kv_dim + 3 * self.intermediate_size)
        keys = context + width if masked else (width + 1) / 2
        attention = 4 * q_dim * keys
        overhead = self.cpu_forward_overhead_flops if device_type == "cpu" else self.accelerator_forward_overhead_flops
        return self.num_hidden_layers * (rows * width * (linear + attention) + overhead)


class ZerankPreTrainedModel(Qwen3PreTrainedModel):
    config_class = ZerankConfig
    config: ZerankConfig


class ZerankForSequenceClassification(ZerankPreTrainedModel):
    """Qwen3 backbone whose last-token hidden state is projected on the "Yes" row of the LM head.

    ``forward`` returns ``logits`` of shape (batch, 1): the calibrated logit. With ``labels`` (relevance in [0, 1])
    it also returns the binary cross-entropy of those logits.

    At inference (no gradients, no labels, no position ids, sdpa or eager attention) the padded batch is not run as
    it comes: its padding is dropped, rows that share a query prefix run that prefix once, and the remaining tokens
    are regrouped by length into batches under ``config.max_batch_tokens``, unless ``config.forward_cost`` estimates
    that plan dearer than the padded batch (tiny models, one long row). Scores equal the plain path's (within float
    rounding).
    """

    def __init__(self, config: ZerankConfig):
        super().__init__(config)
        self.model = Qwen3Model(config)
        self.score = nn.Linear(config.hidden_size, 1, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        share_prefix: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        r"""
        share_prefix (`bool`, *optional*):
            Overrides ``config.share_query_prefix`` for this call (inference fast path only).
        """
        if self._can_repack(input_ids, position_ids, inputs_embeds, labels, kwargs):
            share = self.config.share_query_prefix if share_prefix is None else share_prefix
            rows = real_token_rows(input_ids, attention_mask)
            plan = self._repack_plan(rows, share, input_ids.device.type)
            padded = attention_mask is not None and not bool(attention_mask.all())
            plain_cost = self.config.forward_cost(input_ids.device.type, *input_ids.shape, masked=padded)
            if self._plan_cost(plan, input_ids.device.type) < plain_cost:
                return SequenceClassifierOutput(logits=self.calibrate(self._run_plan(rows, plan)))

        if position_ids is None and attention_mask is not None:
            # Number real tokens from 0 in every row, so a left-padded row sees the positions it has unpadded.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        last = last_token_index(attention_mask, hidden_states.shape[1], hidden_states.device)
        pooled = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
        logits = self.calibrate(self.raw_logit(pooled))

        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits.squeeze(-1), labels.to(logits.device, torch.float32).view(-1)
            )
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def raw_logit(self, hidden: torch.Tensor) -> torch.Tensor:
        """The "Yes" logit of hidden states (..., hidden) as (..., 1), computed in fp32."""
        return nn.functional.linear(hidden.float(), self.score.weight.float())

    def calibrate(self, raw_logit: torch.Tensor) -> torch.Tensor:
        """Map raw "Yes" logits to calibrated logits, whose sigmoid is the 0..1 relevance score."""
        return (raw_logit - self.config.score_bias) / self.config.score_temperature

    def _can_repack(self, input_ids, position_ids, inputs_embeds, labels, kwargs) -> bool:
        wants_outputs = any(kwargs.get(k) for k in ("output_hidden_states", "output_attentions"))
        return (
            input_ids is not None
            and input_ids.dim() == 2
            and inputs_embeds is None
            and position_ids is None
            and labels is None
            and not wants_outputs
            and not self.training
            and not torch.is_grad_enabled()
            and (self.config._attn_implementation in ("sdpa", "eager")
                 or is_flash_attention(self.config._attn_implementation))
            and all(layer_type == "full_attention" for layer_type in self.config.layer_types)
        )

    def _repack_plan(self, rows: list[torch.Tensor], share: bool, device_type: str) -> list[RepackedBatch]:
        """The forwards that replace the padded batch: rows grouped by shared prefix, then by length under the token
        budget. A batch continues its group's prefix when its mask fits ``max_prefix_mask_elements`` and that is
        estimated cheaper than running its rows whole."""
        config = self.config
        budget = config.batch_token_budget(device_type)
        min_prefix = config.min_shared_prefix_tokens if share else None
        plan = []
        for group, (prefix_len, members) in enumerate(group_by_shared_prefix(rows, min_prefix)):
            lengths = [len(rows[i]) - prefix_len for i in members]
            for batch in token_budget_batches(lengths, budget):
                width = max(lengths[i] for i in batch)
                shared = bool(prefix_len) and width * (prefix_len + width) <= config.max_prefix_mask_elements and (
                    config.forward_cost(device_type, len(batch), width, prefix_len, masked=True)
                    < config.forward_cost(device_type, len(batch), prefix_len + width)
                )
                kept = prefix_len if shared else 0
                plan.append(RepackedBatch([members[i] for i in batch], group, kept, prefix_len + width - kept))
        return plan

    def _plan_cost(self, plan: list[RepackedBatch], device_type: str) -> float:
        """Estimated cost (FLOPs) of a plan: its batches plus one forward per prefix it uses."""
        prefixes = {batch.group: batch.prefix_len for batch in plan if batch.prefix_len}
        return sum(self.config.forward_cost(device_type, 1, n) for n in prefixes.values()) + sum(
            self.config.forward_cost(device_type, len(b.indices), b.width, b.prefix_len, masked=bool(b.prefix_len))
            for b in plan
        )

    def _run_plan(self, rows: list[torch.Tensor], plan: list[RepackedBatch]) -> torch.Tensor:
        """Raw logits of ``rows`` computed batch by batch as ``plan`` says; each prefix runs once, when first used."""
        pooled = torch.empty(len(rows), self.config.hidden_size, device=rows[0].device, dtype=self.dtype)
        prefix_caches = {}
        for batch in plan:
            cache = None
            if batch.prefix_len:
                if batch.group not in prefix_caches:
                    prefix_caches[batch.group] = self._prefix_cache(rows[batch.indices[0]][: batch.prefix_len])
                cache = prefix_caches[batch.group]
            pooled[batch.indices] = self._last_hidden(
                [rows[i][batch.prefix_len :] for i in batch.indices], batch.prefix_len, cache
            )
        return self.raw_logit(pooled)

    def _cache_argument(self, cache: SharedPrefixCache) -> dict:
        """The backbone's keyword for a key/value cache: ``cache`` in recent transformers, ``past_key_values``
        before (recent versions still take the old name, with a deprecation warning)."""
        name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        return {name: cache}

    def _prefix_cache(self, prefix: torch.Tensor) -> SharedPrefixCache:
        """The keys and values of every layer for one prefix (batch 1)."""
        cache = SharedPrefixCache()
        self.model(input_ids=prefix[None], use_cache=True, **self._cache_argument(cache))
        return cache

    def _last_hidden(self, rows: list[torch.Tensor], prefix_len: int, prefix_cache) -> torch.Tensor:
        """Final hidden state of the last token of each row, the rows continuing a shared prefix of ``prefix_len``."""
        if self.config.packs_rows():
            return self._last_hidden_packed(rows, prefix_len, prefix_cache)
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
            steps = torch.arange(width, device=device)
            position_ids = (prefix_len + steps)[None]
            # (1, 1, width, prefix_len + width): every token sees the whole prefix and, causally, its own row.
            keys = torch.arange(prefix_len + width, device=device)
            visible = (keys[None, :] <= position_ids[0, :, None])[None, None]
            if self.config._attn_implementation == "eager":
                visible = torch.zeros(visible.shape, dtype=self.dtype, device=device).masked_fill(
                    ~visible, torch.finfo(self.dtype).min
                )
        cache_argument = self._cache_argument(prefix_cache) if prefix_cache is not None else {}
        hidden = self.model(
            input_ids=ids, attention_mask=visible, position_ids=position_ids, use_cache=False, **cache_argument
        ).last_hidden_state
        return hidden[torch.arange(len(rows), device=device), lengths - 1]

    def _last_hidden_packed(self, rows: list[torch.Tensor], prefix_len: int, prefix_cache) -> torch.Tensor:
        """``_last_hidden`` with the rows packed into one row of their total length: no padding. Position ids restart
        (after the prefix) at every row. Flash attention gets the row boundaries as varlen lengths (each row's keys
        are the prefix and its own tokens, laid out by the cache) and needs no mask; sdpa and eager get one
        (tokens x (prefix + tokens)) mask: the prefix, then causal attention within the token's own row."""
        device = rows[0].device
        lengths = torch.tensor([len(r) for r in rows], device=device)
        ends = lengths.cumsum(0)
        total = int(ends[-1])
        row_of = torch.repeat_interleave(torch.arange(len(rows), device=device), lengths)
        steps = torch.arange(total, device=device)
        position_ids = (prefix_len + steps - (ends - lengths)[row_of])[None]
        cache = prefix_cache
        if is_flash_attention(self.config._attn_implementation):
            starts = nn.functional.pad(ends, (1, 0))
            kwargs = {
                "cu_seq_lens_q": starts.to(torch.int32),
                "cu_seq_lens_k": (starts + prefix_len * torch.arange(len(rows) + 1, device=device)).to(torch.int32),
                "max_length_q": int(lengths.max()),
                "max_length_k": prefix_len + int(lengths.max()),
                "attention_mask": None,
            }
            if prefix_cache is not None:
                cache = prefix_cache.continued_by(lengths.tolist())
        else:
            own = (row_of[:, None] == row_of[None, :]) & (steps[None, :] <= steps[:, None])
            visible = torch.cat([own.new_ones(total, prefix_len), own], dim=-1)[None, None]
            if self.config._attn_implementation == "eager":
                visible = torch.zeros(visible.shape, dtype=self.dtype, device=device).masked_fill(
                    ~visible, torch.finfo(self.dtype).min
                )
            kwargs = {"attention_mask": visible}
        cache_argument = self._cache_argument(cache) if cache is not None else {}
        hidden = self.model(
            input_ids=torch.cat(rows)[None], position_ids=position_ids, use_cache=False, **cache_argument, **kwargs
        ).last_hidden_state
        return hidden[0, ends - 1]


class RepackedBatch(NamedTuple):
    """One forward of the fast path: rows ``indices`` of the incoming batch, right-padded to ``width`` tokens after
    the first ``prefix_len`` tokens they share (their prefix ``group``'s, run once), or run whole if it is 0."""

    indices: list[int]
    group: int
    prefix_len: int
    width: int


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


def last_token_index(attention_mask: torch.Tensor | None, seq_len: int, device: torch.device) -> torch.Tensor:
    """Index of the last real token of each row: the rightmost position whose mask is 1.

    This is right for left padding (always the last column), right padding and no padding alike. Without a mask
    every row is taken to be unpadded.
    """
    if attention_mask is None:
        return torch.full((1,), seq_len - 1, device=device, dtype=torch.long)
    if not bool(attention_mask.any(dim=-1).all()):
        raise ValueError("Every row needs at least one real token, but the attention mask has an all-zero row.")
    positions = torch.arange(seq_len, device=attention_mask.device)
    return (positions * attention_mask.to(torch.long)).argmax(dim=-1).to(device)


__all__ = ["ZerankConfig", "ZerankForSequenceClassification", "ZerankPreTrainedModel"]
