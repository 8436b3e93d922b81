"""The arguments of the training commands (standard library only, so ``--help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zerank.utils.arguments import check_existing_file, check_fraction, check_positive


LOSSES = ("bce", "lambda", "listnet", "ranknet", "elo-mse")
ELO_LINKS = ("bradley-terry", "thurstone")  # zerank elo: P(a beats b) = sigmoid or Phi of the rating difference
ELO_PRIOR_SD = 3.0  # zerank elo: N(0, sd^2) prior on every rating (log-odds units): keeps unanimous data finite
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class FinetuneArguments:
    """zerank finetune: data, model and LoRA settings; the trainer's flags (``--output-dir`` among them) are
    :class:`zerank.training.training_args.ZerankTrainingArguments`'."""

    model: str = field(metadata={"help": "zerank folder or hub id, or a Qwen3ForCausalLM checkpoint."})
    data: Path = field(metadata={"help": "BEIR folder or jsonl file of training data."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer for building a Qwen3 checkpoint "
                                                                  "(default: the checkpoint's)."})
    train_split: str = field(default="train", metadata={"help": "BEIR: qrels split to train on."})
    eval_split: str = field(default="test", metadata={"help": "BEIR: held-out split (if it exists)."})
    eval_data: Path | None = field(default=None, metadata={"help": "jsonl: held-out file (default: "
                                                                   "--holdout-fraction of --data)."})
    holdout_fraction: float = field(
        default=0.2, metadata={"help": "Share of the training queries held out when there is no held-out split or "
                                       "file."}
    )
    max_train_queries: int | None = field(default=None, metadata={"help": "Train on the first N training queries."})
    eval_max_queries: int | None = field(default=None, metadata={"help": "Evaluate and calibrate on the first N "
                                                                         "held-out queries."})
    relevance_level: int = field(default=1, metadata={"help": "Smallest grade counted as relevant."})
    repo_id: str = field(default="your-org/zerank-finetuned", metadata={"help": "Repo id named in the model card."})
    negatives_per_query: int = field(default=7, metadata={"help": "Hard negatives per training query."})
    mine_top_k: int = field(default=30, metadata={"help": "Sample negatives from this first-stage top k."})
    eval_top_k: int = field(default=100, metadata={"help": "Held-out candidates reranked per query."})
    max_batch_tokens: int | None = field(
        default=None, metadata={"help": "Token budget of one scoring batch of the before/after evaluation (default: "
                                        "the model config's for the device)."}
    )
    loss: Literal["bce", "lambda", "listnet", "ranknet", "elo-mse"] = field(
        default="bce", metadata={"help": "Training loss (elo-mse: regress sigmoid(Elo) of --elo from the score)."})
    elo: Path | None = field(default=None, metadata={"help": "--loss elo-mse: `zerank elo`'s elo.jsonl for "
                                                              "queries and documents of the BEIR folder --data."})
    mini_batch_size: int | None = field(default=None, metadata={"help": "List losses: pairs per forward pass."})
    max_length: int = field(
        default=1024, metadata={"help": "Cut training pairs to this many tokens (the saved model keeps its own "
                                        "context)."}
    )
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Weights' dtype: auto = float32, or bfloat16 for --lora on a GPU."}
    )
    freeze_embeddings: bool = field(
        default=False, metadata={"help": "Keep the input embeddings fixed (151,936 rows: ~10%% of a 4B model's "
                                         "weights) to save their gradients and optimizer state."}
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS),
                                           metadata={"help": "Module names LoRA adapts."})
    merge: bool = field(default=False, metadata={"help": "With --lora: save final/ with the adapter merged in."})

    def __post_init__(self):
        if self.merge and not self.lora:
            raise ValueError("--merge needs --lora")
        check_positive(self, "negatives_per_query", "mine_top_k", "eval_top_k", "max_batch_tokens", "mini_batch_size",
                  "max_train_queries", "eval_max_queries", "max_length")
        check_fraction("holdout_fraction", self.holdout_fraction)
        if not self.data.exists():
            raise ValueError(f"--data {self.data} does not exist")
        if not self.data.is_dir() and self.data.suffix != ".jsonl":
            raise ValueError(f"--data must be a BEIR folder or a .jsonl file, got {self.data}")
        if (self.loss == "elo-mse") != (self.elo is not None):
            raise ValueError("--loss elo-mse and --elo go together (the Elo scores are that loss's targets)")
        if self.elo is not None and not (self.data.is_dir() and self.elo.is_file()):
            raise ValueError(f"--elo needs a BEIR folder as --data and an existing file, got --data {self.data} "
                             f"--elo {self.elo}")


@dataclass
class PairsArguments:
    """zerank pairs: the document pairs to judge per query (random cycles over a first stage's candidates)."""

    data: Path = field(metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/)."})
    out: Path = field(metadata={"help": "Output folder: pairs.jsonl, candidates.trec, report.json."})
    split: str = field(default="train", metadata={"help": "The judged queries of qrels/<split>.tsv get pairs (their "
                                                          "judgments are not used)."})
    max_queries: int | None = field(default=None, metadata={"help": "Only the first N queries of the split."})
    top_k: int = field(default=50, metadata={"help": "First-stage candidates per query (n)."})
    cycles: int = field(
        default=4, metadata={"help": "Random cycles per query: each candidate in 2 x cycles comparisons, cycles x n "
                                     "judgments per query (the paper's k = 2 x cycles)."}
    )
    query_cycles: int = field(
        default=4, metadata={"help": "Random cycles over the queries for cross-query pairs (a random candidate of "
                                     "each), which put all queries' Elo scores on one scale; 0: none."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the cycles."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --out folder."})

    def __post_init__(self):
        check_positive(self, "max_queries", "top_k", "cycles")
        check_positive(self, "query_cycles", allow_zero=True)


@dataclass
class JudgeArguments:
    """zerank judge: the built-in judge, a zerank model: P(a beats b) = sigmoid(logit_a - logit_b) of its scores."""

    pairs: Path = field(metadata={"help": "pairs.jsonl written by zerank pairs."})
    out: Path = field(metadata={"help": "Output folder: judgments.jsonl, report.json."})
    seed: int = field(default=0, metadata={"help": "Seed for torch (scoring is deterministic anyway)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --out folder."})

    def __post_init__(self):
        check_existing_file("pairs", self.pairs)


@dataclass
class EloArguments:
    """zerank elo: per-query Elo scores from pairwise judgments, with standard errors, on one scale across queries."""

    judgments: Path = field(metadata={"help": "jsonl rows {query_id, doc_a, doc_b, p_a_wins | winner} (+ query_id_b "
                                              "for cross-query judgments)."})
    out: Path = field(metadata={"help": "Output folder: elo.jsonl, report.json."})
    link: Literal["bradley-terry", "thurstone"] = field(
        default="bradley-terry", metadata={"help": "P(a beats b): sigmoid (Bradley-Terry, Elo) or Phi (Thurstone) "
                                                   "of the rating difference."}
    )
    prior_sd: float = field(default=ELO_PRIOR_SD, metadata={"help": "Standard deviation of the N(0, sd^2) prior on "
                                                                    "every rating, in log-odds units."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --out folder."})

    def __post_init__(self):
        if not self.prior_sd > 0:
            raise ValueError(f"--prior-sd must be positive, got {self.prior_sd}.")
        check_existing_file("judgments", self.judgments)
