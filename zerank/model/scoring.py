"""Scoring pairs with a reranker, and the calibration formula.

zerank's score of a pair is ``sigmoid((raw - b) / T)``: ``raw`` is the "Yes" logit, T and b are the config's
``score_temperature`` and ``score_bias``. The functions below are the one place the library applies that formula.

``score_pairs`` hands ``CrossEncoder.predict`` one query's pairs at a time (longest first, at most
``PAIRS_PER_CALL`` or ``batch_size`` pairs), so that zerank runs their shared query prefix once; zerank's forward
drops the padding and regroups the rows by length into batches under ``max_batch_tokens`` (rows x longest row).
Other cross-encoders get batches under the same token budget directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from sentence_transformers import CrossEncoder
from tqdm.auto import tqdm

from zerank.model.loading import is_zerank
from zerank_fast_path import FastPathSettings

# Pairs handed to one predict call: bounds the padded tokenized batch (the model regroups it into forward batches).
PAIRS_PER_CALL = 256
Output = Literal["score", "logit", "raw"]


def calibrated_logit(raw, temperature: float, bias: float):
    """(raw - bias) / temperature: the logit whose sigmoid is the 0..1 score (numpy arrays or tensors)."""
    return (raw - bias) / temperature


def raw_logit(calibrated, temperature: float, bias: float):
    """The inverse of :func:`calibrated_logit`: the "Yes" logit."""
    return calibrated * temperature + bias


def calibrated_score(raw, temperature: float, bias: float) -> np.ndarray:
    """sigmoid((raw - bias) / temperature) in float64 (computed as exp(-log(1 + exp(-x))), stable for any x)."""
    return np.exp(-np.logaddexp(0.0, -calibrated_logit(np.asarray(raw, dtype=np.float64), temperature, bias)))


def template_overhead_tokens(tokenizer) -> int:
    """Tokens the chat template adds around a query and a document (13 for zerank's)."""
    empty = tokenizer.apply_chat_template([{"role": "query", "content": ""}, {"role": "document", "content": ""}],
                                          tokenize=False)
    return len(tokenizer(empty, add_special_tokens=False)["input_ids"])


def pair_lengths(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int | None = None) -> list[int]:
    """Token count of each rendered pair (query + document + template), capped at ``max_length``."""
    if not pairs:
        return []
    overhead = template_overhead_tokens(tokenizer)
    # Content is tokenized as text (special-token strings split), as zerank's input module encodes it.
    queries = tokenizer([q for q, _ in pairs], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    documents = tokenizer([d for _, d in pairs], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    lengths = [len(q) + len(d) + overhead for q, d in zip(queries, documents)]
    return [min(n, max_length) for n in lengths] if max_length else lengths


def query_grouped_batches(queries: Sequence[str], lengths: Sequence[int], max_tokens: int | None = None,
                          max_pairs: int | None = None) -> list[list[int]]:
    """Group indices into batches of one query's pairs, longest first, with rows x longest row <= ``max_tokens``
    and at most ``max_pairs`` rows (either bound may be None). A row over the token budget gets a batch alone."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}.")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be positive, got {max_pairs}.")
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (queries[i], -lengths[i])):
        if batches:
            batch = batches[-1]
            first = batch[0]  # the longest row of its batch
            fits = (queries[first] == queries[index]
                    and (max_tokens is None or (len(batch) + 1) * lengths[first] <= max_tokens)
                    and (max_pairs is None or len(batch) < max_pairs))
            if fits:
                batch.append(index)
                continue
        batches.append([index])
    return batches


def batch_token_budget(model: CrossEncoder) -> int:
    """The token budget of one forward batch: a zerank model's fast-path setting for its device kind; for other
    cross-encoders, zerank's default for that device kind."""
    settings = model.model.fast_path.settings if is_zerank(model) else FastPathSettings()
    return settings.batch_token_budget(model.device.type)


def score_pairs(
    model: CrossEncoder,
    pairs: Sequence[tuple[str, str]],
    *,
    output: Output = "score",
    max_batch_tokens: int | None = None,
    batch_size: int | None = None,
    instruction: str | None = None,
    show_progress_bar: bool = False,
) -> np.ndarray:
    """Score (query, document) pairs with a ``CrossEncoder``, in input order.

    Args:
        model: A loaded ``CrossEncoder`` (zerank or any other).
        pairs: (query, document) pairs.
        output: "score" (the model's activation: zerank's calibrated 0..1 score), "logit" (no activation: zerank's
            calibrated logit) or "raw" (zerank's raw "Yes" logit).
        max_batch_tokens: Token budget of one forward batch (rows x longest row). A zerank model gets it with
            every forward (its ``max_batch_tokens`` keyword); default: the model's budget for its device kind.
        batch_size: Also cap the pairs per predict call (and so per forward batch).
        instruction: zerank only: an instruction rendered with every query.
        show_progress_bar: Show a progress bar over predict calls.

    Returns:
        float32 array of shape (len(pairs),).
    """
    if output not in ("score", "logit", "raw"):
        raise ValueError(f"output must be 'score', 'logit' or 'raw', got {output!r}.")
    zerank = is_zerank(model)
    if (output == "raw" or instruction) and not zerank:
        raise ValueError("output='raw' and an instruction need a zerank model (its config and chat template).")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}.")
    scores = np.zeros(len(pairs), dtype=np.float32)
    if not pairs:
        return scores
    budget = max_batch_tokens or batch_token_budget(model)
    lengths = pair_lengths(model.tokenizer, pairs, model.max_seq_length)
    queries = [q for q, _ in pairs]
    if zerank:  # the model batches by tokens itself: hand it whole query groups
        calls = query_grouped_batches(queries, lengths, max_pairs=batch_size or PAIRS_PER_CALL)
    else:
        calls = query_grouped_batches(queries, lengths, max_tokens=budget, max_pairs=batch_size)
    predict_kwargs = {"processing_kwargs": {"chat_template": {"instruction": instruction}}} if instruction else {}
    if zerank and max_batch_tokens is not None:
        predict_kwargs["max_batch_tokens"] = max_batch_tokens  # predict passes it on to the model's forward
    activation = None if output == "score" else torch.nn.Identity()
    for call in tqdm(calls, desc="Scoring", unit="batch", disable=not show_progress_bar):
        values = model.predict([pairs[i] for i in call], batch_size=len(call), activation_fn=activation,
                               show_progress_bar=False, **predict_kwargs)
        scores[call] = np.asarray(values, dtype=np.float32).reshape(-1)
    if output == "raw":
        config = model.model.config
        scores = raw_logit(scores, np.float32(config.score_temperature), np.float32(config.score_bias))
    return scores
