"""sentence-transformers input module for zerank (loaded by ``CrossEncoder(..., trust_remote_code=True)``).

sentence-transformers renders a (query, document) pair with the chat template, truncates the rendered prompt from the
right (so the document is cut first) and restores the template suffix, so the last token stays the assistant
prompt's. A very long query would still crowd the document out of the context: this module cuts queries longer than
``config.max_query_tokens`` (and never more than half the context) before rendering, with a warning, and rejects
pairs that are not two strings with an error that names the pair.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sentence_transformers.base.modules import Transformer

logger = logging.getLogger(__name__)


class ZerankTransformer(Transformer):
    """The standard ``Transformer`` input module, with zerank's input checks and query cap.

    Args: as :class:`sentence_transformers.base.modules.Transformer`. The query cap is read from the model config
    (``max_query_tokens``) so that it travels with the checkpoint.
    """

    @property
    def max_query_tokens(self) -> int:
        return min(self.model.config.max_query_tokens, max(1, (self.max_seq_length or 2**31) // 2))

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs) -> dict[str, Any]:
        if kwargs.get("task") and inputs and all(isinstance(item, str) for item in inputs):
            # Single texts with a task come from sentence-transformers' dataset statistics (token counts for the
            # model card); they are tokenized without the template and are never scored.
            return dict(self.tokenizer(list(inputs), padding=True, truncation=True, return_tensors="pt"))
        pairs = [_check_pair(item, i) for i, item in enumerate(inputs)]
        return super().preprocess(self._cap_queries(pairs), prompt=prompt, **kwargs)

    def _cap_queries(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if not pairs:
            return pairs
        cap = self.max_query_tokens
        token_ids = self.tokenizer([q for q, _ in pairs], add_special_tokens=False)["input_ids"]
        capped = []
        for (query, document), ids in zip(pairs, token_ids):
            if len(ids) > cap:
                logger.warning(
                    "A query of %d tokens is longer than max_query_tokens=%d: keeping its first %d tokens.",
                    len(ids), cap, cap,
                )
                query = self.tokenizer.decode(ids[:cap])
            capped.append((query, document))
        return capped


def _check_pair(item: Any, index: int) -> tuple[str, str]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise ValueError(f"Input {index} must be a (query, document) pair of two strings, got {item!r:.80}.")
    query, document = item
    for name, value in (("query", query), ("document", document)):
        if not isinstance(value, str):
            raise TypeError(f"Input {index}: the {name} must be a string, got {type(value).__name__} ({value!r:.80}).")
    return query, document
