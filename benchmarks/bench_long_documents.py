"""The cost of a long document, per length: chunked vs truncated vs its windows as separate documents vs whole.

For each document length (document tokens, e.g. 1k to 32k), one query and one document of that length (text of the
real tokenizer's vocabulary, as ``zerank bench`` makes it) are scored, medians of ``--repeats`` interleaved runs:

- ``whole``: the pair uncut, one row of its full length (``score_pairs`` with the context large enough);
- ``truncated``: the pair cut to the window budget (``--chunk-tokens`` prompt tokens), what ``--long-documents
  truncate`` costs at that budget: one window;
- ``chunked``: :func:`zerank.model.long_documents.score_documents` (windows planned with the tokenizer, then scored
  in one call: they share the query prefix in the fast path), planning included; ``plan``: the planning alone
  (:func:`zerank.model.long_documents.plan_windows`: tokenization only, no model);
- ``separate``: the same windows handed to ``score_pairs`` as separate documents of one query (what a caller who
  chunks by hand pays), and ``separate_no_prefix``: the same without prefix sharing (``share_prefix=False``).

Prints a Markdown table (seconds, prompt tokens) and writes it with the raw numbers as JSON. On a CPU use the tiny
model shape (``--shape tiny``: 2 layers, hidden 64): there the cost is dominated by fixed per-forward and
tokenization overheads, so the table shows the relative cost of the modes, not a real model's speed.

Usage:
    .venv/bin/python benchmarks/bench_long_documents.py --shape tiny --lengths 1024 2048 4096 8192 16384 32000 \\
        --repeats 3 --output build/bench-long/long_documents.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from zerank.bench.speed import prepare_models
from zerank.model.loading import load_reranker
from zerank.model.long_documents import ChunkSettings, PromptFormat, plan_windows, score_documents
from zerank.model.scoring import score_pairs
from zerank.utils.resources import default_tokenizer_dir, shape_config

QUERY = "which passage explains how the bridge was built and who paid for it"


def document_of(tokenizer, n_tokens: int, seed: int) -> str:
    """A document of about ``n_tokens`` tokens: words drawn from the vocabulary, re-tokenized to the length."""
    rng = np.random.default_rng(seed)
    words = [w for w in tokenizer.get_vocab() if w.startswith("Ġ") and w[1:].isalpha() and len(w) > 3]
    words.sort()
    picked = rng.choice(len(words), size=n_tokens + 64)
    text = "".join(words[i] for i in picked).replace("Ġ", " ").strip()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def bench_modes(model, fmt, settings, document, windows, whole_tokens, context, chunk_tokens) -> dict:
    """The timed callables of one document: whole, truncated, chunked, plan, separate, separate_no_prefix."""
    pair = [(QUERY, document)]

    def with_context(length):
        def run():
            model.max_seq_length = length
            try:
                score_pairs(model, pair)
            finally:
                model.max_seq_length = context
        return run

    return {
        "whole": with_context(max(context, whole_tokens)),
        "truncated": with_context(chunk_tokens),
        "chunked": lambda: score_documents(model, pair, settings),
        "plan": lambda: plan_windows(fmt, QUERY, [document], settings),
        "separate": lambda: score_pairs(model, windows),
        "separate_no_prefix": lambda: model.predict(windows, batch_size=len(windows), share_prefix=False,
                                                    show_progress_bar=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32000])
    parser.add_argument("--chunk-tokens", type=int, default=512)
    parser.add_argument("--chunk-overlap", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="weights' dtype (bfloat16 on a GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--cache-dir", type=Path, default=Path("build/bench"))
    parser.add_argument("--output", type=Path, default=Path("build/bench-long/long_documents.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    _, folder = prepare_models(shape_config(args.shape), args.cache_dir, default_tokenizer_dir())
    model = load_reranker(str(folder), device=args.device, dtype=args.dtype)
    context = int(model.max_seq_length)
    settings = ChunkSettings(args.chunk_tokens, args.chunk_overlap)
    fmt = PromptFormat.of(model)
    rows = []
    for length in args.lengths:
        document = document_of(model.tokenizer, length, seed=length)
        pair = [(QUERY, document)]
        [plan] = plan_windows(fmt, QUERY, [document], settings)
        windows = [(QUERY, document[s:e]) for s, e in plan.spans]
        whole_tokens = fmt.prompt_lengths(pair)[0]
        modes = bench_modes(model, fmt, settings, document, windows, whole_tokens, context, args.chunk_tokens)
        for fn in modes.values():  # warm-up
            fn()
        seconds = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, fn in modes.items():
                seconds[name].append(timed(fn))
        row = {"document_tokens": length, "whole_prompt_tokens": whole_tokens, "windows": len(windows),
               "window_prompt_tokens": sum(plan.lengths),
               **{f"{name}_s": statistics.median(values) for name, values in seconds.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = ("| document tokens | windows | window tokens | whole (s) | truncated (s) | chunked (s) | "
              "of which planning (s) | separate (s) | separate, no prefix sharing (s) | (chunked - planning) / "
              "separate |")
    lines = [header, "|" + "---:|" * 10]
    for r in rows:
        lines.append(f"| {r['document_tokens']:,} | {r['windows']} | {r['window_prompt_tokens']:,} | "
                     f"{r['whole_s']:.3f} | {r['truncated_s']:.3f} | {r['chunked_s']:.3f} | {r['plan_s']:.3f} | "
                     f"{r['separate_s']:.3f} | {r['separate_no_prefix_s']:.3f} | "
                     f"{(r['chunked_s'] - r['plan_s']) / r['separate_s']:.2f} |")
    table = "\n".join(lines)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"shape": args.shape, "device": args.device, "dtype": args.dtype, "threads":
                                       torch.get_num_threads(), "settings": settings.describe(), "rows": rows,
                                       "table": table}, indent=2))


if __name__ == "__main__":
    main()
