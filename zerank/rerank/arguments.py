"""The arguments of the rerank commands (standard library only, so ``--help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zerank.utils.arguments import check_positive


@dataclass
class RerankArguments:
    """zerank rerank: score a candidate set in resumable shards, in one process or on a Ray Data actor pool."""

    out: Path = field(metadata={"help": "Output folder: reranked.trec, scores/ (one file per shard), manifest.json. "
                                        "Rerunning the command on it scores only the shards it lacks."})
    data: Path | None = field(default=None, metadata={"help": "BEIR folder (queries.jsonl, corpus.jsonl) that "
                                                               "--run's ids refer to."})
    run: Path | None = field(default=None, metadata={"help": "TREC run of the candidates (qid Q0 docid rank score "
                                                              "tag), with --data."})
    pairs: Path | None = field(default=None, metadata={"help": "Instead of --data/--run: a .jsonl or .parquet file of "
                                                                "rows query_id, query, doc_id, document."})
    format: Literal["parquet", "jsonl"] = field(default="parquet", metadata={"help": "Format of the score shards."})
    shard_pairs: int = field(default=4096, metadata={"help": "Pairs per shard (whole queries): the unit of work, of "
                                                             "resume and of a Ray task."})
    engine: Literal["local", "ray"] = field(default="local", metadata={"help": "local: one process; ray: a Ray Data "
                                                                                "actor pool."})
    ray_address: str | None = field(default=None, metadata={"help": "Ray cluster to join ('auto', ray://HOST:10001); "
                                                                     "default: a local Ray instance."})
    workers: int | None = field(default=None, metadata={"help": "Ray actors, each holding the model (default: the "
                                                               "cluster's GPUs or CPUs over the per-worker share)."})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs of one Ray actor (its torch threads on CPU)."})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs of one Ray actor (1: one actor per GPU)."})
    tag: str | None = field(default=None, metadata={"help": "Run tag of reranked.trec (default: the model's name)."})
    seed: int = field(default=0, metadata={"help": "Seed for torch (scoring is deterministic anyway)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    long_documents: Literal["truncate", "chunk"] = field(
        default="truncate", metadata={"help": "truncate: cut a document at the model's context; chunk: a document "
                                              "whose prompt exceeds --chunk-tokens scores as the aggregation of its "
                                              "windows, and the shards get its best window's character span "
                                              "(span_start, span_end) and window count."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Start again in a folder holding another (or the same) "
                                                             "rerank."})

    def __post_init__(self):
        if (self.pairs is None) == (self.data is None and self.run is None):
            raise ValueError("give either --data and --run, or --pairs")
        if self.pairs is None and (self.data is None or self.run is None):
            raise ValueError("--data and --run go together")
        if self.pairs is not None and self.pairs.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"--pairs must be a .jsonl or .parquet file, got {self.pairs}.")
        check_positive(self, "shard_pairs", "workers")
        if not self.cpus_per_worker > 0 or self.gpus_per_worker < 0:
            raise ValueError("--cpus-per-worker must be positive and --gpus-per-worker at least 0.")
        if self.engine != "ray" and (self.ray_address or self.workers or self.gpus_per_worker):
            raise ValueError("--ray-address, --workers and --gpus-per-worker need --engine ray.")
