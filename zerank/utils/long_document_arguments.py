"""The shared argument group of long-document chunking (``--chunk-tokens``, ``--chunk-overlap``, ...), read by
``zerank evaluate``, ``zerank rerank`` and ``zerank serve`` when their ``--long-documents`` is ``chunk``. Standard
library only, so ``--help`` answers at once; the rule itself is :mod:`zerank.model.long_documents`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The defaults, written once (zerank.model.long_documents.ChunkSettings takes them from here).
CHUNK_TOKENS = 512
CHUNK_OVERLAP = 64
CHUNK_AGGREGATION = "max"
CHUNK_TOP_K = 3


@dataclass
class ChunkArguments:
    """How a long document is split into windows with --long-documents chunk."""

    _argument_group_name = "long documents"

    chunk_tokens: int = field(
        default=CHUNK_TOKENS,
        metadata={"help": "With --long-documents chunk: tokens of one window's whole prompt (query, template and "
                          "the window of the document). A document whose prompt fits is scored whole, as without "
                          "chunking."},
    )
    chunk_overlap: int = field(
        default=CHUNK_OVERLAP,
        metadata={"help": "Document tokens that consecutive windows share (at least; a cut moves back to a word "
                          "boundary)."},
    )
    chunk_aggregation: Literal["max", "mean"] = field(
        default=CHUNK_AGGREGATION,
        metadata={"help": "A chunked document's logit: its best window's (max) or the mean of its --chunk-top-k "
                          "best windows' (mean)."},
    )
    chunk_top_k: int = field(default=CHUNK_TOP_K, metadata={"help": "Windows averaged by --chunk-aggregation mean."})

    def __post_init__(self):
        if self.chunk_tokens < 1 or self.chunk_overlap < 0 or self.chunk_top_k < 1:
            raise ValueError(f"--chunk-tokens and --chunk-top-k must be at least 1 and --chunk-overlap at least 0, got "
                             f"{self.chunk_tokens}, {self.chunk_top_k} and {self.chunk_overlap}.")
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"--chunk-overlap ({self.chunk_overlap}) must be smaller than --chunk-tokens "
                             f"({self.chunk_tokens}): windows would never advance.")
        if self.chunk_aggregation not in ("max", "mean"):
            raise ValueError(f"--chunk-aggregation must be 'max' or 'mean', got {self.chunk_aggregation!r}.")
