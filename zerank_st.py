"""sentence-transformers input module for zerank (loaded by ``CrossEncoder(..., trust_remote_code=True)``).

A (query, document) pair becomes token ids with :func:`encode_pairs`, which the module's ``preprocess`` (and so
``predict``, ``rank`` and ``CrossEncoderTrainer``) uses and which other runtimes can call with a tokenizer alone:

- Content is text. The query, the document and the instruction are tokenized with the tokenizer's special tokens
  split (``<|im_end|>`` in a document becomes the characters ``<``, ``|``, ``im``..., never the control token), so
  content cannot close its turn or open another. Only the chat template's own text can produce special tokens.
  Content holding no special-token string gets exactly the token ids of the rendered prompt tokenized as one string
  (what upstream and vLLM do). ``config.split_special_tokens_in_content = False`` restores upstream's behaviour.
- The rendered prompt is cut from the right to ``max_length`` (so the document is cut first) and the template suffix
  after the document is restored, so the last token stays the assistant prompt's. Queries longer than
  ``max_query_tokens`` are cut first, with a warning.
- Pairs that are not two valid strings are rejected with an error that names the input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from sentence_transformers.base.modules import Transformer

logger = logging.getLogger(__name__)

# Stand-ins for the content while the chat template renders: private-use characters that no template writes, so
# the render shows where the template put each content string (the template must insert each one verbatim, once).
_SLOTS = {"query": "\ue000query\ue001", "document": "\ue000document\ue001", "instruction": "\ue000instruction\ue001"}
_SLOT_PATTERN = re.compile("(" + "|".join(map(re.escape, _SLOTS.values())) + ")")
_SLOT_NAMES = {slot: name for name, slot in _SLOTS.items()}


def encode_pairs(
    tokenizer,
    pairs: Sequence[Any],
    *,
    instruction: str | None = None,
    max_length: int | None = None,
    max_query_tokens: int | None = None,
    split_special_tokens: bool = True,
) -> list[list[int]]:
    """Token ids of zerank's prompt for each (query, document) pair, unpadded.

    Args:
        tokenizer: A transformers tokenizer whose ``chat_template`` is zerank's.
        pairs: (query, document) pairs of strings.
        instruction: Rendered with every query (zerank's template wraps the query and the instruction in tags).
        max_length: Cut each prompt to this many tokens from the right, then restore the template suffix after the
            document, so the document is cut first and the prompt still ends with the assistant prompt.
        max_query_tokens: Cut longer queries to their first ``max_query_tokens`` tokens first (with a warning).
        split_special_tokens: Tokenize content with special tokens split (the default); False tokenizes the
            rendered prompt as one string, as upstream does, so special-token strings in content become control
            tokens.

    Returns:
        One list of token ids per pair.

    Raises:
        TypeError: A query, document or the instruction is not a string.
        ValueError: A pair is not two strings, or a string is not valid Unicode (a lone surrogate).
    """
    checked = [_check_pair(item) for item in pairs]
    if instruction is not None:
        _check_text(instruction, "The instruction")
    if max_query_tokens is not None:
        checked = _cap_queries(tokenizer, checked, max_query_tokens, split_special_tokens)
    # The template treats an empty instruction as none.
    layout = _template_layout(tokenizer, bool(instruction), _special_token_pattern(tokenizer))
    # Each prompt is a run of pieces: the template's special tokens (ids) and text chunks (template text and
    # content between two of them, tokenized together as one string, exactly as the tokenizer splits a string).
    chunks: list[str] = []
    prompts: list[tuple[list[int | tuple[int, bool]], int]] = []
    for query, document in checked:
        content = {"query": query, "document": document, "instruction": instruction}
        pieces: list[int | tuple[int, bool]] = []  # special-token ids and (chunk index, holds content)
        text, has_content = "", False
        for part in layout + [None]:
            if isinstance(part, tuple):
                name, is_slot = part
                text, has_content = text + (content[name] if is_slot else name), has_content or is_slot
                continue
            if text:
                pieces.append((len(chunks), has_content))
                chunks.append(text)
            if part is not None:
                pieces.append(part)
            text, has_content = "", False
        # The suffix restored after a cut is what follows the last chunk holding content (the document's).
        last = max((i for i, piece in enumerate(pieces) if isinstance(piece, tuple) and piece[1]), default=-1)
        prompts.append((pieces, last + 1))
    if not chunks:
        return [[] for _ in prompts]
    # A chunk never contributes more than max_length tokens, so a long document is cut while it is tokenized.
    size = {"truncation": True, "max_length": max_length} if max_length else {"verbose": False}
    chunk_ids = tokenizer(chunks, add_special_tokens=False, split_special_tokens=split_special_tokens, **size)
    chunk_ids = chunk_ids["input_ids"]
    encoded = []
    for pieces, suffix_start in prompts:
        runs = [[piece] if isinstance(piece, int) else chunk_ids[piece[0]] for piece in pieces]
        ids = [token for run in runs for token in run]
        if max_length and len(ids) > max_length:
            suffix = [token for run in runs[suffix_start:] for token in run]
            keep = min(len(suffix), max_length)
            ids = ids[: max_length - keep] + suffix[len(suffix) - keep :]
        encoded.append(ids)
    return encoded


def _template_layout(tokenizer, with_instruction: bool, special: re.Pattern | None) -> list[tuple[str, bool] | int]:
    """The rendered chat template as a list of special-token ids, template text ``(text, False)`` and content
    slots ``(name, True)``."""
    messages = [{"role": "query", "content": _SLOTS["query"]}, {"role": "document", "content": _SLOTS["document"]}]
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, instruction=_SLOTS["instruction"] if with_instruction else None
    )
    parts = _SLOT_PATTERN.split(rendered)
    names = sorted(_SLOT_NAMES[part] for part in parts[1::2])
    expected = sorted(["query", "document"] + (["instruction"] if with_instruction else []))
    if names != expected:
        raise ValueError(
            f"zerank's chat template must insert the query, the document and the instruction verbatim, once each "
            f"(found {names}, expected {expected})."
        )
    layout: list[tuple[str, bool] | int] = []
    for index, part in enumerate(parts):
        if index % 2:
            layout.append((_SLOT_NAMES[part], True))
            continue
        for piece_index, piece in enumerate(special.split(part) if special else [part]):
            if piece_index % 2:
                layout.append(tokenizer.convert_tokens_to_ids(piece))
            elif piece:
                layout.append((piece, False))
    return layout


def _special_token_pattern(tokenizer) -> re.Pattern | None:
    """The tokenizer's special tokens (the ones ``split_special_tokens`` splits), longest first."""
    tokens = sorted({token.content for token in tokenizer.added_tokens_decoder.values() if token.special},
                    key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, tokens)) + ")") if tokens else None


