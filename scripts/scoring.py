"""Scoring helpers shared by the scripts and the server: length-sorted batches under a token budget.

``CrossEncoder.predict`` cuts a list into batches of a fixed number of pairs, each padded to its longest pair. For
rerank workloads whose documents vary in length, batches built under a token budget (rows x longest row) keep every
batch near the same cost and memory, whatever the lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

# Tokens the zerank template adds around the query and the document.
TEMPLATE_OVERHEAD_TOKENS = 13
DEFAULT_MAX_BATCH_TOKENS = 16384


def token_budget_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
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


def pair_lengths(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int | None = None) -> list[int]:
    """Token count of each rendered pair (query + document + template), capped at ``max_length``."""
    if not pairs:
        return []
    queries = tokenizer([q for q, _ in pairs], add_special_tokens=False)["input_ids"]
    documents = tokenizer([d for _, d in pairs], add_special_tokens=False)["input_ids"]
    lengths = [len(q) + len(d) + TEMPLATE_OVERHEAD_TOKENS for q, d in zip(queries, documents)]
    return [min(n, max_length) for n in lengths] if max_length else lengths


def score_pairs(
    model,
    pairs: Sequence[tuple[str, str]],
    *,
    output: str = "score",
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    show_progress_bar: bool = False,
    **predict_kwargs,
) -> np.ndarray:
    """Score pairs with a ``CrossEncoder`` in length-sorted batches under a token budget, in input order.

    Args:
        model: A loaded ``CrossEncoder`` (zerank or any other).
        pairs: (query, document) pairs.
        output: "score" (the model's activation: zerank's calibrated 0..1 score), "logit" (no activation: zerank's
            calibrated logit) or "raw" (zerank's raw "Yes" logit, logit x temperature + bias).
        max_batch_tokens: Budget of one batch, rows x longest row.
        show_progress_bar: Show a progress bar over batches.
        **predict_kwargs: Passed to ``CrossEncoder.predict`` (e.g. ``processing_kwargs`` for an instruction).

    Returns:
        float32 array of shape (len(pairs),).
    """
    if output not in ("score", "logit", "raw"):
        raise ValueError(f"output must be 'score', 'logit' or 'raw', got {output!r}.")
    scores = np.zeros(len(pairs), dtype=np.float32)
    if not pairs:
        return scores
    activation = None if output == "score" else torch.nn.Identity()
    lengths = pair_lengths(model.tokenizer, pairs, model.max_seq_length)
    for batch in tqdm(token_budget_batches(lengths, max_batch_tokens), desc="Scoring", disable=not show_progress_bar):
        values = model.predict(
            [pairs[i] for i in batch], batch_size=len(batch), activation_fn=activation, show_progress_bar=False,
            **predict_kwargs,
        )
        scores[batch] = np.asarray(values, dtype=np.float32).reshape(-1)
    if output == "raw":
        config = model.model.config
        if getattr(config, "model_type", None) != "zerank":
            raise ValueError("output='raw' needs a zerank model (score_temperature and score_bias in its config).")
        scores = scores * np.float32(config.score_temperature) + np.float32(config.score_bias)
    return scores
