"""Benchmark zerank against sentence-transformers' native causal-LM reranker on identical random weights.

Command: ``zerank bench --config qwen3-0.6b --docs 32 --query short --repeats 3 --device cpu --output-dir DIR``
(writes ``DIR/bench.json``).

Builds (once, cached under ``--cache-dir``) a random Qwen3ForCausalLM of the given shape and the zerank folder made
from it, generates a rerank workload with the real tokenizer (1 query x N documents of 100-400 tokens; a short
~16-token query or a long ~300-token query + instruction), checks that every path gives the same scores, then times
in one process, interleaved, ``--repeats`` times:

- ``zerank``: ``CrossEncoder(zerank folder).predict(pairs)`` with default arguments, as users call it;
- ``zerank_no_prefix``: the same with ``share_query_prefix`` off;
- ``st_native``: sentence-transformers' own causal-LM reranker (Transformer "text-generation" + LogitScore on the
  "Yes" token) on the causal-LM folder, at its best batch size (swept first);
- ``matmul``: an fp32/bf16 matrix product of the model's MLP size, the machine's roofline.

Peak memory is measured for each path in its own process (``python -m zerank.benchmark ARGS_JSON PATH BATCH_SIZE``):
the whole process (loading included) and inference alone. ``roofline_fraction`` is the useful FLOP/s of ``zerank``
(the FLOPs of every pair's real tokens run alone: no padding, prefix counted per pair) over the matmul's FLOP/s;
``executed_fraction`` counts only the FLOPs zerank actually runs (prefix once).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder
from sentence_transformers.base.modules import Transformer
from sentence_transformers.cross_encoder.modules import LogitScore
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from modeling_zerank import group_by_shared_prefix, real_token_rows
from zerank.arguments import BenchArguments, BuildArguments
from zerank.convert import build, make_random_base
from zerank.loading import load_reranker, resolve_dtype
from zerank.package import stale_remote_code
from zerank.resources import default_tokenizer_dir, shape_config
from zerank.scoring import raw_logit
from zerank.system import atomic_write_json, peak_rss_mb, reset_peak_rss

logger = logging.getLogger(__name__)

PATHS = ("zerank", "zerank_no_prefix", "st_native")
CHECK_BATCH_SIZE = 8  # sentence-transformers' batch size for the agreement check
RESULT_FILE = "bench.json"
Pairs = list[tuple[str, str]]


def prepare_models(config: Path, cache_dir: Path, tokenizer_dir: str | Path) -> tuple[Path, Path]:
    """(causal-LM folder, zerank folder) with identical random weights, built once per shape.

    A cached zerank folder whose remote code differs from this installation's is rebuilt from the cached causal LM,
    so that the benchmark always measures the installed code.
    """
    root = cache_dir / config.stem
    base, zerank = root / "causal-lm", root / "zerank"
    fresh = not (zerank / "config.json").exists()
    stale = [] if fresh else stale_remote_code(zerank)
    if fresh:
        logger.info("Building random models of shape %s under %s", config.name, root)
        base.mkdir(parents=True, exist_ok=True)
        make_random_base(config, base, seed=0, max_shard_size_mb=2000)
    elif stale:
        logger.info("Rebuilding %s: its %s differ from this installation's", zerank, ", ".join(stale))
    if fresh or stale:
        build(BuildArguments(out=zerank, base=str(base), tokenizer=str(tokenizer_dir), verify=False, overwrite=True))
        # The causal-LM folder gets zerank's tokenizer and chat template, so both paths render the same prompts.
        AutoTokenizer.from_pretrained(zerank, trust_remote_code=True).save_pretrained(base)
    return base, zerank


def make_workload(tokenizer: PreTrainedTokenizerBase, docs: int, query: str, seed: int) -> tuple[Pairs, str | None]:
    """1 query x ``docs`` documents of 100-400 tokens, made of real single-token English words (and, for a long
    query, an instruction)."""
    rng = np.random.default_rng(seed)
    vocab = tokenizer.get_vocab()
    words = sorted(t[1:] for t in vocab if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower() and len(t) > 3)

    def text(n_tokens: int) -> str:
        return " ".join(rng.choice(words, size=n_tokens))

    if query == "short":
        q, instruction = text(15) + "?", None
    else:
        q, instruction = text(60) + "?", text(240) + "."
    documents = [text(int(n)) for n in rng.integers(100, 401, size=docs)]
    return [(q, d) for d in documents], instruction


def load_paths(base: Path, zerank: Path, device: str, dtype: torch.dtype,
               which: Sequence[str] = PATHS) -> tuple[CrossEncoder | None, CrossEncoder | None]:
    """(zerank CrossEncoder, sentence-transformers' native reranker); a path not in ``which`` is not loaded."""
    ours = native = None
    if {"zerank", "zerank_no_prefix"} & set(which):
        ours = load_reranker(str(zerank), device=device, dtype=dtype)
    if "st_native" in which:
        yes_id = json.loads((zerank / "config.json").read_text())["yes_token_id"]
        transformer = Transformer(str(base), transformer_task="text-generation", model_kwargs={"dtype": dtype})
        native = CrossEncoder(modules=[transformer, LogitScore(true_token_id=yes_id)], device=device)
    return ours, native


def run_path(path: str, ours: CrossEncoder | None, native: CrossEncoder | None, pairs: Pairs,
             instruction: str | None, st_batch_size: int) -> np.ndarray:
    """Raw "Yes" logits of ``pairs`` through one path."""
    kwargs = {"activation_fn": torch.nn.Identity(), "show_progress_bar": False}
    if instruction:
        kwargs["processing_kwargs"] = {"chat_template": {"instruction": instruction}}
    if path == "st_native":
        return native.predict(pairs, batch_size=st_batch_size, **kwargs)
    config = ours.model.config
    config.share_query_prefix = path == "zerank"
    try:
        return raw_logit(ours.predict(pairs, **kwargs), config.score_temperature, config.score_bias)
    finally:
        config.share_query_prefix = True


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_flops_per_s(config, device: str, dtype: torch.dtype, tokens: int = 2048) -> float:
    """FLOP/s of one (tokens x hidden) @ (hidden x intermediate) product: the machine's roofline for this shape."""
    a = torch.randn(tokens, config.hidden_size, device=device, dtype=dtype)
    b = torch.randn(config.hidden_size, config.intermediate_size, device=device, dtype=dtype)
    torch.mm(a, b)
    synchronize(device)
    seconds = timed(lambda: (torch.mm(a, b), synchronize(device)))
    return 2 * tokens * config.hidden_size * config.intermediate_size / seconds


def forward_flops(config, lengths: Sequence[int]) -> float:
    """FLOPs of running sequences of the given lengths alone: linear layers plus causal attention."""
    h, d = config.hidden_size, config.head_dim
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    per_token = 2 * (h * heads * d * 2 + h * kv * d * 2 + 3 * h * config.intermediate_size)
    total = 0.0
    for n in lengths:
        total += config.num_hidden_layers * (per_token * n + 2 * 2 * heads * d * n * (n + 1) / 2)
    return total


def executed_lengths(ours: CrossEncoder, pairs: Pairs, instruction: str | None) -> tuple[list[int], list[int]]:
    """Token counts of every pair, and of the sequences zerank actually runs (shared prefixes once)."""
    kwargs = {"processing_kwargs": {"chat_template": {"instruction": instruction}}} if instruction else {}
    features = ours.preprocess(pairs, **kwargs)
    rows = real_token_rows(features["input_ids"], features["attention_mask"])
    lengths = [len(r) for r in rows]
    executed = []
    for prefix, members in group_by_shared_prefix(rows, ours.model.config.min_shared_prefix_tokens):
        executed += ([prefix] if prefix else []) + [lengths[i] - prefix for i in members]
    return lengths, executed


def resolve_models(args: BenchArguments) -> tuple[Path, Path, torch.dtype]:
    """The cached (causal-LM folder, zerank folder) and the dtype: bf16 on cuda, fp32 on cpu unless ``--dtype``."""
    dtype = resolve_dtype(args.dtype or "auto", args.device)
    base, zerank = prepare_models(shape_config(args.config), args.cache_dir, args.tokenizer or default_tokenizer_dir())
    return base, zerank, dtype


def memory_child(args: BenchArguments, path: str, st_batch_size: int) -> dict[str, float]:
    """Run one path once in this (fresh) process: its peak RSS, loading included, and that of inference alone."""
    base, zerank, dtype = resolve_models(args)
    ours, native = load_paths(base, zerank, args.device, dtype, which=(path,))
    pairs, instruction = make_workload((ours or native).tokenizer, args.docs, args.query, args.seed)
    loaded = peak_rss_mb()
    reset_peak_rss()  # the next reading covers inference alone
    run_path(path, ours, native, pairs, instruction, st_batch_size)
    return {"peak_rss_mb": max(loaded, peak_rss_mb()), "inference_peak_rss_mb": peak_rss_mb()}


def arguments_json(args: BenchArguments) -> str:
    """The arguments as one JSON string, for the memory child's command line."""
    return json.dumps(dataclasses.asdict(args), default=str)


def arguments_from_json(text: str) -> BenchArguments:
    """The inverse of :func:`arguments_json`."""
    values = json.loads(text)
    paths = {name: Path(values[name]) for name in ("cache_dir", "output_dir")}
    return BenchArguments(**{**values, **paths})


def measure_memory(args: BenchArguments, path: str, st_batch_size: int) -> dict[str, float]:
    """Peak memory of one path, measured in a fresh child process (``python -m zerank.benchmark``)."""
    command = [sys.executable, "-m", "zerank.benchmark", arguments_json(args), path, str(st_batch_size)]
    out = subprocess.run(command, check=False, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(f"The memory measurement of {path} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def benchmark(args: BenchArguments) -> dict:
    """Time every path (and, unless ``--no-memory``, measure its peak memory); returns the result."""
    torch.manual_seed(args.seed)
    base, zerank, dtype = resolve_models(args)
    ours, native = load_paths(base, zerank, args.device, dtype)
    config = ours.model.config
    pairs, instruction = make_workload(ours.tokenizer, args.docs, args.query, args.seed)
    lengths, executed = executed_lengths(ours, pairs, instruction)
    logger.info("Workload: %d pairs, %d tokens (%d after prefix sharing), query %s", len(pairs), sum(lengths),
                sum(executed), args.query)

    # Agreement on a slice of the workload (the shortest and the longest documents among them): cheaper than a
    # full pass of every path, and the same code runs for all pairs.
    check = sorted(pairs, key=lambda p: len(p[1]))
    check = check[:4] + check[-4:] if len(check) > 8 else check
    scores = {path: run_path(path, ours, native, check, instruction, CHECK_BATCH_SIZE) for path in PATHS}
    max_diff = max(float(np.abs(scores[p] - scores["zerank"]).max()) for p in PATHS)
    logger.info("Paths agree on the raw logits within %.3g", max_diff)

    def pairs_per_s(path: str, st_batch_size: int = CHECK_BATCH_SIZE) -> float:
        def run() -> None:
            run_path(path, ours, native, pairs, instruction, st_batch_size)
            synchronize(args.device)

        return len(pairs) / timed(run)

    sweep = {bs: pairs_per_s("st_native", bs) for bs in args.st_batch_sizes}
    best_bs = max(sweep, key=sweep.get)
    logger.info("sentence-transformers sweep (pairs/s by batch size): %s -> best %d", sweep, best_bs)

    timings: dict[str, list[float]] = {path: [] for path in (*PATHS, "matmul")}
    for rep in range(args.repeats):
        for path in PATHS:
            timings[path].append(pairs_per_s(path, best_bs))
        timings["matmul"].append(matmul_flops_per_s(config, args.device, dtype))
        logger.info("repeat %d/%d: %s", rep + 1, args.repeats,
                    {k: round(v[-1], 3) for k, v in timings.items() if k != "matmul"})

    matmul = statistics.median(timings["matmul"])
    zerank_median = statistics.median(timings["zerank"])
    st_median = statistics.median(timings["st_native"])
    seconds_per_call = len(pairs) / zerank_median
    result = {
        "config": shape_config(args.config).name, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
        "docs": args.docs, "query": args.query, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "tokens": sum(lengths), "tokens_executed": sum(executed),
        "paths": {path: {"pairs_per_s": summary(timings[path])} for path in PATHS},
        "st_native_batch_size": best_bs, "st_native_sweep": sweep,
        "matmul_gflop_per_s": summary([v / 1e9 for v in timings["matmul"]]),
        "ratio_vs_st": zerank_median / st_median,
        "ratio_no_prefix_vs_st": statistics.median(timings["zerank_no_prefix"]) / st_median,
        "roofline_fraction": forward_flops(config, lengths) / seconds_per_call / matmul,
        "executed_fraction": forward_flops(config, executed) / seconds_per_call / matmul,
        "max_score_diff": max_diff,
    }
    if args.memory:
        del ours, native
        gc.collect()
        for path in PATHS:
            logger.info("Measuring the peak memory of %s in a fresh process", path)
            result["paths"][path].update(measure_memory(args, path, best_bs))
    return result


def main(args: BenchArguments) -> dict:
    """``zerank bench``: run the benchmark, print the result and write it to ``--output-dir``/bench.json."""
    result = benchmark(args)
    print(json.dumps(result, indent=2))
    atomic_write_json(args.output_dir / RESULT_FILE, result)
    logger.info("Wrote %s", args.output_dir / RESULT_FILE)
    return result


if __name__ == "__main__":  # the memory child of measure_memory: ARGS_JSON PATH ST_BATCH_SIZE
    child_args, child_path, child_batch_size = sys.argv[1:]
    print(json.dumps(memory_child(arguments_from_json(child_args), child_path, int(child_batch_size))))