def _cap_queries(tokenizer, pairs: list[tuple[str, str]], cap: int, split_special_tokens: bool) -> list[tuple[str, str]]:
    if not pairs:
        return pairs
    token_ids = tokenizer([q for q, _ in pairs], add_special_tokens=False, split_special_tokens=split_special_tokens,
                          verbose=False)["input_ids"]
    capped = []
    for (query, document), ids in zip(pairs, token_ids):
        if len(ids) > cap:
            logger.warning(
                "A query of %d tokens is longer than max_query_tokens=%d: keeping its first %d tokens.",
                len(ids), cap, cap,
            )
            query = tokenizer.decode(ids[:cap])
        capped.append((query, document))
    return capped


def _check_pair(item: Any) -> tuple[str, str]:
    # Errors name the pair by its text: sentence-transformers sorts a predict call's pairs by length before they
    # reach the module, so a position here is not the caller's.
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"Each input must be a (query, document) pair of two strings, got {item!r:.80}.")
    query, document = item
    _check_text(query, f"Input {item!r:.80}: the query")
    _check_text(document, f"Input {item!r:.80}: the document")
    return query, document


def _check_text(value: Any, name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__} ({value!r:.80}).")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{name} is not valid Unicode text: character {error.start} is a lone surrogate "
            f"({value[error.start]!r}); decode the source with errors='replace' or remove it."
        ) from None


class ZerankTransformer(Transformer):
    """The standard ``Transformer`` input module with zerank's encoding (:func:`encode_pairs`).

    Args: as :class:`sentence_transformers.base.modules.Transformer`. The query cap (``max_query_tokens``) and
    ``split_special_tokens_in_content`` are read from the model config, so that they travel with the checkpoint.
    ``predict(..., share_prefix=False, max_batch_tokens=N)`` passes those per-call settings of the model's inference
    fast path on to its forward.
    """

    forward_kwargs: ClassVar[set[str]] = {*Transformer.forward_kwargs, "share_prefix", "max_batch_tokens"}

    @property
    def max_query_tokens(self) -> int:
        return min(self.model.config.max_query_tokens, max(1, (self.max_seq_length or 2**31) // 2))

    @property
    def split_special_tokens_in_content(self) -> bool:
        return getattr(self.model.config, "split_special_tokens_in_content", True)

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, processing_kwargs=None,
                   **kwargs) -> dict[str, Any]:
        """Token ids of the pairs, padded, as tensors. ``prompt`` or ``processing_kwargs={"chat_template":
        {"instruction": ...}}`` is the instruction; ``max_length`` (keyword or in ``processing_kwargs``) overrides
        the model's ``max_seq_length``; ``truncation=False`` in ``processing_kwargs`` keeps whole prompts."""
        if kwargs.get("task") and inputs and all(isinstance(item, str) for item in inputs):
            # Single texts with a task come from sentence-transformers' dataset statistics (token counts for the
            # model card); they are tokenized without the template and are never scored.
            return dict(self.tokenizer(list(inputs), padding=True, truncation=True, return_tensors="pt"))
        if not inputs:
            return {}
        settings = self._merge_processing_kwargs(processing_kwargs)
        template = settings.get("chat_template", {})
        sizes = {**settings.get("common", {}), **settings.get("text", {}), **template}
        unknown = sorted(set(sizes) - {"instruction", "max_length", "truncation"})
        if unknown:
            raise ValueError(f"zerank's input module reads only 'instruction', 'max_length' and 'truncation' from "
                             f"processing_kwargs, got {unknown}.")
        instruction = template.get("instruction") or prompt
        max_length = sizes.get("max_length") or kwargs.get("max_length") or self.max_seq_length
        if sizes.get("truncation", True) in (False, "do_not_truncate"):
            max_length = None
        ids = encode_pairs(
            self.tokenizer, inputs, instruction=instruction, max_length=max_length,
            max_query_tokens=self.max_query_tokens, split_special_tokens=self.split_special_tokens_in_content,
        )
        features = dict(self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt"))
        features["modality"] = "message"
        return features
