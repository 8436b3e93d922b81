"""Rerank a big candidate set in resumable shards: in one process, or on Ray Data across machines.

Candidates come as a TREC run over a BEIR-style folder (``queries.jsonl``, ``corpus.jsonl``; only the queries and
documents the run names are kept in memory) or as a jsonl/Parquet file of ``(query_id, query, doc_id, document)``
rows. Whole queries are packed, in input order, into shards of about ``--shard-pairs`` pairs; every pair of a shard
gets its raw "Yes" logit and its calibrated 0..1 score (:func:`zerank.model.scoring.calibrated_score`).

Output folder (``--out``):
    manifest.json      inputs' and model's fingerprints, settings, the shard plan, ``complete``, one record per session
    scores/shard-NNNNN.parquet (or .jsonl)   query_id, doc_id, raw_logit, score: one file per finished shard
    reranked.trec      every query's candidates by decreasing raw logit, written once all shards are there

With ``--long-documents chunk`` a document whose prompt exceeds ``--chunk-tokens`` scores as the aggregation of
its windows (:mod:`zerank.model.long_documents`), and the shards get three more columns: span_start, span_end (the
best window's character offsets in the document) and windows (1: the document was scored whole).

Resume rule: a shard file exists only when its shard is finished (it is written under a hidden temporary name and
renamed), so a rerun of the same command on the same folder scores exactly the shards that have no file and then
writes ``reranked.trec``; a folder holding a run of other inputs, another model (the hash of its files) or other
scoring settings is refused. ``--device``, ``--max-batch-tokens``, ``--batch-size``, the engine and its workers may
change between sessions (they change speed, not the scores beyond float rounding); the dtype the shards were scored
in may not.

Engines: ``local`` scores the shards one after the other with one model in this process; ``ray`` hands them to a
Ray Data actor pool (``map_batches`` over one row per shard; each actor loads the model once, with
``--cpus-per-worker`` / ``--gpus-per-worker``) on a local Ray instance or the cluster at ``--ray-address``. Both call
:func:`score_shard` on the same shards, so their outputs are identical. The driver writes every file, so a cluster
needs no shared file system for the output (the actors need the model: a hub id or a path every node sees).

Usage:
    zerank rerank --model build/zerank-1 --data ../shared/data/ir/scifact --run bm25.trec --out runs/rerank
    zerank rerank --model build/zerank-1 --pairs candidates.parquet --out runs/rerank --format jsonl
    zerank rerank --model org/zerank-1 --pairs candidates.parquet --out runs/rerank --engine ray \\
        --ray-address auto --gpus-per-worker 1
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from sentence_transformers import CrossEncoder
from tqdm.auto import tqdm

from modeling_zerank import ZerankConfig
from zerank.data.readers import (
    Run,
    iter_jsonl,
    write_trec_run,
)
from zerank.model.fingerprint import model_fingerprint
from zerank.model.loading import load_from_arguments
from zerank.model.long_documents import ChunkSettings, score_documents
from zerank.model.package import read_config, resolve_model_dir
from zerank.model.scoring import PAIRS_PER_CALL, calibrated_score, score_pairs
from zerank.rerank.arguments import RerankArguments
from zerank.rerank.inputs import Candidates, read_candidates
from zerank.utils.arguments import ModelArguments, ScoringArguments
from zerank.utils.long_document_arguments import ChunkArguments
from zerank.utils.system import atomic_write_bytes, atomic_write_json, library_versions

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCORES_DIR = "scores"
RUN_FILE = "reranked.trec"
LOCK_FILE = ".lock"
MANIFEST_VERSION = 1
SCORE_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("raw_logit", pa.float32()),
                          ("score", pa.float64())])
SPAN_FIELDS = [("span_start", pa.int64()), ("span_end", pa.int64()), ("windows", pa.int64())]
CHUNKED_SCORE_SCHEMA = pa.schema([*SCORE_SCHEMA, *SPAN_FIELDS])


# --- shards ---


@dataclass(frozen=True)
class Shard:
    """Whole queries' rows (indices into the candidates), scored and written as one unit."""

    index: int
    rows: tuple[int, ...]
    queries: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"

    def file(self, fmt: str) -> str:
        return f"{SCORES_DIR}/{self.name}.{fmt}"


