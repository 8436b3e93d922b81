"""Long documents: score the best passage, and say which passage it was.

The rule, in one place (the Python API, ``zerank evaluate``/``rerank --long-documents chunk`` and ``zerank serve
--long-documents chunk`` all call it):

- **Fit.** A document whose prompt (query, chat template and document) has at most ``max_tokens`` tokens is scored
  whole, as without chunking: the same pair, so the same token ids and the same score.
- **Windows.** A longer one is split into windows of its tokens (the tokenization the scoring uses: zerank's, with
  ``split_special_tokens_in_content`` as the model's config says), each window's prompt at most ``max_tokens``
  tokens, consecutive windows sharing at least ``overlap`` document tokens. A window is a substring of the document:
  it is cut only between two tokens, never inside a character (byte-level tokens that split one character), before a
  combining mark, next to a zero-width joiner, inside an emoji sequence (variation selectors, skin tones) or between
  CR and LF; among those cuts a word boundary is preferred (a window ends within its last half, the next one starts
  at most ``overlap`` tokens earlier than it must). So ``document[start:end]`` is the window, exactly.
- **Scores.** Every window is scored with the query through the same path as any pair
  (:func:`zerank.model.scoring.score_pairs`, so a document's windows share the query prefix in the fast path), and
  the document's logit is the aggregation of its windows' calibrated logits: ``max`` (the default) or ``mean`` of
  the ``top_k`` best. Its score is the model's activation (zerank: the sigmoid) of that logit; the raw "Yes" logit
  aggregates the same way (the calibration is affine). The result carries the best window as character offsets.

Defaults: windows of 512 prompt tokens sharing 64 tokens. 512 is the passage length rerankers are trained on (MS
MARCO and BEIR passages; zerank's search API cuts its long snippets at 2,000 characters, about as many tokens), short
enough for a RAG pipeline to use the winning window as its passage, and one window fills the CPU's default forward
batch (512 tokens); 64 tokens of overlap (a sentence or two) keep a sentence that straddles a cut whole in one window,
for about 20% more tokens than the document has (the overlap, and every window's query and template).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from zerank.model.loading import is_zerank
from zerank.model.scoring import Output, score_pairs
from zerank.utils.long_document_arguments import CHUNK_AGGREGATION, CHUNK_OVERLAP, CHUNK_TOKENS, CHUNK_TOP_K
from zerank_st import encode_pairs

Aggregation = Literal["max", "mean"]


@dataclass(frozen=True)
class ChunkSettings:
    """How long documents are windowed and their windows' logits aggregated.

    Args:
        max_tokens: Tokens of one window's whole prompt (query, template, window). A document whose prompt fits is
            scored whole. Must leave more than ``overlap`` tokens for the document after the query and template.
        overlap: Document tokens consecutive windows share, at least (a cut moves back to a word boundary).
        aggregation: "max" (the best window) or "mean" (of the ``top_k`` best windows' calibrated logits).
        top_k: Windows ``mean`` averages (all of them when a document has fewer).
    """

    max_tokens: int = CHUNK_TOKENS
    overlap: int = CHUNK_OVERLAP
    aggregation: Aggregation = CHUNK_AGGREGATION
    top_k: int = CHUNK_TOP_K

    def __post_init__(self):
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens (the window budget) must be a positive number of tokens, got "
                             f"{self.max_tokens!r}.")
        if not isinstance(self.overlap, int) or self.overlap < 0:
            raise ValueError(f"overlap must be at least 0 tokens, got {self.overlap!r}.")
        if self.overlap >= self.max_tokens:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than the window budget max_tokens "
                             f"({self.max_tokens}): windows would never advance.")
        if self.aggregation not in ("max", "mean"):
            raise ValueError(f"aggregation must be 'max' or 'mean', got {self.aggregation!r}.")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k!r}.")

    @classmethod
    def from_arguments(cls, args: Any) -> ChunkSettings:
        """The settings of a :class:`zerank.utils.long_document_arguments.ChunkArguments` (None: the defaults)."""
        if args is None:
            return cls()
        return cls(args.chunk_tokens, args.chunk_overlap, args.chunk_aggregation, args.chunk_top_k)

    def describe(self) -> dict:
        return {"max_tokens": self.max_tokens, "overlap": self.overlap, "aggregation": self.aggregation,
                "top_k": self.top_k}


@dataclass
class DocumentWindows:
    """The windows of one document: character spans (end exclusive), their prompts' tokens, and the spans of the
    document's own tokens (tokenized alone) they cover (``[(0, n)]`` for a document that fits)."""

    spans: list[tuple[int, int]]
    lengths: list[int]
    token_spans: list[tuple[int, int]]
    chunked: bool


@dataclass(frozen=True)
class DocumentScore:
    """A document's score and its best window.

    ``score`` is in the requested output (0..1 score, calibrated logit or raw logit), ``logit`` the aggregated
    calibrated logit; ``span`` the best window's ``(start, end)`` character offsets in the document (the whole
    document when it fit), ``window`` its index among ``windows``; ``aggregation`` "whole" (the document fit, one
    window), "max" or "mean"; ``window_spans`` / ``window_logits`` every window's span and calibrated logit."""

    score: float
    logit: float
    span: tuple[int, int]
    window: int
    windows: int
    aggregation: str
    window_spans: list[tuple[int, int]] = field(repr=False)
    window_logits: list[float] = field(repr=False)

    def to_dict(self) -> dict:
        return {"score": self.score, "logit": self.logit, "span": list(self.span), "window": self.window,
                "windows": self.windows, "aggregation": self.aggregation}


@dataclass
class PromptFormat:
    """How a model turns pairs into tokens, to count them: zerank's :func:`zerank_st.encode_pairs` (with the model's
    query cap, special-token rule and the call's instruction) or, for other cross-encoders, the tokenizer's pair
    encoding. ``tokenizer`` may be a copy of the model's (a fast tokenizer must not be used by two threads)."""

    tokenizer: Any
    zerank: bool = True
    instruction: str | None = None
    max_query_tokens: int | None = None
    split_special_tokens: bool = True

    @classmethod
    def of(cls, model: CrossEncoder, *, instruction: str | None = None, tokenizer: Any = None) -> PromptFormat:
        zerank = is_zerank(model)
        module = model[0]
        return cls(tokenizer if tokenizer is not None else model.tokenizer, zerank, instruction,
                   getattr(module, "max_query_tokens", None) if zerank else None,
                   bool(getattr(module, "split_special_tokens_in_content", True)) if zerank else False)

    def prompt_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens of each pair's whole prompt, uncut."""
        if not pairs:
            return []
        if self.zerank:
            ids = encode_pairs(self.tokenizer, pairs, instruction=self.instruction,
                               max_query_tokens=self.max_query_tokens, split_special_tokens=self.split_special_tokens)
        else:
            ids = self.tokenizer([q for q, _ in pairs], [d for _, d in pairs], verbose=False)["input_ids"]
        return [len(row) for row in ids]

    def document_offsets(self, document: str) -> list[tuple[int, int]]:
        """Character offsets of the document's tokens, tokenized as the prompt tokenizes content."""
        return self.document_offsets_batch([document])[0]

    def document_offsets_batch(self, documents: Sequence[str]) -> list[list[tuple[int, int]]]:
        """:meth:`document_offsets` of each document, in one tokenizer call."""
        if not documents:
            return []
        extra = {"split_special_tokens": self.split_special_tokens} if self.zerank else {}
        encoded = self.tokenizer(list(documents), add_special_tokens=False, return_offsets_mapping=True,
                                 verbose=False, **extra)
        return [[tuple(offset) for offset in offsets] for offsets in encoded["offset_mapping"]]


# --- where a window may be cut ---

_JOINERS = {"\u200c", "\u200d", "\u034f", "\u180e"}


def _attaches(ch: str) -> bool:
    """Whether ``ch`` belongs to the character before it (a cut before it would split a grapheme)."""
    code = ord(ch)
    return (unicodedata.category(ch) in ("Mn", "Mc", "Me") or ch in _JOINERS
            or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF  # variation selectors
            or 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F)  # skin tones, emoji tag sequences


def _word_char(ch: str) -> bool:
    """A letter or digit of a script that separates words with spaces (CJK and kana do not: any cut is a word
    boundary there)."""
    return ch.isalnum() and ord(ch) < 0x2E80


class CutPoints:
    """Where a document's windows may be cut, from its tokens' character offsets, computed on demand (a planner looks
    at a few boundaries per window, not at every token).

    Boundary i (0..n) lies before token i (n: the end); :meth:`position` is the character a window starting there
    starts at (token i's start; characters a normalizer folded into the token before, such as a combining mark
    under NFC, stay with that token), :meth:`allowed` whether a cut may fall there, :meth:`word` whether it is also
    a word boundary."""

    def __init__(self, document: str, offsets: Sequence[tuple[int, int]]):
        self.document = document
        self.offsets = offsets
        self.n = len(offsets)
        self._allowed: dict[int, bool] = {}
        self._word: dict[int, bool] = {}

    def position(self, i: int) -> int:
        if i <= 0:
            return 0
        return len(self.document) if i >= self.n else self.offsets[i][0]

    def allowed(self, i: int) -> bool:
        if i <= 0 or i >= self.n:
            return True
        if i not in self._allowed:
            self._classify(i)
        return self._allowed[i]

    def word(self, i: int) -> bool:
        if i <= 0 or i >= self.n:
            return True
        if i not in self._allowed:
            self._classify(i)
        return self._word[i]

    def _classify(self, i: int) -> None:
        document, c = self.document, self.offsets[i][0]
        allowed = word = False
        # inside one character (its bytes split over tokens), or no character to cut at
        if self.offsets[i - 1][1] <= c and 0 < c < len(document) and c > self.offsets[i - 1][0]:
            before, after = document[c - 1], document[c]
            allowed = not (_attaches(after) or before in _JOINERS or (before == "\r" and after == "\n")
                           or (_is_regional_indicator(before) and _is_regional_indicator(after)))
            word = allowed and not (_word_char(before) and _word_char(after))
        self._allowed[i], self._word[i] = allowed, word

    def back(self, start: int, low: int, word: bool = False) -> int | None:
        """The last boundary in [low, start] where a cut is allowed (and, with ``word``, a word boundary)."""
        test = self.word if word else self.allowed
        for i in range(min(start, self.n), low - 1, -1):
            if test(i):
                return i
        return None

    def forward(self, start: int) -> int:
        """The first allowed boundary from ``start`` on (the end at the latest)."""
        for i in range(start, self.n):
            if self.allowed(i):
                return i
        return self.n


def cut_points(document: str, offsets: Sequence[tuple[int, int]]) -> tuple[list[int], list[bool], list[bool]]:
    """Every boundary's (position, allowed, word) of :class:`CutPoints`, as lists of n + 1."""
    cuts = CutPoints(document, offsets)
    boundaries = range(cuts.n + 1)
    return ([cuts.position(i) for i in boundaries], [cuts.allowed(i) for i in boundaries],
            [cuts.word(i) for i in boundaries])


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


# A document whose estimated prompt (its tokens alone plus the query's prompt) is within this many tokens of the
# budget has its prompt counted exactly: the document's first token may merge with the template text before it.
_EXACT_MARGIN = 4


def plan_windows(fmt: PromptFormat, query: str, documents: Sequence[str],
                 settings: ChunkSettings | None = None) -> list[DocumentWindows]:
    """The windows of each document for ``query`` (see the module's rule). Each document is tokenized once, with
    offsets; the windows' prompts are then counted exactly, all in one call.

    Raises:
        ValueError: the budget leaves no more than ``overlap`` tokens for the document after the query and the
            template (only checked when a document needs windows).
    """
    settings = settings or ChunkSettings()
    budget = settings.max_tokens
    if not documents:
        return []
    overhead = fmt.prompt_lengths([(query, "")])[0]
    offsets = fmt.document_offsets_batch(documents)
    estimates = [overhead + len(o) for o in offsets]
    near = [i for i, n in enumerate(estimates) if abs(n - budget) <= _EXACT_MARGIN]
    exact = dict(zip(near, fmt.prompt_lengths([(query, documents[i]) for i in near])))
    short = [i for i, n in enumerate(estimates) if n <= budget + _EXACT_MARGIN and exact.get(i, n) <= budget]
    # A document that fits is one window, itself, and its prompt is counted exactly (the lengths a server reports).
    counted = [i for i in short if i not in exact]
    whole = dict(zip(counted, fmt.prompt_lengths([(query, documents[i]) for i in counted])))
    whole.update({i: exact[i] for i in short if i in exact})
    plans: list[DocumentWindows | None] = [None] * len(documents)
    for i in short:
        plans[i] = DocumentWindows([(0, len(documents[i]))], [whole[i]], [(0, len(offsets[i]))], False)
    if len(short) < len(documents):
        template = fmt.prompt_lengths([("", "")])[0]
        if budget <= template:
            raise ValueError(f"The window budget of {budget} tokens is not larger than the chat template alone "
                             f"({template} tokens): raise max_tokens (--chunk-tokens).")
        room = budget - overhead
        if room <= settings.overlap:
            raise ValueError(
                f"The window budget of {budget} tokens leaves {room} for the document after the query and the "
                f"template ({overhead} tokens), not more than the overlap ({settings.overlap}): raise max_tokens "
                "(--chunk-tokens), lower the overlap or shorten the query.")
        for i, document in enumerate(documents):
            if plans[i] is None:
                plans[i] = _document_windows(fmt, query, document, offsets[i], settings, room)
    return plans


def _document_windows(fmt: PromptFormat, query: str, document: str, offsets: Sequence[tuple[int, int]],
                      settings: ChunkSettings, room: int) -> DocumentWindows:
    """The windows of one long document: planned on its token counts, then every window's prompt counted in one
    call; if one is over the budget (its own tokenization differs from its share of the document's at an edge),
    the windows from there on are planned again one at a time, each counted before the next is placed."""
    cuts = CutPoints(document, offsets)
    token_spans = _token_windows(cuts, settings.overlap, room)
    spans = [(cuts.position(s), cuts.position(e)) for s, e in token_spans]
    lengths = fmt.prompt_lengths([(query, document[s:e]) for s, e in spans])
    over = next((k for k, n in enumerate(lengths) if n > settings.max_tokens), None)
    if over is not None:
        counted = _token_windows(cuts, settings.overlap, room, start=token_spans[over][0],
                                 fits=lambda s, e: fmt.prompt_lengths(
                                     [(query, document[cuts.position(s):cuts.position(e)])])[0] <= settings.max_tokens)
        token_spans = token_spans[:over] + counted
        spans = [(cuts.position(s), cuts.position(e)) for s, e in token_spans]
        lengths = lengths[:over] + fmt.prompt_lengths([(query, document[s:e]) for s, e in spans[over:]])
    return DocumentWindows(spans, lengths, token_spans, True)


def _token_windows(cuts: CutPoints, overlap: int, room: int, start: int = 0, fits=None) -> list[tuple[int, int]]:
    """Windows of at most ``room`` document tokens from boundary ``start`` to the end: each ends at the last word
    boundary of its second half (else at the last allowed cut), the next starts ``overlap`` tokens before that end,
    moved back to a word boundary by at most ``overlap`` more (else to an allowed cut). ``fits(s, e)``, when given,
    is asked of each window, which is shortened (to allowed cuts) until it says yes."""
    n = cuts.n
    windows = []
    while True:
        end = n
        if n - start > room:
            ideal = start + room
            end = (cuts.back(ideal, start + max(1, room // 2), word=True) or cuts.back(ideal, start + 1)
                   or cuts.forward(ideal + 1))
        while fits is not None and not fits(start, end):
            shorter = cuts.back(end - 1, start + 1)
            if shorter is None:
                break
            end = shorter
        windows.append((start, end))
        if end >= n:
            return windows
        ideal = end - overlap
        following = None
        if ideal > start:
            following = (cuts.back(ideal, max(start + 1, ideal - overlap), word=True)
                         or cuts.back(ideal, start + 1))
        start = following if following is not None else cuts.forward(start + 1)


# --- scoring ---


def aggregate(window_logits: Sequence[float], settings: ChunkSettings) -> tuple[float, int]:
    """(The document's calibrated logit, the best window's index) from its windows' calibrated logits."""
    values = np.asarray(window_logits, dtype=np.float64)
    best = int(np.argmax(values))  # the first of equal windows
    if len(values) == 1 or settings.aggregation == "max":
        return float(values[best]), best
    top = np.sort(values)[::-1][: settings.top_k]
    return float(np.mean(top)), best


def _activation(model: CrossEncoder, logits: np.ndarray) -> np.ndarray:
    activation = getattr(model, "activation_fn", None) or torch.nn.Sigmoid()
    with torch.inference_mode():
        return np.asarray(activation(torch.as_tensor(logits, dtype=torch.float32)).float().cpu().numpy(),
                          dtype=np.float32)


def score_documents(
    model: CrossEncoder,
    pairs: Sequence[tuple[str, str]],
    settings: ChunkSettings | None = None,
    *,
    output: Output = "score",
    max_batch_tokens: int | None = None,
    batch_size: int | None = None,
    instruction: str | None = None,
    show_progress_bar: bool = False,
) -> list[DocumentScore]:
    """Score (query, document) pairs with documents of any length: each document by its windows (see the module).

    Args:
        model: A loaded ``CrossEncoder`` (zerank, or another cross-encoder).
        pairs: (query, document) pairs.
        settings: The window budget, overlap and aggregation (default: 512 tokens, 64 overlap, max).
        output, max_batch_tokens, batch_size, instruction, show_progress_bar: as
            :func:`zerank.model.scoring.score_pairs`, which scores every window.

    Returns:
        One :class:`DocumentScore` per pair, in order.
    """
    settings = settings or ChunkSettings()
    if settings.max_tokens > model.max_seq_length:
        raise ValueError(f"The window budget max_tokens={settings.max_tokens} is larger than the model's context "
                         f"({model.max_seq_length} tokens).")
    fmt = PromptFormat.of(model, instruction=instruction)
    plans: list[DocumentWindows | None] = [None] * len(pairs)
    by_query: dict[str, list[int]] = {}
    for index, (query, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(index)
    for query, indices in by_query.items():
        for index, plan in zip(indices, plan_windows(fmt, query, [pairs[i][1] for i in indices], settings)):
            plans[index] = plan
    window_pairs = [(query, document[s:e]) for (query, document), plan in zip(pairs, plans) for s, e in plan.spans]
    logits = score_pairs(model, window_pairs, output="logit", max_batch_tokens=max_batch_tokens,
                         batch_size=batch_size, instruction=instruction, show_progress_bar=show_progress_bar)
    return documents_from_windows(model, plans, logits, settings, output=output)


def documents_from_windows(model: CrossEncoder | None, plans: Sequence[DocumentWindows], logits: np.ndarray,
                           settings: ChunkSettings, *, output: Output = "logit") -> list[DocumentScore]:
    """Aggregate the windows' calibrated logits (in the order of ``plans``' spans) into one score per document;
    ``output`` "score" applies the model's activation, "raw" undoes zerank's calibration."""
    results, position, document_logits = [], 0, []
    for plan in plans:
        values = [float(v) for v in logits[position: position + len(plan.spans)]]
        position += len(plan.spans)
        logit, best = aggregate(values, settings)
        document_logits.append(logit)
        results.append((plan, values, logit, best))
    document_logits = np.asarray(document_logits, dtype=np.float32)
    if output == "score":
        shown = _activation(model, document_logits)
    elif output == "raw":
        config = model.model.config
        shown = document_logits * np.float32(config.score_temperature) + np.float32(config.score_bias)
    else:
        shown = document_logits
    return [DocumentScore(score=float(value), logit=float(np.float32(logit)), span=plan.spans[best], window=best,
                          windows=len(plan.spans), aggregation=settings.aggregation if plan.chunked else "whole",
                          window_spans=list(plan.spans), window_logits=values)
            for value, (plan, values, logit, best) in zip(shown, results)]


def rank_documents(
    model: CrossEncoder,
    query: str,
    documents: Sequence[str],
    settings: ChunkSettings | None = None,
    *,
    top_k: int | None = None,
    return_documents: bool = False,
    **kwargs: Any,
) -> list[dict]:
    """``CrossEncoder.rank`` for documents of any length: ``[{"corpus_id", "score", "span", "windows",
    "aggregation", "passage", "text"?}, ...]``, best first (ties keep input order). ``span`` is the best window's
    ``[start, end)`` character offsets in the document and ``passage`` its text; ``text`` (the document) with
    ``return_documents``. ``kwargs`` go to :func:`score_documents`."""
    scored = score_documents(model, [(query, d) for d in documents], settings, **kwargs)
    order = sorted(range(len(documents)), key=lambda i: -scored[i].score)
    results = []
    for i in order[:top_k] if top_k is not None else order:
        result = scored[i]
        start, end = result.span
        entry = {"corpus_id": i, "score": result.score, "span": [start, end], "windows": result.windows,
                 "aggregation": result.aggregation, "passage": documents[i][start:end]}
        if return_documents:
            entry["text"] = documents[i]
        results.append(entry)
    return results
