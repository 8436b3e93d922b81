"""Token counts for ``zerank serve``: exactly the tokenization that is scored, with bounded work per text.

The model scores a pair as :func:`zerank_st.encode_pairs` tokenizes it: the chat template's text and the content
between two of its special tokens are tokenized together, with special-token strings in content split (unless the
model's ``split_special_tokens_in_content`` is false). The query and the document sit in different chunks, so a
prompt's length is additive: ``pair(q, d) = pair(q, "") + pair("", d) - pair("", "")``. ``TokenCounter`` counts
those terms with the same function and the same setting, so the server's limits, budgets and ``total_tokens`` are
the tokens that are scored.

Work is bounded before a text is tokenized whole: a token covers at most ``max_token_chars`` characters (the
longest vocabulary string: 128 for Qwen3's byte-level BPE), so a text of more than ``limit * max_token_chars``
characters has more than ``limit`` tokens. ``head`` tokenizes growing prefixes (or suffixes), starting at a few
characters per token, until one holds more than the limit; a 4.5 MB document costs about its first ``limit``
tokens, never the whole text. Request threads borrow one of a few tokenizer copies for each such bounded step, so
no request holds a shared tokenizer for its whole work.
"""

from __future__ import annotations

import copy
import queue
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

from zerank_st import encode_pairs

MARGIN = 16
"""Extra tokens a partial prefix must hold: the tokens at a cut may merge differently than in the whole text."""
CHARS_PER_TOKEN_GUESS = 4
"""The first prefix tried has this many characters per wanted token (ordinary text has fewer)."""
BATCH_CHARS = 262_144
"""Characters tokenized in one borrow of a tokenizer (the bound on how long one request holds a copy)."""

Direction = Literal["left", "right"]


def max_token_chars(tokenizer) -> int:
    """The most characters one token can cover: its vocabulary string's length (a byte-level token's string has
    one character per byte, and a character has at least one byte)."""
    return max(len(token) for token in tokenizer.get_vocab())


class TokenCounter:
    """Counts and cuts the content of pairs as the model tokenizes it, with ``copies`` tokenizers for the request
    threads (a fast tokenizer must not be used by two threads at once)."""

    def __init__(self, tokenizer, split_special_tokens: bool = True, copies: int = 2):
        self.split = split_special_tokens
        self.max_token_chars = max_token_chars(tokenizer)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(copies):
            self._pool.put(copy.deepcopy(tokenizer))
        self.empty_pair = self._encoded_lengths([("", "")])[0]

    @contextmanager
    def _tokenizer(self) -> Iterator:
        tokenizer = self._pool.get()
        try:
            yield tokenizer
        finally:
            self._pool.put(tokenizer)

    def _encoded_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        lengths: list[int] = []
        for batch in _batches(pairs):
            with self._tokenizer() as tokenizer:
                lengths += [len(ids) for ids in encode_pairs(tokenizer, batch, split_special_tokens=self.split)]
        return lengths

    def tokens(self, text: str) -> int:
        """Tokens of ``text`` alone (how ``encode_pairs`` counts a query against ``max_query_tokens``)."""
        with self._tokenizer() as tokenizer:
            return len(tokenizer(text, add_special_tokens=False, split_special_tokens=self.split,
                                 verbose=False)["input_ids"])

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        with self._tokenizer() as tokenizer:
            return tokenizer(text, add_special_tokens=False, split_special_tokens=self.split, verbose=False,
                             return_offsets_mapping=True)["offset_mapping"]

    def query_tokens(self, query: str) -> int:
        """The tokens the query and the template take in every prompt (the prompt of an empty document)."""
        return self._encoded_lengths([(query, "")])[0]

    def document_tokens(self, documents: Sequence[str]) -> list[int]:
        """The tokens each document adds to its prompt."""
        return [n - self.empty_pair for n in self._encoded_lengths([("", d) for d in documents])]

    def head(self, text: str, limit: int, direction: Direction = "right") -> tuple[str, bool]:
        """(part, whole): ``text`` itself (``whole``), or a prefix (``direction`` right; left: a suffix) that holds
        more than ``limit`` tokens, found by tokenizing at most about ``2 * limit * max_token_chars`` characters."""
        wanted = limit + MARGIN
        size = CHARS_PER_TOKEN_GUESS * wanted
        while size < len(text):
            part = text[:size] if direction == "right" else text[-size:]
            if self.tokens(part) > wanted:
                return part, False
            size = min(2 * size, wanted * self.max_token_chars + 1)  # that many characters hold > wanted tokens
        return text, True

    def cut(self, text: str, cap: int, direction: Direction = "right") -> tuple[str, int]:
        """(``text`` cut to at most ``cap`` tokens of its prompt, its tokens): its first tokens (right) or its last
        (left), never splitting a character. Pass a ``head`` of the document, so that the work stays bounded."""
        part = text
        n = self.document_tokens([part])[0]
        while n > cap:
            offsets = self._offsets(part)
            keep = max(0, len(offsets) - (n - cap))
            if direction == "right":
                shorter = part[: offsets[keep][0]] if keep < len(offsets) else part[:-1]
            else:
                shorter = part[offsets[len(offsets) - keep - 1][1]:] if keep < len(offsets) else part[1:]
            if len(shorter) >= len(part):  # always progress, one character at least
                shorter = part[:-1] if direction == "right" else part[1:]
            part = shorter
            n = self.document_tokens([part])[0]
        return part, n


def _batches(pairs: Sequence[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """``pairs`` in runs of about ``BATCH_CHARS`` characters."""
    batch: list[tuple[str, str]] = []
    chars = 0
    for pair in pairs:
        if batch and chars + len(pair[0]) + len(pair[1]) > BATCH_CHARS:
            yield batch
            batch, chars = [], 0
        batch.append(pair)
        chars += len(pair[0]) + len(pair[1])
    if batch:
        yield batch