def plan_shards(candidates: Candidates, shard_pairs: int) -> list[Shard]:
    """Queries in order of first appearance, packed greedily into shards of at most ``shard_pairs`` pairs (a query
    with more candidates gets a shard alone). The plan depends only on the rows and ``shard_pairs``."""
    if shard_pairs < 1:
        raise ValueError(f"--shard-pairs must be at least 1, got {shard_pairs}.")
    shards: list[Shard] = []
    rows: list[int] = []
    queries = 0
    for query_rows in candidates.rows_by_query().values():
        if rows and len(rows) + len(query_rows) > shard_pairs:
            shards.append(Shard(len(shards), tuple(rows), queries))
            rows, queries = [], 0
        rows.extend(query_rows)
        queries += 1
    if rows:
        shards.append(Shard(len(shards), tuple(rows), queries))
    return shards


def score_shard(model: CrossEncoder, pairs: Sequence[tuple[str, str]], *, max_batch_tokens: int | None = None,
                batch_size: int | None = None, instruction: str | None = None,
                progress: Callable[[int], object] | None = None) -> np.ndarray:
    """Raw "Yes" logits (float32) of one shard's pairs, in order: :func:`zerank.model.scoring.score_pairs` over steps of
    whole queries (about ``PAIRS_PER_CALL`` pairs), calling ``progress(pairs done)`` after each step.

    ``score_pairs`` never mixes queries in a predict call, so the steps change when the bar moves, not the scores."""
    return score_shard_chunked(model, pairs, None, max_batch_tokens=max_batch_tokens, batch_size=batch_size,
                               instruction=instruction, progress=progress)[0]


def score_shard_chunked(model: CrossEncoder, pairs: Sequence[tuple[str, str]], chunking: ChunkSettings | None, *,
                        max_batch_tokens: int | None = None, batch_size: int | None = None,
                        instruction: str | None = None,
                        progress: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`score_shard` with long documents scored by their windows (``chunking``; None: cut as usual): the raw
    logits, and an (n, 3) int64 array of each document's best window (span_start, span_end) and window count
    (None without ``chunking``)."""
    raw = np.zeros(len(pairs), dtype=np.float32)
    spans = np.zeros((len(pairs), 3), dtype=np.int64) if chunking is not None else None
    start = 0
    while start < len(pairs):
        end = start + 1
        while end < len(pairs) and (pairs[end][0] == pairs[end - 1][0] or end - start < PAIRS_PER_CALL):
            end += 1
        if chunking is None:
            raw[start:end] = score_pairs(model, pairs[start:end], output="raw", max_batch_tokens=max_batch_tokens,
                                         batch_size=batch_size, instruction=instruction)
        else:
            results = score_documents(model, pairs[start:end], chunking, output="raw",
                                      max_batch_tokens=max_batch_tokens, batch_size=batch_size,
                                      instruction=instruction)
            raw[start:end] = [r.score for r in results]
            spans[start:end] = [(r.span[0], r.span[1], r.windows) for r in results]
        if progress is not None:
            progress(end - start)
        start = end
    return raw, spans


def shard_table(candidates: Candidates, shard: Shard, raw: np.ndarray, temperature: float, bias: float,
                spans: np.ndarray | None = None) -> pa.Table:
    """A shard's rows: query_id, doc_id, raw_logit, calibrated score (and, chunked, span_start, span_end, windows)."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.shape != (len(shard.rows),):
        raise ValueError(f"{shard.name}: {raw.shape[0]} scores for {len(shard.rows)} pairs.")
    columns = [[candidates.query_ids[i] for i in shard.rows], [candidates.doc_ids[i] for i in shard.rows],
               raw, calibrated_score(raw, temperature, bias)]
    if spans is None:
        return pa.table(columns, schema=SCORE_SCHEMA)
    spans = np.asarray(spans, dtype=np.int64).reshape(len(shard.rows), 3)
    return pa.table(columns + [spans[:, 0], spans[:, 1], spans[:, 2]], schema=CHUNKED_SCORE_SCHEMA)


def table_bytes(table: pa.Table, fmt: str) -> bytes:
    """A score table as the bytes of a Parquet file or of a jsonl file."""
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    return "".join(json.dumps(row) + "\n" for row in table.to_pylist()).encode("utf-8")


def read_scores(path: str | Path, spans: bool = False) -> pa.Table:
    """A shard file (Parquet or jsonl) as a table with :data:`SCORE_SCHEMA` (``spans``: with the span columns of a
    chunked rerank too, :data:`CHUNKED_SCORE_SCHEMA`)."""
    path = Path(path)
    schema = CHUNKED_SCORE_SCHEMA if spans else SCORE_SCHEMA
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=schema.names).cast(schema)
    return pa.Table.from_pylist([row for _, row in iter_jsonl(path)], schema=schema)


