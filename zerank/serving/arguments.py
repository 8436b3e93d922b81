"""The arguments of the serving commands (standard library only, so ``--help`` answers at once)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zerank.utils.arguments import check_positive, default_data_dir, is_loopback


API_KEY_ENV = "ZERANK_API_KEY"


@dataclass
class ServeArguments:
    """zerank serve: a ZeroEntropy-compatible rerank server (the model comes from the model group)."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind."})
    port: int = field(default=8000, metadata={"help": "Port to bind (0 picks a free one)."})
    api_key: str | None = field(
        default=None,
        metadata={"help": f"Bearer token clients must send (default: ${API_KEY_ENV}). Required on a non-loopback "
                          "--host."},
    )
    served_model_name: list[str] = field(
        default_factory=list, metadata={"help": "Names of the served model that clients may ask for (space-separated; "
                                                "the first is its canonical name). Default: the model folder's name "
                                                "or the hub id. Other names get 404."}
    )
    zeroentropy_aliases: bool = field(
        default=True, metadata={"help": "Also answer to ZeroEntropy's model names (zerank-1, zerank-1-small, "
                                        "zerank-2), which its SDKs and langchain-zerank send."}
    )
    max_documents: int = field(default=1000, metadata={"help": "Most documents per request (400 above)."})
    max_request_bytes: int = field(default=5_000_000, metadata={"help": "Largest request body in bytes (413 above)."})
    max_document_tokens: int | None = field(
        default=None, metadata={"help": "Longest document in tokens (default: what the model can read, its context "
                                        "minus the query and the template)."}
    )
    long_documents: Literal["truncate", "error", "chunk"] = field(
        default="truncate", metadata={"help": "Documents over the longest: keep their first tokens, or answer 400; "
                                              "chunk: a document whose prompt exceeds --chunk-tokens scores as its "
                                              "best window (the long documents group), reported in each result's "
                                              "`span`."}
    )
    max_round_tokens: int = field(
        default=65536, metadata={"help": "Token budget of the queued requests merged into one scoring round."}
    )
    max_queued_pairs: int = field(
        default=4096, metadata={"help": "Most (query, document) pairs waiting for or being scored; beyond it requests "
                                        "get 429 with Retry-After. At least --max-documents."}
    )
    request_timeout: float = field(
        default=300.0, metadata={"help": "Seconds a request may wait for its scores; then its work is cancelled and "
                                         "it gets 503."}
    )
    drain_timeout: float = field(
        default=30.0, metadata={"help": "On SIGTERM, seconds in-flight requests get to finish before they are "
                                        "cancelled and the server exits."}
    )
    header_timeout: float = field(
        default=10.0, metadata={"help": "Seconds a connection gets to send a request's headers before it is closed."}
    )
    body_timeout: float = field(
        default=30.0, metadata={"help": "Seconds a request gets to send its body (408 after)."}
    )
    store: Path = field(
        default_factory=lambda: default_data_dir() / "search.sqlite3",
        metadata={"help": "SQLite file of the ZeroEntropy search API's collections (checked, or created, at start: "
                          "a store that cannot be used stops the server; default: search.sqlite3 in "
                          "$XDG_DATA_HOME/zerank or ~/.local/share/zerank; on Windows in LOCALAPPDATA's zerank "
                          "folder)."},
    )
    log_level: Literal["debug", "info", "warning", "error"] = field(default="info", metadata={"help": "Log level."})

    def __post_init__(self):
        self.api_key = self.api_key or os.environ.get(API_KEY_ENV) or None
        if self.api_key is None and not is_loopback(self.host):
            raise ValueError(f"--host {self.host} is not a loopback address: set --api-key or ${API_KEY_ENV} so that "
                             "the server is not open to anyone who can reach it.")
        check_positive(self, "max_documents", "max_request_bytes", "max_document_tokens", "max_round_tokens",
                  "max_queued_pairs")
        for name in ("request_timeout", "drain_timeout", "header_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}.")
        if self.max_queued_pairs < self.max_documents:
            raise ValueError(f"--max-queued-pairs ({self.max_queued_pairs}) must be at least --max-documents "
                             f"({self.max_documents}), or a full request could never be queued.")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}.")
