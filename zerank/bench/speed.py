"""Benchmark zerank against sentence-transformers' native causal-LM reranker on identical random weights.

Command: ``zerank bench --shape qwen3-0.6b --docs 32 --query short --repeats 3 --device cpu --output-dir DIR``
(writes ``DIR/bench.json``).

Builds (once, cached under ``--cache-dir``) a random Qwen3ForCausalLM of the given shape and the zerank folder made
from it, generates a rerank workload with the real tokenizer (1 query x N documents of 100-400 tokens; a short
~16-token query or a long ~300-token query + instruction), checks that every path gives the same scores, then times
in one process, interleaved, ``--repeats`` times:

- ``zerank``: ``CrossEncoder(zerank folder, model_kwargs={"dtype": ...}).predict(pairs)`` with default arguments,
  as users call it (loaded by ``zerank.model.loading.load_reranker``: fp32 on CPU, bf16 on CUDA, unless ``--dtype``);
- ``zerank_no_prefix``: the same with ``share_query_prefix`` off;
- ``st_native``: sentence-transformers' own causal-LM reranker (Transformer "text-generation" + LogitScore on the
  "Yes" token) on the causal-LM folder, at its best batch size (swept first);
- ``zerank_bf16`` (when the benchmark runs in fp32): the opt-in low-precision path,
  ``CrossEncoder(..., model_kwargs={"dtype": torch.bfloat16})``; its largest raw-logit difference to fp32 is reported;
- ``runtime:DIR`` for each ``--runtime-dirs DIR``: ``zerank.model.loading.load_reranker(DIR).predict(pairs)`` (an exported
  ONNX/OpenVINO package or a torch package), with its largest score difference to zerank's (meaningful for a package
  of the benchmark's own weights);
- ``llama:TYPE`` for each ``--llama-types TYPE`` (the CPU race, ``zerank.bench.llama_race``): llama.cpp's
  ``llama-server --reranking`` on the GGUF export of the same zerank folder, with the benchmark's threads; its scores'
  largest difference and Spearman correlation to zerank fp32 over the whole workload are reported, and ``zerank
  bench`` prints the race table;
- ``matmul``: an fp32/bf16 matrix product of the model's MLP size, the machine's roofline.

Peak memory is measured for each path in its own process (``python -m zerank.bench.speed memory ARGS_JSON PATH
BATCH_SIZE``):
the whole process (loading included) and inference alone. ``roofline_fraction`` is the useful FLOP/s of ``zerank``
(the FLOPs of every pair's real tokens run alone: no padding, prefix counted per pair) over the matmul's FLOP/s;
``executed_fraction`` counts only the FLOPs zerank actually runs (prefix once).

``--batch-token-sweep 256 512 ...`` adds ``batch_token_sweep``: the ``zerank`` path timed with each
``max_batch_tokens``, interleaved with the other paths (the measurements behind ``cpu_max_batch_tokens``).

``--crossover-docs 4 32 ...`` adds ``crossover``: the fast path's plan (forced) against the padded batch for 1 query x
each document count, whether the fast path's cost rule (``zerank_fast_path.FastPath.forward_cost``) picks the faster,
and the fixed cost of one layer's forward measured in FLOPs of the same-run matmul (``FastPathSettings``'
``*_forward_overhead_flops``).

``--long-rows 1024 2048 ... 32768`` adds ``long_rows``: one (query, document) row of each length, run once through
the fast path (``model(**features)``, as ``predict`` runs it) and once through the plain path (one padded forward:
``model(**features, position_ids=...)``), each path in a fresh process (``python -m zerank.bench.speed long-rows
...``) that runs the lengths in ascending order and reports, per row, the seconds of the forward and the peak RSS (high-water mark
reset before each row); repetitions are interleaved.
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
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder
from sentence_transformers.base.modules import Transformer
from sentence_transformers.cross_encoder.modules import LogitScore
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from zerank.bench.arguments import BenchArguments
from zerank.bench.llama_race import LLAMA_PREFIX, llama_path, race_table, server_peak_rss_mb, spearman, start_servers
from zerank.model.loading import load_reranker, resolve_dtype
from zerank.model.package import PACKAGE_LICENSE, stale_remote_code
from zerank.model.scoring import calibrated_score, raw_logit
from zerank.packaging.arguments import BuildArguments
from zerank.packaging.convert import build, make_random_base
from zerank.utils.resources import default_tokenizer_dir, shape_config
from zerank.utils.system import atomic_write_json, peak_rss_mb, reset_peak_rss
from zerank_fast_path import group_by_shared_prefix, real_token_rows

logger = logging.getLogger(__name__)

PATHS = ("zerank", "zerank_no_prefix", "st_native")
LOW_PRECISION_PATH = "zerank_bf16"  # the opt-in CPU path: model_kwargs={"dtype": torch.bfloat16}
RUNTIME_PREFIX = "runtime:"
LONG_ROW_PATHS = ("fast", "plain")
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
        # Random weights made here carry the package's own licence.
        build(BuildArguments(out=zerank, base=str(base), tokenizer=str(tokenizer_dir), verify=False, overwrite=True,
                             license=PACKAGE_LICENSE))
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


def bench_paths(args: BenchArguments, dtype: torch.dtype) -> tuple[str, ...]:
    """The timed paths: ``PATHS``, ``zerank_bf16`` when the benchmark runs in fp32, and one per ``--runtime-dirs``."""
    low_precision = (LOW_PRECISION_PATH,) if dtype == torch.float32 else ()
    return (*PATHS, *low_precision, *(RUNTIME_PREFIX + str(folder) for folder in args.runtime_dirs),
            *(llama_path(file_type) for file_type in args.llama_types))


def load_paths(base: Path, zerank: Path, device: str, dtype: torch.dtype,
               which: Sequence[str] = PATHS) -> dict[str, CrossEncoder]:
    """The model each path in ``which`` runs: ``zerank`` (also ``zerank_no_prefix``), ``zerank_bf16``, ``st_native``
    (sentence-transformers' native reranker) and ``runtime:DIR`` (``load_reranker(DIR)``)."""
    models = {}
    if {"zerank", "zerank_no_prefix"} & set(which):
        models["zerank"] = load_reranker(str(zerank), device=device, dtype=dtype)
    if LOW_PRECISION_PATH in which:
        models[LOW_PRECISION_PATH] = load_reranker(str(zerank), device=device, dtype=torch.bfloat16)
    if "st_native" in which:
        yes_id = json.loads((zerank / "config.json").read_text())["yes_token_id"]
        transformer = Transformer(str(base), transformer_task="text-generation", model_kwargs={"dtype": dtype})
        models["st_native"] = CrossEncoder(modules=[transformer, LogitScore(true_token_id=yes_id)], device=device)
    for path in which:
        if path.startswith(RUNTIME_PREFIX):
            models[path] = load_reranker(path.removeprefix(RUNTIME_PREFIX), device=device)
    return models


def run_path(path: str, models: dict[str, CrossEncoder], pairs: Pairs, instruction: str | None,
             st_batch_size: int, max_batch_tokens: int | None = None) -> np.ndarray:
    """Raw "Yes" logits of ``pairs`` through one path; for a ``runtime:DIR`` path, its ``predict`` scores.
    ``max_batch_tokens`` is the zerank paths' per-call token budget (default: the model's)."""
    processing = {"processing_kwargs": {"chat_template": {"instruction": instruction}}} if instruction else {}
    if path.startswith(LLAMA_PREFIX):  # llama-server's scores (no instruction: refused by the arguments)
        return np.asarray(models[path].predict(pairs), dtype=np.float64)
    if path.startswith(RUNTIME_PREFIX):
        return np.asarray(models[path].predict(pairs, **processing), dtype=np.float64)
    kwargs = {"activation_fn": torch.nn.Identity(), "show_progress_bar": False, **processing}
    if path == "st_native":
        return models[path].predict(pairs, batch_size=st_batch_size, **kwargs)
    model = models["zerank" if path == "zerank_no_prefix" else path]
    # predict passes these on to the model's forward: per call, the loaded model is left as it is
    kwargs["share_prefix"] = path != "zerank_no_prefix"
    if max_batch_tokens is not None:
        kwargs["max_batch_tokens"] = max_batch_tokens
    config = model.model.config
    return raw_logit(model.predict(pairs, **kwargs), config.score_temperature, config.score_bias)


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
    for prefix, members in group_by_shared_prefix(rows, ours.model.fast_path.settings.min_shared_prefix_tokens):
        executed += ([prefix] if prefix else []) + [lengths[i] - prefix for i in members]
    return lengths, executed


def resolve_models(args: BenchArguments) -> tuple[Path, Path, torch.dtype]:
    """The cached (causal-LM folder, zerank folder) and the dtype: bf16 on cuda, fp32 on cpu unless ``--dtype``."""
    dtype = resolve_dtype(args.dtype or "auto", args.device)
    base, zerank = prepare_models(shape_config(args.shape), args.cache_dir, args.tokenizer or default_tokenizer_dir())
    return base, zerank, dtype


def memory_child(args: BenchArguments, path: str, st_batch_size: int) -> dict[str, float]:
    """Run one path once in this (fresh) process: its peak RSS, loading included, and that of inference alone."""
    base, zerank, dtype = resolve_models(args)
    models = load_paths(base, zerank, args.device, dtype, which=(path,))
    tokenizer = AutoTokenizer.from_pretrained(zerank, trust_remote_code=True)
    pairs, instruction = make_workload(tokenizer, args.docs, args.query, args.seed)
    loaded = peak_rss_mb()
    reset_peak_rss()  # the next reading covers inference alone
    run_path(path, models, pairs, instruction, st_batch_size)
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
    """Peak memory of one path, measured in a fresh child process (``python -m zerank.bench.speed memory ...``)."""
    return run_child("memory", arguments_json(args), path, str(st_batch_size))


def long_row_features(ours: CrossEncoder, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Token ids and attention mask of one (query, document) pair whose prompt is ``length`` tokens long."""
    pairs, _ = make_workload(ours.tokenizer, 1, "short", seed)
    query, document = pairs[0]
    overhead = int(ours.preprocess([(query, "")])["input_ids"].shape[1])
    ids = ours.tokenizer(document, add_special_tokens=False).input_ids
    ids = (ids * (length // len(ids) + 1))[: max(1, length - overhead)]
    features = ours.preprocess([(query, ours.tokenizer.decode(ids))])
    return {name: features[name][:, -length:] for name in ("input_ids", "attention_mask")}


def forward_logits(model: torch.nn.Module, features: dict[str, torch.Tensor], path: str) -> torch.Tensor:
    """Calibrated logits of one forward: ``fast`` as ``predict`` runs it, ``plain`` as one padded forward (explicit
    position ids turn the repacked path off)."""
    if path == "plain":
        position_ids = (features["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        return model(**features, position_ids=position_ids).logits
    return model(**features).logits


def long_rows_child(args: BenchArguments, path: str) -> list[dict[str, float]]:
    """Run one row of each length of ``args.long_rows`` (ascending) through ``path`` in this (fresh) process: its
    tokens, seconds, peak RSS (the high-water mark is reset before each row) and logit."""
    _, zerank, dtype = resolve_models(args)
    ours = load_reranker(str(zerank), device=args.device, dtype=dtype)
    results = []
    with torch.inference_mode():
        for length in sorted(args.long_rows):
            features = {k: v.to(args.device) for k, v in long_row_features(ours, length, args.seed).items()}
            forward_logits(ours.model, {k: v[:, -64:] for k, v in features.items()}, path)  # warm-up
            gc.collect()
            reset_peak_rss()
            start = time.perf_counter()
            logit = forward_logits(ours.model, features, path)
            synchronize(args.device)
            results.append({"length": length, "tokens": int(features["attention_mask"].sum()),
                            "seconds": time.perf_counter() - start, "inference_peak_rss_mb": peak_rss_mb(),
                            "logit": float(logit.float()[0, 0])})
    return results


def run_child(*command_args: str) -> dict:
    """``python -m zerank.bench.speed COMMAND_ARGS`` in a fresh process: its last stdout line, parsed as JSON."""
    command = [sys.executable, "-m", "zerank.bench.speed", *command_args]
    out = subprocess.run(command, check=False, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        what = " ".join([command_args[0], *command_args[2:]])
        raise RuntimeError(f"The child run {what!r} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def long_rows(args: BenchArguments) -> list[dict]:
    """Seconds and peak RSS of one row per length in ``args.long_rows``, fast and plain path: medians of
    ``args.repeats`` interleaved runs, each path's run a fresh process."""
    runs: dict[str, list[list[dict]]] = {path: [] for path in LONG_ROW_PATHS}
    for rep in tqdm(range(args.repeats), desc="long rows"):
        for path in LONG_ROW_PATHS:
            runs[path].append(run_child("long-rows", arguments_json(args), path))
            logger.info("repeat %d, %s path (tokens: seconds, MB): %s", rep + 1, path,
                        {r["tokens"]: (round(r["seconds"], 3), round(r["inference_peak_rss_mb"])) for r in runs[path][-1]})
    table = []
    for k, length in enumerate(sorted(args.long_rows)):
        row = {"length": length, "tokens": runs["fast"][0][k]["tokens"]}
        for path in LONG_ROW_PATHS:
            row[path] = {key: summary([run[k][key] for run in runs[path]]) for key in ("seconds", "inference_peak_rss_mb")}
        row["max_logit_diff"] = max(abs(f[k]["logit"] - p[k]["logit"]) for f, p in zip(runs["fast"], runs["plain"]))
        table.append(row)
    return table


def forward_overhead_flops(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, matmul: float,
                           repeats: int = 30) -> float:
    """The fixed cost of one decoder layer's forward, in FLOPs of the same-run matmul: the median seconds of a
    forward of one 2-token row (where nothing but that cost remains) per layer, times the matmul's FLOP/s."""
    ids = torch.tensor([tokenizer("a b", add_special_tokens=False).input_ids], device=model.device)
    seconds = []
    with torch.inference_mode():
        for _ in range(repeats + 3):
            seconds.append(timed(lambda: model(input_ids=ids, position_ids=torch.arange(ids.shape[1])[None])))
    return statistics.median(seconds[3:]) / model.config.num_hidden_layers * matmul


def crossover(args: BenchArguments, ours: CrossEncoder, matmul: float) -> dict:
    """The fast path's plan, forced, against the padded batch for 1 query x ``args.crossover_docs`` documents:
    medians of interleaved repetitions, and whether the fast path's cost rule picks the faster of the two."""
    model, fast_path, device_type = ours.model, ours.model.fast_path, ours.model.device.type
    measured = forward_overhead_flops(model, ours.tokenizer, matmul)
    rows = []
    for docs in args.crossover_docs:
        pairs, instruction = make_workload(ours.tokenizer, docs, args.query, args.seed)
        kwargs = {"processing_kwargs": {"chat_template": {"instruction": instruction}}} if instruction else {}
        features = {k: v.to(model.device) for k, v in ours.preprocess(pairs, **kwargs).items()
                    if k in ("input_ids", "attention_mask")}
        real = real_token_rows(features["input_ids"], features["attention_mask"])
        plan = fast_path.plan(real, True, device_type, fast_path.settings.batch_token_budget(device_type))
        seconds = {"plan": [], "padded": []}
        with torch.inference_mode():
            calls = {"plan": partial(fast_path.run, model.model, real, plan),
                     "padded": partial(forward_logits, model, features, "plain")}
            for _ in range(args.repeats):
                for name, call in calls.items():
                    seconds[name].append(timed(lambda call=call: (call(), synchronize(args.device))))
        padded = not bool(features["attention_mask"].all())
        plan_cost = fast_path.plan_cost(plan, device_type)
        padded_cost = fast_path.forward_cost(device_type, *features["input_ids"].shape, masked=padded)
        plan_s, padded_s = statistics.median(seconds["plan"]), statistics.median(seconds["padded"])
        rows.append({"docs": docs, "plan_forwards": len(plan), "plan_s": plan_s, "padded_s": padded_s,
                     "plan_speedup": padded_s / plan_s, "rule_runs_plan": plan_cost < padded_cost,
                     "rule_right": (plan_cost < padded_cost) == (plan_s < padded_s), "seconds": seconds})
        logger.info("crossover, %d docs: plan %.3fs (%d forwards), padded %.3fs", docs, plan_s, len(plan), padded_s)
    return {"forward_overhead_flops_measured": measured,
            "forward_overhead_flops_config": fast_path.settings.forward_overhead_flops(device_type), "by_docs": rows}


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def benchmark(args: BenchArguments) -> dict:
    """Time every path (and, unless ``--no-memory``, measure its peak memory); returns the result."""
    torch.manual_seed(args.seed)
    base, zerank, dtype = resolve_models(args)
    paths = bench_paths(args, dtype)
    models = load_paths(base, zerank, args.device, dtype, which=paths)
    servers = start_servers(zerank, args.llama_types, args.llama_cpp, torch.get_num_threads(), args.llama_slots,
                            args.llama_exact) if args.llama_types else {}
    models.update(servers)
    try:
        return run_benchmark(args, base, zerank, dtype, paths, models, servers)
    finally:
        for server in servers.values():
            server.close()


def run_benchmark(args: BenchArguments, base: Path, zerank: Path, dtype: torch.dtype, paths: tuple[str, ...],
                  models: dict, servers: dict) -> dict:
    """``benchmark`` once the models are loaded (and the llama-servers of the race started)."""
    ours = models["zerank"]
    config = ours.model.config
    pairs, instruction = make_workload(ours.tokenizer, args.docs, args.query, args.seed)
    lengths, executed = executed_lengths(ours, pairs, instruction)
    logger.info("Workload: %d pairs, %d tokens (%d after prefix sharing), query %s", len(pairs), sum(lengths),
                sum(executed), args.query)

    # Agreement on a slice of the workload (the shortest and the longest documents among them): cheaper than a
    # full pass of every path, and the same code runs for all pairs.
    check = sorted(pairs, key=lambda p: len(p[1]))
    check = check[:4] + check[-4:] if len(check) > 8 else check
    scores = {path: run_path(path, models, check, instruction, CHECK_BATCH_SIZE) for path in paths}
    max_diff = max(float(np.abs(scores[p] - scores["zerank"]).max()) for p in PATHS)
    logger.info("Paths agree on the raw logits within %.3g", max_diff)

    outputs: dict[str, np.ndarray] = {}  # each path's output on the whole workload (its last timed run)

    def pairs_per_s(path: str, st_batch_size: int = CHECK_BATCH_SIZE, max_batch_tokens: int | None = None) -> float:
        def run() -> None:
            outputs[path] = run_path(path, models, pairs, instruction, st_batch_size, max_batch_tokens)
            synchronize(args.device)

        return len(pairs) / timed(run)

    sweep = {bs: pairs_per_s("st_native", bs) for bs in args.st_batch_sizes}
    best_bs = max(sweep, key=sweep.get)
    logger.info("sentence-transformers sweep (pairs/s by batch size): %s -> best %d", sweep, best_bs)

    timings: dict[str, list[float]] = {path: [] for path in (*paths, "matmul")}
    budget_timings: dict[int, list[float]] = {budget: [] for budget in args.batch_token_sweep}
    for rep in range(args.repeats):
        for path in paths:
            timings[path].append(pairs_per_s(path, best_bs))
        for budget in args.batch_token_sweep:
            budget_timings[budget].append(pairs_per_s("zerank", max_batch_tokens=budget))
        timings["matmul"].append(matmul_flops_per_s(config, args.device, dtype))
        logger.info("repeat %d/%d: %s", rep + 1, args.repeats,
                    {k: round(v[-1], 3) for k, v in timings.items() if k != "matmul"})

    matmul = statistics.median(timings["matmul"])
    zerank_median = statistics.median(timings["zerank"])
    st_median = statistics.median(timings["st_native"])
    seconds_per_call = len(pairs) / zerank_median
    result = {
        "config": shape_config(args.shape).name, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
        "docs": args.docs, "query": args.query, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "tokens": sum(lengths), "tokens_executed": sum(executed),
        "paths": {path: {"pairs_per_s": summary(timings[path]), "pairs_per_s_runs": timings[path],
                         "ratio_vs_zerank": statistics.median(timings[path]) / zerank_median} for path in paths},
        "st_native_batch_size": best_bs, "st_native_sweep": sweep,
        "matmul_gflop_per_s": summary([v / 1e9 for v in timings["matmul"]]),
        "ratio_vs_st": zerank_median / st_median,
        "ratio_no_prefix_vs_st": statistics.median(timings["zerank_no_prefix"]) / st_median,
        "roofline_fraction": forward_flops(config, lengths) / seconds_per_call / matmul,
        "executed_fraction": forward_flops(config, executed) / seconds_per_call / matmul,
        "max_score_diff": max_diff,
    }
    if budget_timings:
        result["batch_token_sweep"] = {
            "default": ours.model.fast_path.settings.batch_token_budget(ours.model.device.type),
            "by_budget": {budget: {"pairs_per_s": summary(runs), "pairs_per_s_runs": runs,
                                   "ratio_vs_st": statistics.median(runs) / st_median}
                          for budget, runs in budget_timings.items()},
        }
    if LOW_PRECISION_PATH in paths:
        result["paths"][LOW_PRECISION_PATH]["max_logit_diff_vs_fp32"] = float(
            np.abs(scores[LOW_PRECISION_PATH] - scores["zerank"]).max())
    calibrated = calibrated_score(scores["zerank"], config.score_temperature, config.score_bias)
    for path in paths:
        if path.startswith(RUNTIME_PREFIX):  # meaningful for a package of the benchmark's own weights
            result["paths"][path]["max_score_diff_vs_zerank"] = float(np.abs(scores[path] - calibrated).max())
    if servers:  # the race: agreement with zerank fp32 over the whole workload (each path's last timed run)
        reference = calibrated_score(outputs["zerank"], config.score_temperature, config.score_bias)
        bf16 = ({LOW_PRECISION_PATH: calibrated_score(outputs[LOW_PRECISION_PATH], config.score_temperature,
                                                      config.score_bias)} if LOW_PRECISION_PATH in paths else {})
        for path, path_scores in {**bf16, **{path: outputs[path] for path in servers}}.items():
            result["paths"][path]["max_score_diff_vs_zerank"] = float(np.abs(path_scores - reference).max())
            result["paths"][path]["spearman_vs_zerank"] = spearman(path_scores, reference)
        for path, server in servers.items():
            result["paths"][path]["server_peak_rss_mb"] = server_peak_rss_mb(server)
            result["paths"][path]["server_command"] = " ".join(server.command)
    if args.crossover_docs:
        result["crossover"] = crossover(args, ours, matmul)
    if args.memory:
        del ours
        models.clear()  # the caller holds the same dict: free the models before the memory children run
        gc.collect()
        for path in paths:
            if path in servers:  # a llama-server's own peak RSS is reported above
                continue
            logger.info("Measuring the peak memory of %s in a fresh process", path)
            result["paths"][path].update(measure_memory(args, path, best_bs))
    if args.long_rows:
        result["long_rows"] = long_rows(args)
    return result


def main(args: BenchArguments) -> dict:
    """``zerank bench``: run the benchmark, print the result and write it to ``--output-dir``/bench.json."""
    result = benchmark(args)
    print(json.dumps(result, indent=2))
    if args.llama_types:
        print(race_table(result))
    atomic_write_json(args.output_dir / RESULT_FILE, result)
    logger.info("Wrote %s", args.output_dir / RESULT_FILE)
    return result


if __name__ == "__main__":  # a child process: memory ARGS_JSON PATH ST_BATCH_SIZE | long-rows ARGS_JSON PATH
    child, child_args, *child_rest = sys.argv[1:]
    if child == "memory":
        print(json.dumps(memory_child(arguments_from_json(child_args), child_rest[0], int(child_rest[1]))))
    else:
        print(json.dumps(long_rows_child(arguments_from_json(child_args), child_rest[0])))