# --- the output folder ---


def manifest_key(manifest: dict) -> dict:
    """What a resumed run must share with the folder's: inputs, model, scoring settings, output layout."""
    return {"input": manifest["input"]["fingerprint"], "pairs": manifest["input"]["pairs"],
            "model": manifest["model"]["fingerprint"],
            **{k: manifest["model"][k] for k in ("dtype", "max_length", "instruction")},
            "long_documents": manifest["model"].get("long_documents"),
            **{k: manifest["output"][k] for k in ("format", "shard_pairs")}}


def open_output(out: Path, manifest: dict, overwrite: bool) -> dict:
    """Create ``out`` for ``manifest``'s run, or take up the unfinished (or finished) run in it.

    Returns the manifest in force (the folder's, when resuming). Refuses a folder of another run, or one that is
    not a rerank output, unless ``overwrite`` (which empties it first)."""
    path = out / MANIFEST
    if overwrite:
        for item in out.iterdir():
            if item.is_dir():
                shutil.rmtree(item)
            elif item.name != LOCK_FILE:
                item.unlink()
    if path.exists():
        previous = json.loads(path.read_text())
        old, new = manifest_key(previous), manifest_key(manifest)
        changed = [k for k in new if old.get(k) != new[k]]
        if previous.get("version") != MANIFEST_VERSION or changed:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed) or "manifest version"
            raise ValueError(f"{out} holds a rerank of other inputs, model or settings ({detail}); use another --out "
                             "or --overwrite to start again.")
        return previous
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise FileExistsError(f"{out} is not empty and has no {MANIFEST}; use another --out or --overwrite.")
    (out / SCORES_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, manifest)
    return manifest


def _lock(out: Path):
    """An exclusive lock on ``out`` for this process's lifetime (released by the kernel if it is killed)."""
    out.mkdir(parents=True, exist_ok=True)
    handle = (out / LOCK_FILE).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FileExistsError(f"another zerank rerank is writing {out}.") from None
    return handle


def assemble_run(out: Path, candidates: Candidates, shards: Sequence[Shard], fmt: str) -> Run:
    """Every shard's raw logits as a run, checking each file holds exactly its shard's pairs."""
    run: Run = {}
    for shard in shards:
        table = read_scores(out / shard.file(fmt))
        expected = ([candidates.query_ids[i] for i in shard.rows], [candidates.doc_ids[i] for i in shard.rows])
        if (table.column("query_id").to_pylist(), table.column("doc_id").to_pylist()) != expected:
            raise ValueError(f"{out / shard.file(fmt)} does not hold the pairs of {shard.name} of {out / MANIFEST}; "
                             "delete it to score the shard again.")
        for qid, doc_id, raw in zip(*expected, table.column("raw_logit").to_pylist()):
            run.setdefault(qid, {})[doc_id] = raw
    return run


