"""The arguments of the evaluation commands (standard library only, so ``--help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zerank.utils.arguments import ModelArguments, check_fraction, check_positive


@dataclass
class Bm25Arguments:
    """zerank bm25: first-stage figures of a BEIR folder."""

    data: Path = field(metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/)."})
    split: str = field(default="test", metadata={"help": "qrels/<split>.tsv to evaluate."})
    top_k: int = field(default=100, metadata={"help": "Documents retrieved per query."})
    max_queries: int | None = field(default=None, metadata={"help": "Only the first N judged queries."})
    relevance_level: int = field(default=1, metadata={"help": "Smallest grade counted as relevant."})
    output: Path | None = field(default=None, metadata={"help": "Write the run in TREC format here."})

    def __post_init__(self):
        check_positive(self, "top_k", "max_queries")


@dataclass
class EvaluateArguments:
    """zerank evaluate: rerank a first stage's candidates and measure NDCG@10, MRR@10 and recall."""

    data: Path = field(metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/)."})
    output_dir: Path = field(metadata={"help": "Where results and runs are written."})
    split: str = field(default="test", metadata={"help": "qrels/<split>.tsv to evaluate."})
    top_k: int = field(default=100, metadata={"help": "First-stage candidates reranked per query."})
    max_queries: int | None = field(default=None, metadata={"help": "Only the first N judged queries (qrels order)."})
    relevance_level: int = field(
        default=1, metadata={"help": "Smallest grade counted relevant by MRR and recall (BEIR: 1; TREC DL often 2)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for torch (scoring is deterministic anyway)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    long_documents: Literal["truncate", "chunk"] = field(
        default="truncate", metadata={"help": "truncate: cut a document at the model's context; chunk: a document "
                                              "whose prompt exceeds --chunk-tokens scores as the aggregation of its "
                                              "windows (the long documents group)."}
    )

    def __post_init__(self):
        check_positive(self, "top_k", "max_queries")


@dataclass
class CalibrateArguments:
    """zerank calibrate: fit score_temperature and score_bias on labelled pairs."""

    data: Path = field(metadata={"help": "BEIR folder or jsonl file of labelled pairs."})
    output_dir: Path = field(metadata={"help": "Where results and the logit cache go."})
    split: str = field(default="test", metadata={"help": "BEIR qrels split to draw pairs from."})
    top_k: int = field(default=100, metadata={"help": "BEIR: first-stage candidates used as negatives."})
    max_queries: int | None = field(default=None, metadata={"help": "BEIR: only the first N judged queries."})
    label_threshold: int = field(
        default=1, metadata={"aliases": ["--relevance-level", "--relevance_level"],
                             "help": "Smallest grade / label counted as relevant."}
    )
    holdout_fraction: float = field(default=0.5, metadata={"help": "Share of the queries held out to report on."})
    precision_targets: list[float] = field(
        default_factory=lambda: [0.5, 0.8, 0.9, 0.95],
        metadata={"help": "Precision targets for the score thresholds (space-separated)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the fit/held-out split."})
    write: bool = field(
        default=False, metadata={"help": "Store the fitted T and b in the model folder's config.json (keeps a backup)."}
    )

    def __post_init__(self):
        check_positive(self, "top_k", "max_queries")
        check_fraction("holdout_fraction", self.holdout_fraction)
        if not all(0 < t <= 1 for t in self.precision_targets):
            raise ValueError(f"--precision-targets must be in (0, 1], got {self.precision_targets}.")


def check_calibrate(args: CalibrateArguments, model_args: ModelArguments, *_) -> None:
    if args.write and not Path(model_args.model).is_dir():
        raise ValueError(f"--write needs --model to be a local folder, got {model_args.model}.")
