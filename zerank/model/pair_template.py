"""``tokenizer(query, document)`` renders zerank's prompt: a pair template in ``tokenizer.json``.

Clients that know nothing of zerank (``transformers.pipeline("text-classification")``, ``rerankers``, Haystack's
``TransformersSimilarityRanker``, TEI-style runtimes) score a pair by calling the tokenizer with two texts. Qwen's
tokenizer concatenates them, which is not zerank's prompt, and the scores come out silently wrong. So the package
and every export carry a ``TemplateProcessing`` post-processor, written into ``tokenizer.json`` and read by the Rust
tokenizers library itself (no remote code): a pair becomes

    <|im_start|>system\\n {query} <|im_end|>\\n<|im_start|>user\\n {document} <|im_end|>\\n<|im_start|>assistant\\n

with the template's tokens taken from zerank's chat template, and a single text stays as it was (``$A``), so
everything that tokenizes a rendered prompt or one text (``encode_pairs``, vLLM, the ONNX/OpenVINO runtimes) gets
the same ids as before. Truncation of a pair counts the template's tokens and, with ``truncation="only_second"``,
cuts only the document.

Where it differs from :func:`zerank_st.encode_pairs` (measured by :func:`compare_with_encode_pairs`):

- content that begins with a line break (or whitespace then a line break): the rendered prompt tokenizes the
  template's ``\\n`` together with it, the pair template tokenizes the content alone;
- special-token text in content (``<|im_end|>``): the tokenizer matches it as a control token unless called with
  ``split_special_tokens=True``, while ``encode_pairs`` always splits it;
- truncation: ``truncation=True`` means "longest first", which also cuts the query once it is longer than what is
  left of the document; ``max_query_tokens`` is not applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tokenizers import processors
from transformers import PreTrainedTokenizerBase

from zerank_st import _special_token_pattern, _template_layout, encode_pairs

SLOT_NAMES = ("query", "document")
PIECE_NAMES = ("zerank_before_query", "zerank_between", "zerank_after_document")


def template_pieces(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """The token ids of the chat template before the query, between query and document, and after the document."""
    layout = _template_layout(tokenizer, False, _special_token_pattern(tokenizer))
    pieces: list[list[int]] = [[]]
    slots = []
    for part in layout:
        if isinstance(part, int):
            pieces[-1].append(part)
        elif part[1]:
            slots.append(part[0])
            pieces.append([])
        else:
            pieces[-1].extend(tokenizer(part[0], add_special_tokens=False, split_special_tokens=True)["input_ids"])
    if tuple(slots) != SLOT_NAMES:
        raise ValueError(f"zerank's chat template must put the query before the document, found {slots}.")
    return pieces


def pair_post_processor(tokenizer: PreTrainedTokenizerBase) -> processors.PostProcessor:
    """The tokenizer's own post-processor followed by zerank's pair template (single texts unchanged)."""
    special_tokens, pair = [], []
    for name, ids, slot in zip(PIECE_NAMES, template_pieces(tokenizer), ["$A:0", "$B:0", None]):
        if ids:
            special_tokens.append({"id": name, "ids": ids, "tokens": tokenizer.convert_ids_to_tokens(ids)})
            pair.append(f"{name}:0")
        if slot:
            pair.append(slot)
    template = processors.TemplateProcessing(single="$A:0", pair=" ".join(pair), special_tokens=special_tokens)
    own = tokenizer.backend_tokenizer.post_processor
    if own is None or isinstance(own, processors.TemplateProcessing):
        return template
    if isinstance(own, processors.Sequence):  # already ours (a rebuilt tokenizer): replace its template
        return processors.Sequence([own[0], template])
    return processors.Sequence([own, template])


def install_pair_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make ``tokenizer(query, document)`` yield zerank's prompt (in place; ``save_pretrained`` writes it)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} has no Rust backend to carry the pair template.")
    tokenizer.backend_tokenizer.post_processor = pair_post_processor(tokenizer)
    return tokenizer


@dataclass
class Exactness:
    """How ``tokenizer(query, document)`` compares with ``encode_pairs`` on a set of pairs."""

    pairs: int = 0
    identical: int = 0
    differing: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "identical": self.identical, "differing": len(self.differing)}


def compare_with_encode_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Iterable[tuple[str, str]],
                              max_length: int | None = None, split_special_tokens: bool = False,
                              batch: int = 256) -> Exactness:
    """Token ids of ``tokenizer(q, d)`` (``truncation="only_second"`` when ``max_length`` is given) against
    ``encode_pairs``, both with ``split_special_tokens`` (False: the tokenizer's default; True: how zerank scores)."""
    result = Exactness()
    pairs = list(pairs)
    for start in range(0, len(pairs), batch):
        _compare_chunk(tokenizer, pairs[start : start + batch], max_length, split_special_tokens, result)
    return result


def _compare_chunk(tokenizer, chunk: Sequence[tuple[str, str]], max_length: int | None, split: bool,
                   result: Exactness) -> None:
    size = {"truncation": "only_second", "max_length": max_length} if max_length else {}
    got = tokenizer([q for q, _ in chunk], [d for _, d in chunk], split_special_tokens=split, **size)["input_ids"]
    expected = encode_pairs(tokenizer, chunk, max_length=max_length, split_special_tokens=split)
    for pair, a, b in zip(chunk, got, expected):
        result.pairs += 1
        if a == b:
            result.identical += 1
        else:
            result.differing.append(pair)