# --- engines ---

# One shard's work: (shard index, its pairs).
Work = tuple[int, list[tuple[str, str]]]
# Called with (shard index, raw logits, dtype the scorer ran in, spans or None) as each shard is finished.
Accept = Callable[..., None]


def _dtype_name(model: CrossEncoder) -> str:
    return str(next(model.model.parameters()).dtype).removeprefix("torch.")


def _load(model_args: ModelArguments, seed: int) -> CrossEncoder:
    torch.manual_seed(seed)
    return load_from_arguments(model_args)


def score_local(work: Sequence[Work], accept: Accept, bar: tqdm, model_args: ModelArguments,
                scoring_args: ScoringArguments, seed: int, chunking: ChunkSettings | None = None) -> dict:
    """Score the shards one after the other with one model in this process."""
    model = _load(model_args, seed)
    dtype = _dtype_name(model)
    for index, pairs in work:
        raw, spans = score_shard_chunked(model, pairs, chunking, max_batch_tokens=model_args.max_batch_tokens,
                                         batch_size=scoring_args.batch_size, instruction=scoring_args.instruction,
                                         progress=bar.update)
        accept(index, raw, dtype, spans)
    return {"device": str(model.device), "workers": 1}


class ShardScorer:
    """A Ray Data actor: loads the model once, then scores batches of whole shards with :func:`score_shard`."""

    def __init__(self, model_args: ModelArguments, scoring_args: ScoringArguments, seed: int,
                 threads: int | None, chunking: ChunkSettings | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.model = _load(model_args, seed)
        self.max_batch_tokens = model_args.max_batch_tokens
        self.scoring_args = scoring_args
        self.chunking = chunking

    def __call__(self, batch: pa.Table) -> pa.Table:
        scored = [score_shard_chunked(self.model, list(zip(queries, documents)), self.chunking,
                                      max_batch_tokens=self.max_batch_tokens, batch_size=self.scoring_args.batch_size,
                                      instruction=self.scoring_args.instruction)
                  for queries, documents in zip(batch.column("query").to_pylist(),
                                                batch.column("document").to_pylist())]
        n = len(scored)
        columns = {"shard": batch.column("shard"),
                   "raw_logit": pa.array([raw for raw, _ in scored], type=pa.list_(pa.float32())),
                   "dtype": [_dtype_name(self.model)] * n, "device": [str(self.model.device)] * n}
        if self.chunking is not None:
            columns["spans"] = pa.array([spans.reshape(-1) for _, spans in scored], type=pa.list_(pa.int64()))
        return pa.table(columns)


def score_ray(work: Sequence[Work], accept: Accept, bar: tqdm, model_args: ModelArguments,
              scoring_args: ScoringArguments, seed: int, args: RerankArguments,
              scorer: type = ShardScorer, chunking: ChunkSettings | None = None) -> dict:
    """Score the shards on a Ray Data actor pool: one dataset row per shard, ``map_batches`` with one shard per
    call. Joins the Ray instance of this process, the cluster at ``--ray-address``, or starts a local one.

    ``scorer`` is the actor class: :class:`ShardScorer`'s constructor arguments, and its batches in and out."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ModuleNotFoundError("--engine ray needs Ray Data: pip install 'zerank[rerank]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.ray_address, include_dashboard=False)
    try:
        resources = ray.cluster_resources()
        if args.workers is not None:
            workers = args.workers
        elif args.gpus_per_worker > 0:
            workers = int(resources.get("GPU", 0) // args.gpus_per_worker)
        else:
            workers = int(resources.get("CPU", 0) // args.cpus_per_worker)
        workers = max(1, min(workers, len(work)))
        logger.info("Ray: %d actor(s) of %s CPU and %s GPU on a cluster of %s", workers, args.cpus_per_worker,
                    args.gpus_per_worker, {k: resources[k] for k in ("CPU", "GPU") if k in resources})
        ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts pairs
        threads = None if args.gpus_per_worker > 0 else max(1, int(args.cpus_per_worker))
        constructor = {"model_args": model_args, "scoring_args": scoring_args, "seed": seed, "threads": threads}
        if chunking is not None:  # (another scorer class need not know about chunking when it is off)
            constructor["chunking"] = chunking
        dataset = ray.data.from_items(
            [{"shard": index, "query": [q for q, _ in pairs], "document": [d for _, d in pairs]}
             for index, pairs in work]
        ).map_batches(
            scorer, fn_constructor_kwargs=constructor,
            batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=args.cpus_per_worker, num_gpus=args.gpus_per_worker or None,
        )
        devices = set()
        for row in dataset.iter_rows():
            raw = np.asarray(row["raw_logit"], dtype=np.float32)
            spans = np.asarray(row["spans"], dtype=np.int64).reshape(-1, 3) if chunking is not None else None
            accept(int(row["shard"]), raw, row["dtype"], spans)
            devices.add(row["device"])
            bar.update(len(raw))
    finally:
        if started:
            ray.shutdown()
    return {"device": ",".join(sorted(devices)), "workers": workers, "ray_address": args.ray_address}


# --- the command ---


def new_manifest(candidates: Candidates, shards: Sequence[Shard], args: RerankArguments,
                 model_args: ModelArguments, scoring_args: ScoringArguments,
                 chunking: ChunkSettings | None = None) -> dict:
    """The manifest of a run that has scored nothing yet (the model must be a zerank package: its T and b)."""
    model_dir = resolve_model_dir(model_args.model)
    if read_config(str(model_dir)).get("model_type") != "zerank":
        raise ValueError(f"{model_args.model} is not a zerank package (its config.json's model_type is not "
                         "'zerank'): zerank rerank writes zerank's raw logit and calibrated score.")
    config = ZerankConfig.from_pretrained(model_dir)
    return {
        "version": MANIFEST_VERSION,
        "input": {"sources": candidates.sources, "fingerprint": candidates.fingerprint(),
                  "queries": len(candidates.rows_by_query()), "pairs": len(candidates)},
        "model": {"name": model_args.model, "fingerprint": model_fingerprint(model_dir),
                  "score_temperature": float(config.score_temperature), "score_bias": float(config.score_bias),
                  "dtype": model_args.dtype, "max_length": model_args.max_length,
                  "instruction": scoring_args.instruction,
                  "long_documents": chunking.describe() if chunking is not None else None},
        "scored_dtype": None,
        "output": {"format": args.format, "shard_pairs": args.shard_pairs, "columns": SCORE_SCHEMA.names,
                   "run": RUN_FILE, "scores": SCORES_DIR},
        "shards": [{"name": s.name, "file": s.file(args.format), "queries": s.queries, "pairs": len(s.rows)}
                   for s in shards],
        "complete": False,
        "sessions": [],
    }


def rerank(args: RerankArguments, model_args: ModelArguments, scoring_args: ScoringArguments,
           chunk_args: ChunkArguments | None = None, *, ray_scorer: type = ShardScorer) -> dict:
    """Score every pending shard of ``args.out`` with the chosen engine, then write ``reranked.trec``.

    ``ray_scorer``: the Ray actor class (another scoring backend, e.g. vLLM on the exported model, in place of
    :class:`ShardScorer`; see the README). The manifest still fingerprints ``model_args.model``.

    Returns the manifest (with this session's record last)."""
    began = time.perf_counter()
    candidates = read_candidates(args)
    shards = plan_shards(candidates, args.shard_pairs)
    chunking = ChunkSettings.from_arguments(chunk_args) if args.long_documents == "chunk" else None
    manifest = new_manifest(candidates, shards, args, model_args, scoring_args, chunking)
    temperature, bias = manifest["model"]["score_temperature"], manifest["model"]["score_bias"]
    out = args.out
    lock = _lock(out)
    try:
        manifest = open_output(out, manifest, args.overwrite)
        for stale in (out / SCORES_DIR).glob(".*.tmp"):  # left by a killed run (never a shard a reader takes)
            stale.unlink()
        pending = [s for s in shards if not (out / s.file(args.format)).exists()]
        pending_pairs = sum(len(s.rows) for s in pending)
        logger.info("%s: %d pairs of %d queries in %d shards; %d shard(s) (%d pairs) to score with the %s engine",
                    out, len(candidates), manifest["input"]["queries"], len(shards), len(pending), pending_pairs,
                    args.engine)

        first_shard: dict[str, float] = {}  # when the first shard came back, and its pairs

        def accept(index: int, raw: np.ndarray, dtype: str, spans: np.ndarray | None = None) -> None:
            first_shard.setdefault("at", time.perf_counter())
            first_shard.setdefault("pairs", len(raw))
            if manifest["scored_dtype"] is None:
                manifest["scored_dtype"] = dtype
                atomic_write_json(out / MANIFEST, manifest)
            elif manifest["scored_dtype"] != dtype:
                raise ValueError(f"the shards of {out} were scored in {manifest['scored_dtype']}, this run scores in "
                                 f"{dtype}: pass --dtype {manifest['scored_dtype']} or use another --out.")
            shard = shards[index]
            atomic_write_bytes(out / shard.file(args.format),
                               table_bytes(shard_table(candidates, shard, raw, temperature, bias, spans), args.format))

        session = {"engine": args.engine, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "shards_scored": len(pending), "pairs_scored": pending_pairs}
        scoring_began = time.perf_counter()
        if pending:
            work = [(s.index, [(candidates.queries[i], candidates.documents[i]) for i in s.rows]) for s in pending]
            with tqdm(total=pending_pairs, desc="Reranking", unit="pair", disable=not args.progress) as bar:
                if args.engine == "ray":
                    session |= score_ray(work, accept, bar, model_args, scoring_args, args.seed, args, ray_scorer,
                                         chunking)
                else:
                    session |= score_local(work, accept, bar, model_args, scoring_args, args.seed, chunking)
        seconds = time.perf_counter() - scoring_began
        # After the first shard, model loading (and Ray's start-up) is behind: the rate the run goes on at.
        steady_pairs = pending_pairs - first_shard.get("pairs", pending_pairs)
        steady_s = scoring_began + seconds - first_shard.get("at", 0.0)
        session |= {"scoring_s": round(seconds, 3),
                    "pairs_per_s": round(pending_pairs / seconds, 2) if pending_pairs and seconds > 0 else None,
                    "first_shard_s": round(first_shard["at"] - scoring_began, 3) if first_shard else None,
                    "steady_pairs_per_s": round(steady_pairs / steady_s, 2) if steady_pairs and steady_s > 0 else None,
                    "settings": {"max_batch_tokens": model_args.max_batch_tokens, "batch_size": scoring_args.batch_size,
                                 "device": model_args.device},
                    "versions": library_versions(("torch", "transformers", "sentence-transformers", "pyarrow", "ray"))}
        run = assemble_run(out, candidates, shards, args.format)
        write_trec_run(run, out / RUN_FILE, args.tag or Path(model_args.model.rstrip("/")).name or "zerank")
        session["wall_s"] = round(time.perf_counter() - began, 3)
        manifest["complete"] = True
        manifest["sessions"].append(session)
        atomic_write_json(out / MANIFEST, manifest)
    finally:
        lock.close()
    logger.info("Scored %d pairs in %.1fs (%s pairs/s); wrote %s and %s", pending_pairs, seconds,
                session["pairs_per_s"], out / RUN_FILE, out / SCORES_DIR)
    return manifest


def main(args: RerankArguments, model_args: ModelArguments, scoring_args: ScoringArguments,
         chunk_args: ChunkArguments | None = None) -> dict:
    """``zerank rerank``."""
    return rerank(args, model_args, scoring_args, chunk_args)
