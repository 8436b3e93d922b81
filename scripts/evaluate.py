"""Evaluate a reranker on a BEIR data set: rerank a first stage's top k and report trec_eval metrics.

The first stage (BM25 by default, or your own TREC run file) retrieves the top ``--top-k`` documents of every judged
query of the split; the model rescores those (query, title + text) pairs and the documents are re-sorted by its
logit. NDCG@10, MRR@10, Recall@10 and Recall@100 of both runs come from pytrec_eval (trec_eval's C code), with the
"oracle" ceiling (the candidates sorted by their judgments: the best the first stage allows).

Usage:
    python scripts/evaluate.py --data ../shared/data/ir/scifact --model build/zerank-1 --split test \\
        --top-k 100 --output-dir runs/scifact
    # quick look: first 20 queries, your own first-stage run, another CrossEncoder to compare
    python scripts/evaluate.py --data DATA --model cross-encoder/ms-marco-MiniLM-L6-v2 --first-stage bm25.trec \\
        --max-queries 20 --output-dir runs/minilm

Outputs in --output-dir: results.json (metrics, throughput, wall time, settings, versions), results.md (a table
for the model card: ``build.render_model_card(..., evaluation=<results.md>)``), first_stage.trec, reranked.trec.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from beir import (
    DEFAULT_METRICS,
    BeirDataset,
    FirstStage,
    Qrels,
    Run,
    add_first_stage_args,
    evaluate_run,
    first_stage_from_args,
    load_beir,
    select_queries,
    write_trec_run,
)
from scoring import DEFAULT_MAX_BATCH_TOKENS, pair_lengths, score_pairs

logger = logging.getLogger("zerank.evaluate")

# Scores (query id, document id) pairs; returns one float per pair, higher = more relevant.
Scorer = Callable[[Sequence[tuple[str, str]]], np.ndarray]

LIBRARIES = ("torch", "transformers", "sentence-transformers", "bm25s", "pytrec-eval-terrier", "PyStemmer", "peft",
             "accelerate", "datasets", "numpy")


def library_versions(names: Sequence[str] = LIBRARIES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def resolve_dtype(name: str, device: str | None):
    """torch dtype for --dtype: 'auto' is bfloat16 on a GPU that supports it, float32 otherwise."""
    import torch

    if name == "auto":
        on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype must be auto, float32, bfloat16 or float16, got {name!r}.")
    return getattr(torch, name)


def load_cross_encoder(model: str, *, device: str | None = None, dtype: str = "auto", max_length: int | None = None):
    """A ``CrossEncoder`` of a zerank folder or hub id (remote code) or of any other cross-encoder."""
    from sentence_transformers import CrossEncoder

    if max_length is not None and max_length < 16:
        raise ValueError(f"--max-length must be at least 16 tokens, got {max_length}.")
    torch_dtype = resolve_dtype(dtype, device)
    logger.info("Loading %s (%s)", model, str(torch_dtype).removeprefix("torch."))
    encoder = CrossEncoder(model, trust_remote_code=True, device=device, model_kwargs={"dtype": torch_dtype})
    if max_length is not None:
        encoder.max_seq_length = max_length
    return encoder


def score_texts(model, pairs: Sequence[tuple[str, str]], *, output: str = "logit",
                max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, batch_size: int | None = None,
                **predict_kwargs) -> np.ndarray:
    """``scoring.score_pairs`` under a token budget and, if ``batch_size`` is given, at most that many pairs a batch.

    The pairs are sorted by query then by decreasing length and cut into groups of ``batch_size``, each scored
    under the token budget, so batches keep a query's documents together and stay length-homogeneous either way.
    """
    if batch_size is None:
        return score_pairs(model, pairs, output=output, max_batch_tokens=max_batch_tokens, **predict_kwargs)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    lengths = pair_lengths(model.tokenizer, pairs, model.max_seq_length)
    order = np.array(sorted(range(len(pairs)), key=lambda i: (pairs[i][0], -lengths[i])), dtype=np.int64)
    scores = np.zeros(len(pairs), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        scores[group] = score_pairs(model, [pairs[i] for i in group], output=output,
                                    max_batch_tokens=max_batch_tokens, **predict_kwargs)
    return scores


def cross_encoder_scorer(model, dataset: BeirDataset, *, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                         batch_size: int | None = None, instruction: str | None = None) -> Scorer:
    """A scorer that reads the query and :func:`beir.document_text` and ranks by the model's logit (no sigmoid, so
    scores never tie by saturating at 1)."""
    predict_kwargs = {"processing_kwargs": {"chat_template": {"instruction": instruction}}} if instruction else {}

    def score(ids: Sequence[tuple[str, str]]) -> np.ndarray:
        pairs = [(dataset.queries[q], dataset.document(d)) for q, d in ids]
        return score_texts(model, pairs, output="logit", max_batch_tokens=max_batch_tokens, batch_size=batch_size,
                           **predict_kwargs)

    return score


def oracle_scorer(qrels: Qrels) -> Scorer:
    """Scores each pair by its judgment (unjudged = 0): the best order of any candidate set."""
    return lambda ids: np.array([qrels.get(q, {}).get(d, 0) for q, d in ids], dtype=np.float32)


def rerank(candidates: Mapping[str, Mapping[str, float]], scorer: Scorer, *, pairs_per_step: int = 1024,
           show_progress: bool = True) -> tuple[Run, int, float]:
    """Rescore every query's candidates with ``scorer``.

    Queries are scored a few at a time (about ``pairs_per_step`` pairs), so the progress bar moves by query while
    each step still sorts many pairs by length. Returns (reranked run, pairs scored, seconds spent scoring).
    """
    reranked: Run = {q: {} for q in candidates}
    query_ids = list(candidates)
    total_pairs, seconds = 0, 0.0
    with tqdm(total=len(query_ids), desc="Reranking", unit="query", disable=not show_progress) as bar:
        start = 0
        while start < len(query_ids):
            step, n = [], 0
            while start < len(query_ids) and (not step or n + len(candidates[query_ids[start]]) <= pairs_per_step):
                step.append(query_ids[start])
                n += len(candidates[query_ids[start]])
                start += 1
            ids = [(q, d) for q in step for d in candidates[q]]
            began = time.perf_counter()
            scores = scorer(ids) if ids else np.zeros(0, dtype=np.float32)
            seconds += time.perf_counter() - began
            for (q, d), s in zip(ids, scores):
                reranked[q][d] = float(s)
            total_pairs += len(ids)
            bar.update(len(step))
    return reranked, total_pairs, seconds


def evaluate_reranker(dataset: BeirDataset, query_ids: Sequence[str], first_stage: FirstStage, scorer: Scorer, *,
                      top_k: int = 100, relevance_level: int = 1, metrics: Sequence[str] = DEFAULT_METRICS,
                      show_progress: bool = True) -> tuple[dict, Run, Run]:
    """First stage, reranking and metrics. Returns (results, first-stage run, reranked run)."""
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}.")
    qrels = dataset.subset(query_ids).qrels
    began = time.perf_counter()
    candidates = first_stage.retrieve(dataset, query_ids, top_k)
    first_stage_s = time.perf_counter() - began
    empty = sum(1 for q in query_ids if not candidates.get(q))
    if empty:
        logger.warning("%d of %d queries got no candidate from the first stage (they score 0)", empty, len(query_ids))
    logger.info("First stage (%s): %d candidates for %d queries in %.1fs", first_stage.describe(),
                sum(len(c) for c in candidates.values()), len(query_ids), first_stage_s)

    reranked, n_pairs, rerank_s = rerank(candidates, scorer, show_progress=show_progress)
    oracle, _, _ = rerank(candidates, oracle_scorer(qrels), show_progress=False)
    results = {
        "dataset": dataset.name,
        "split": dataset.split,
        "queries": len(query_ids),
        "pairs": n_pairs,
        "top_k": top_k,
        "first_stage_name": first_stage.describe(),
        "first_stage": evaluate_run(qrels, candidates, metrics, relevance_level)[0],
        "reranked": evaluate_run(qrels, reranked, metrics, relevance_level)[0],
        "oracle": evaluate_run(qrels, oracle, metrics, relevance_level)[0],
        "pairs_per_s": n_pairs / rerank_s if rerank_s > 0 else None,
        "wall_time_s": {"first_stage": first_stage_s, "rerank": rerank_s},
        "relevance_level": relevance_level,
    }
    return results, candidates, reranked


def _label(metric: str) -> str:
    base, _, k = metric.partition("@")
    return {"ndcg": "NDCG", "mrr": "MRR", "recall": "Recall", "precision": "P", "map": "MAP"}[base] + f"@{k}"


def evaluation_markdown(results: Sequence[Mapping], model_name: str = "zerank") -> str:
    """A Markdown table of one or more ``results.json`` (first stage, then reranked), for the model card."""
    if not results:
        raise ValueError("No results to tabulate.")
    metrics = list(results[0]["reranked"])
    lines = [
        "| Dataset | Queries | System | " + " | ".join(_label(m) for m in metrics) + " |",
        "|---|---:|---|" + "---:|" * len(metrics),
    ]
    for r in results:
        systems = (("first_stage", r["first_stage_name"]), ("reranked", f"{model_name} on its top {r['top_k']}"))
        for key, system in systems:
            values = " | ".join(f"{r[key][m]:.4f}" for m in metrics)
            lines.append(f"| {r['dataset']} ({r['split']}) | {r['queries']} | {system} | {values} |")
    lines.append("")
    lines.append(
        "Judged queries of each split; trec_eval metrics (pytrec_eval; NDCG with linear gains, "
        f"relevance level {results[0]['relevance_level']} for MRR and recall); documents are title + text."
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")
    parser.add_argument("--model", required=True, help="zerank folder or hub id, or any CrossEncoder model.")
    parser.add_argument("--split", default="test", help="qrels/<split>.tsv to evaluate (default: test).")
    parser.add_argument("--top-k", type=int, default=100, help="First-stage candidates reranked per query.")
    add_first_stage_args(parser)
    parser.add_argument("--max-queries", type=int, help="Evaluate only the first N judged queries (qrels order).")
    parser.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS,
                        help="Token budget of one batch (pairs x longest pair); the main knob for speed and memory.")
    parser.add_argument("--batch-size", type=int,
                        help="Also cap each batch at this many pairs (default: the token budget alone decides).")
    parser.add_argument("--max-length", type=int, help="Cut pairs to this many tokens (default: the model's).")
    parser.add_argument("--instruction", help="zerank only: an instruction rendered with every query.")
    parser.add_argument("--relevance-level", type=int, default=1,
                        help="Smallest grade counted relevant by MRR and recall (BEIR: 1; TREC DL often uses 2).")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu).")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for torch (scoring is deterministic anyway).")
    parser.add_argument("--output-dir", type=Path, required=True, help="Where results and runs are written.")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="Hide the progress bar.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    ns = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.manual_seed(ns.seed)
    began = time.perf_counter()
    first_stage = first_stage_from_args(ns)
    dataset = load_beir(ns.data, ns.split)
    query_ids = select_queries(dataset, ns.max_queries)
    model = load_cross_encoder(ns.model, device=ns.device, dtype=ns.dtype, max_length=ns.max_length)
    if ns.instruction and getattr(model.model.config, "model_type", None) != "zerank":
        raise ValueError("--instruction works with zerank models only (it is rendered by zerank's chat template).")
    scorer = cross_encoder_scorer(model, dataset, max_batch_tokens=ns.max_batch_tokens, batch_size=ns.batch_size,
                                  instruction=ns.instruction)
    results, candidates, reranked = evaluate_reranker(
        dataset, query_ids, first_stage, scorer, top_k=ns.top_k, relevance_level=ns.relevance_level,
        show_progress=ns.progress,
    )
    results["wall_time_s"]["total"] = time.perf_counter() - began
    results["model"] = ns.model
    results["settings"] = {
        "first_stage": first_stage.settings(), "max_batch_tokens": ns.max_batch_tokens, "batch_size": ns.batch_size,
        "max_length": model.max_seq_length, "instruction": ns.instruction, "device": str(model.device),
        "dtype": str(next(model.model.parameters()).dtype).removeprefix("torch."), "seed": ns.seed,
        "max_queries": ns.max_queries,
    }
    results["versions"] = library_versions()

    out = ns.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_trec_run(candidates, out / "first_stage.trec", "first_stage")
    write_trec_run(reranked, out / "reranked.trec", Path(ns.model).name or "reranker")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(evaluation_markdown([results], Path(ns.model.rstrip("/")).name))
    summary = {k: results[k] for k in ("first_stage", "reranked", "oracle")}
    logger.info("%s (%s), %d queries, %d pairs at %.1f pairs/s:\n%s", dataset.name, ns.split, len(query_ids),
                results["pairs"], results["pairs_per_s"] or 0.0, json.dumps(summary, indent=2))
    logger.info("Wrote %s", out)
    return results


if __name__ == "__main__":
    main()
