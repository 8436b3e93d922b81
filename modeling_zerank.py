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
        share_query_prefix (`bool`, *optional*, defaults to `True`):
            At inference, rows of a batch that begin with the same tokens (the query prefix of a rerank call) have that
            prefix run once; its keys/values are shared by the rows and only their remaining tokens are run. Exact.
        min_shared_prefix_tokens (`int`, *optional*, defaults to 8):
            Prefix sharing engages for a group of at least 2 rows whose common prefix has at least this many tokens.
        max_batch_tokens (`int`, *optional*):
            At inference, the padding of the incoming batch is dropped and rows are regrouped by length into batches
            of at most this many tokens (rows x longest row). When unset, the device kind's default below applies.
        cpu_max_batch_tokens (`int`, *optional*, defaults to 2048):
            ``max_batch_tokens`` on CPU when it is unset.
        accelerator_max_batch_tokens (`int`, *optional*, defaults to 32768):
            ``max_batch_tokens`` on an accelerator (CUDA, MPS, ...) when it is unset.
        num_labels (`int`, *optional*, defaults to 1):
            One relevance logit per pair. Qwen3Config's default of 2 would make sentence-transformers skip the sigmoid.
    """

    model_type = "zerank"

    yes_token_id: int = 9454
    score_temperature: float = 5.0
    score_bias: float = 0.0
    max_query_tokens: int = 4096
    share_query_prefix: bool = True
    min_shared_prefix_tokens: int = 8
    max_batch_tokens: int | None = None
    cpu_max_batch_tokens: int = 2048
    accelerator_max_batch_tokens: int = 32768

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
        for name in ("max_batch_tokens", "cpu_max_batch_tokens", "accelerator_max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}.")
        if self.num_labels != 1:
            raise ValueError(f"zerank scores one logit per pair, so num_labels must be 1, got {self.num_labels}.")

    def batch_token_budget(self, device_type: str) -> int:
        """Tokens of one inference batch (rows x longest row) on a device of this type ("cpu", "cuda", ...)."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return self.cpu_max_batch_tokens if device_type == "cpu" else self.accelerator_max_batch_tokens


class ZerankPreTrainedModel(Qwen3PreTrainedModel):
    config_class = ZerankConfig
    config: ZerankConfig


class ZerankForSequenceClassification(ZerankPreTrainedModel):
    """Qwen3 backbone whose last-token hidden state is projected on the "Yes" row of the LM head.

    ``forward`` returns ``logits`` of shape (batch, 1): the calibrated logit. With ``labels`` (relevance in [0, 1])
    it also returns the binary cross-entropy of those logits.

    At inference (no gradients, no labels, sdpa or eager attention) the padded batch is not run as it comes: its
    padding is dropped, rows that share a query prefix run that prefix once, and the remaining tokens are regrouped by
    length into batches under ``config.max_batch_tokens``. Scores equal the plain path's (within float rounding).
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
            raw = self._repacked_raw_logits(input_ids, attention_mask, share)
            return SequenceClassifierOutput(logits=self.calibrate(raw))

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
            and self.config._attn_implementation in ("sdpa", "eager")
            and all(layer_type == "full_attention" for layer_type in self.config.layer_types)
        )

    def _repacked_raw_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, share: bool):
        rows = real_token_rows(input_ids, attention_mask)
        budget = self.config.batch_token_budget(input_ids.device.type)
        min_prefix = self.config.min_shared_prefix_tokens if share else None
        pooled = torch.empty(len(rows), self.config.hidden_size, device=input_ids.device, dtype=self.dtype)
        for prefix_len, members in group_by_shared_prefix(rows, min_prefix):
            prefix_cache = self._prefix_cache(rows[members[0]][:prefix_len]) if prefix_len else None
            lengths = [len(rows[i]) - prefix_len for i in members]
            for batch in token_budget_batches(lengths, budget):
                indices = [members[i] for i in batch]
                pooled[indices] = self._last_hidden([rows[i][prefix_len:] for i in indices], prefix_len, prefix_cache)
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
        device = rows[0].device
        lengths = torch.tensor([len(r) for r in rows], device=device)
        width = int(lengths.max())
        ids = torch.zeros((len(rows), width), dtype=rows[0].dtype, device=device)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        steps = torch.arange(width, device=device)
        # Positions continue the prefix explicitly: right padding never shifts them.
        position_ids = (prefix_len + steps).expand(len(rows), -1)
        # (rows, 1, width, prefix_len + width): every token sees the whole prefix and, causally, its row's real tokens.
        # Padded query positions still see their row's first token, so no softmax row is empty.
        key_real = steps[None, :] < lengths[:, None]
        causal = steps[None, :] <= steps[:, None]
        own = causal[None] & key_real[:, None, :]
        visible = torch.cat([own.new_ones(len(rows), width, prefix_len), own], dim=-1)[:, None]
        if self.config._attn_implementation == "eager":
            visible = torch.zeros(visible.shape, dtype=self.dtype, device=device).masked_fill(
                ~visible, torch.finfo(self.dtype).min
            )
        cache_argument = self._cache_argument(prefix_cache) if prefix_cache is not None else {}
        hidden = self.model(
            input_ids=ids, attention_mask=visible, position_ids=position_ids, use_cache=False, **cache_argument
        ).last_hidden_state
        return hidden[torch.arange(len(rows), device=device), lengths - 1]


class SharedPrefixCache(DynamicCache):
    """The keys/values of one shared prefix (batch 1), read-only once filled.

    It implements the ``Cache`` interface the backbone calls (``update``, ``get_seq_length``). The first forward (the
    prefix, batch 1) stores each layer's keys/values. Every later forward continues the prefix: ``update`` returns
    the prefix expanded to the batch (a view) followed by the new keys/values and stores nothing, so one cache serves
    every batch of a group and the continuation's keys/values are freed layer by layer.
    """

    def __init__(self):
        super().__init__()
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if len(self.prefix) == layer_idx:  # the prefix's own forward
            self.prefix.append((key_states, value_states))
            return key_states, value_states
        keys, values = self.prefix[layer_idx]
        batch = key_states.shape[0]
        return (torch.cat([keys.expand(batch, -1, -1, -1), key_states], dim=-2),
                torch.cat([values.expand(batch, -1, -1, -1), value_states], dim=-2))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix[layer_idx][0].shape[-2] if len(self.prefix) > layer_idx else 0


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
