"""Passages: the snippets the search store indexes, cut from each page of a document. Standard library only."""

from __future__ import annotations

import re
from collections.abc import Sequence

from zerank.serving.search.store import PAGE_SEPARATOR

# Where a passage may end, best first: a paragraph break, a line break, a sentence end (after its punctuation and
# closing quotes or brackets), any whitespace. Group 1 ends where the passage ends.
_BREAKS = [re.compile(p) for p in (r"()\n[ \t\r\f\v]*\n", r"()\n", r"([.!?。！？][\"'”’)\]]*)\s", r"()\s")]



def cut_passages(text: str, max_chars: int, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` into consecutive passages of at most ``max_chars`` characters: ``(start, end)`` spans.

    The rule: leading and trailing whitespace is left out of every passage. While more than ``max_chars``
    characters remain, a passage ends at the last break in its second half (``max_chars // 2`` to ``max_chars``
    characters in), of the best kind found: a paragraph break, else a line break, else a sentence end (``.``, ``!``,
    ``?`` and their CJK forms, with closing quotes or brackets, then whitespace), else any whitespace; with none,
    it is cut at ``max_chars`` characters. The rest (at most ``max_chars``) is the last passage. So passages keep
    whole paragraphs, sentences or words where they can, and each but the last of a page reaches at least
    ``max_chars // 2`` characters past its start (with the whitespace after it).
    """
    end = len(text) if end is None else end
    spans = []
    position = start
    while True:
        while position < end and text[position].isspace():
            position += 1
        if position >= end:
            return spans
        stop = end
        if end - position > max_chars:
            stop = position + max_chars
            # +1: whitespace right after the window still lets the window end at a sentence or word boundary.
            window = text[position + max_chars // 2 : position + max_chars + 1]
            for pattern in _BREAKS:
                last = None
                for last in pattern.finditer(window):
                    pass
                if last is not None:
                    stop = position + max_chars // 2 + last.end(1)
                    break
        passage_end = stop
        while text[passage_end - 1].isspace():
            passage_end -= 1
        spans.append((position, passage_end))
        position = stop


def page_spans(pages: Sequence[str]) -> list[tuple[int, int]]:
    """Each page's ``(start, end)`` in the document string ``PAGE_SEPARATOR.join(pages)``."""
    spans, position = [], 0
    for page in pages:
        spans.append((position, position + len(page)))
        position += len(page) + len(PAGE_SEPARATOR)
    return spans
