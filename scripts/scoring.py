"""Scoring helpers shared by the scripts and the server: batches under a token budget, grouped by query.

``CrossEncoder.predict`` cuts a list into batches of a fixed number of pairs. Here the batches are bounded by tokens
instead (rows x longest row), keep each query's documents together (so the model runs their shared query prefix
once) and are length-sorted; zerank's forward then drops the padding and regroups rows by length under
``config.max_batch_tokens``, so no compute is spent on padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_zerank import token_budget_batches  # noqa: F401  (re-exported for the scripts)

# Tokens the zerank template adds around the query and the document.
TEMPLATE_OVERHEAD_TOKENS = 13
DEFAULT_MAX_BATCH_TOKENS = 65536


def query_grouped_batches(queries: Sequence[str], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices into batches of the same query's pairs (longest first) with rows x longest row <= max_tokens.

    Keeping a query's documents together lets the model run their shared query prefix once; the model regroups each
    batch by length internally, so the budget here only bounds the size of the tokenized batch.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}.")
    batches: list[list[int]] = []
    longest = 0
    for index in sorted(range(len(lengths)), key=lambda i: (queries[i], -lengths[i])):
        longest = max(longest, lengths[index]) if batches else lengths[index]
        if batches and (len(batches[-1]) + 1) * longest <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
            longest = lengths[index]
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
    """Score pairs with a ``CrossEncoder`` in query-grouped batches under a token budget, in input order.

    Args:
        model: A loaded ``CrossEncoder`` (zerank or any other).
        pairs: (query, document) pairs.
        output: "score" (the model's activation: zerank's calibrated 0..1 score), "logit" (no activation: zerank's
            calibrated logit) or "raw" (zerank's raw "Yes" logit, logit x temperature + bias).
        max_batch_tokens: Budget of one tokenized batch, rows x longest row.
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
    batches = query_grouped_batches([q for q, _ in pairs], lengths, max_batch_tokens)
    for batch in tqdm(batches, desc="Scoring", disable=not show_progress_bar):
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
