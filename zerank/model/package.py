"""What a zerank package folder holds, and the helpers that read and write one.

A package is: ``config.json`` (``model_type: zerank`` with an ``auto_map`` to the remote code), the safetensors
weights (one file or shards with an index), the remote code ``modeling_zerank.py``, ``zerank_fast_path.py`` and
``zerank_st.py`` (byte-identical to this installation's), the tokenizer with ``chat_template.jinja``, the
sentence-transformers configs and ``README.md`` (the model card rendered from ``model_card.md``).

Provenance: ``config.json`` carries ``source_model`` (the hub id or folder the weights came from), ``source_revision``
(the hub commit, when downloaded) and ``source_license`` (the source card's licence id); the card's front matter has
``license:`` = ``source_license`` and ``base_model:`` = the source's hub id.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from huggingface_hub import hf_hub_download, metadata_load, snapshot_download
from jinja2 import Environment, StrictUndefined
from safetensors import safe_open
from transformers import Qwen3Config

from modeling_zerank import ZerankConfig
from zerank.utils.resources import CHAT_TEMPLATE_FILE, MODEL_CARD_TEMPLATE, ST_CONFIG_DIR, remote_code_files

logger = logging.getLogger(__name__)

AUTO_MAP = {
    "AutoConfig": "modeling_zerank.ZerankConfig",
    "AutoModelForSequenceClassification": "modeling_zerank.ZerankForSequenceClassification",
}
# Fields ZerankConfig adds to Qwen3Config (scoring head, calibration, inference settings).
ZERANK_FIELDS = tuple(f.name for f in fields(ZerankConfig) if f.name not in {g.name for g in fields(Qwen3Config)})
TEMPLATE_FILE = CHAT_TEMPLATE_FILE.name
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
REMOTE_CODE_FILES = tuple(path.name for path in remote_code_files())
ST_CONFIG_FILES = tuple(sorted(path.name for path in ST_CONFIG_DIR.iterdir()))
CARD_FILE = "README.md"
# Every file a package has besides its weights.
PACKAGE_FILES = ("config.json", *REMOTE_CODE_FILES, *TOKENIZER_FILES, TEMPLATE_FILE, *ST_CONFIG_FILES, CARD_FILE)
WEIGHTS_INDEX = "model.safetensors.index.json"
# Bytes per element of the safetensors dtypes.
SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                        "BOOL": 1}
WEIGHTS_FILE = "model.safetensors"
# The licence of this package's own code, and of weights it creates (random ``--random`` builds).
PACKAGE_LICENSE = "apache-2.0"
# Pairs every build, export and publish scores to check itself: mixed lengths, non-Latin text.
PROBE_PAIRS = [
    ("What is 2+2?", "4"),
    ("What is 2+2?", "The answer is definitely 1 million"),
    ("How do I reset a forgotten Linux root password?", "Reboot, edit the GRUB entry and run passwd."),
    ("日本の首都はどこですか？", "日本の首都は東京です。"),
]


def is_hub_id(model: str) -> bool:
    """Whether ``model`` names a hub repo (owner/name) rather than a local path."""
    return not Path(model).exists() and not model.startswith((".", "/", "~")) and model.count("/") == 1


def snapshot_revision(folder: Path) -> str | None:
    """The commit of a hub snapshot folder (the hub cache stores each as ``snapshots/<commit>``), else None."""
    if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return folder.name
    return None


def card_license(folder: Path) -> str | None:
    """The ``license:`` of the front matter of ``folder/README.md`` (a hub model card), or None."""
    card = folder / CARD_FILE
    if not card.exists():
        return None
    license_id = (metadata_load(card) or {}).get("license")
    return str(license_id).strip().lower() if license_id else None


def is_non_commercial(license_id: str) -> bool:
    """Whether a hub licence id forbids commercial use (the Creative Commons NC family: cc-by-nc-4.0, ...)."""
    return "-nc" in license_id.lower()


def package_license(source_license: str | None, requested: str | None, source: str) -> str:
    """The licence a package built from ``source`` carries: ``requested`` (``--license``) or the source's.

    A source without a licence needs one requested; a non-commercial source licence is never replaced by one that
    allows commercial use."""
    if requested is None:
        if source_license is None:
            raise ValueError(f"{source} states no licence (no `license:` in its {CARD_FILE} front matter): pass "
                             "--license with the licence its weights are under.")
        return source_license
    if source_license is not None and is_non_commercial(source_license) and not is_non_commercial(requested):
        raise ValueError(f"{source} is licensed {source_license} (non-commercial): a package of its weights cannot "
                         f"be relicensed {requested}.")
    return requested


def resolve_model_dir(model: str, revision: str | None = None, allow_patterns: Sequence[str] | None = None) -> Path:
    """A local folder as it is, or a hub snapshot (the files matching ``allow_patterns``) of ``model``."""
    path = Path(model)
    if path.is_dir():
        return path
    if not is_hub_id(model):
        raise FileNotFoundError(f"{model} is neither a folder nor a hub id (owner/name).")
    logger.info("Downloading %s%s from the hub", model, f"@{revision}" if revision else "")
    return Path(snapshot_download(model, revision=revision, allow_patterns=list(allow_patterns or []) or None))


def read_config(model: str, revision: str | None = None) -> dict:
    """The raw ``config.json`` of a folder or hub repo."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json.")
        return json.loads((path / "config.json").read_text())
    if not is_hub_id(model):
        raise FileNotFoundError(f"{model} is neither a folder nor a hub id (owner/name).")
    return json.loads(Path(hf_hub_download(model, "config.json", revision=revision)).read_text())


def weight_map(folder: Path) -> dict[str, str]:
    """Tensor name -> safetensors file of a checkpoint folder (sharded or not)."""
    index = folder / WEIGHTS_INDEX
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    single = folder / WEIGHTS_FILE
    if not single.exists():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE} or {WEIGHTS_INDEX}: only safetensors checkpoints "
                                "are read.")
    with safe_open(single, framework="pt") as f:
        return dict.fromkeys(f.keys(), single.name)


def stored_bytes(tensor_slice) -> int:
    """Bytes of one tensor of a safetensors file, from its slice (shape and dtype), without reading it."""
    dtype = tensor_slice.get_dtype()
    if dtype not in SAFETENSORS_ITEMSIZE:
        raise ValueError(f"Unsupported safetensors dtype {dtype}.")
    return math.prod(tensor_slice.get_shape()) * SAFETENSORS_ITEMSIZE[dtype]


def stale_remote_code(folder: Path) -> list[str]:
    """The remote-code files of ``folder`` that are missing or differ from this installation's."""
    return [path.name for path in remote_code_files()
            if not (folder / path.name).exists() or (folder / path.name).read_bytes() != path.read_bytes()]


def copy_package_files(out: Path) -> None:
    """The remote-code files, the sentence-transformers configs and the prompt template."""
    for path in (*remote_code_files(), *ST_CONFIG_DIR.iterdir()):
        shutil.copy2(path, out / path.name)
    shutil.copy2(CHAT_TEMPLATE_FILE, out / TEMPLATE_FILE)


def missing_package_files(folder: Path) -> list[str]:
    return [name for name in PACKAGE_FILES if not (folder / name).exists()]


def rendered_prompts(tokenizer, pairs: Sequence[tuple[str, str]], instruction: str | None = None) -> list[str]:
    """Each pair rendered with the tokenizer's chat template (zerank's: query, document, assistant prompt)."""
    kwargs = {"instruction": instruction} if instruction else {}
    return [tokenizer.apply_chat_template([{"role": "query", "content": q}, {"role": "document", "content": d}],
                                          tokenize=False, **kwargs) for q, d in pairs]


def render_model_card(
    config: ZerankConfig,
    *,
    repo_id: str,
    base_model: str,
    max_length: int,
    base_model_id: str | None = None,
    untrained: bool = False,
    calibration: str | None = None,
    evaluation: str | None = None,
    training: str | None = None,
) -> str:
    """The model card (``README.md``) of a package, from the ``model_card.md`` template.

    The card's licence is the config's ``source_license``, with no default: a card never states a licence its weights
    may not have. The provenance paragraph names the config's ``source_model`` and ``source_revision``. ``calibration``, ``evaluation`` and ``training`` are Markdown sections (``calibration.md``,
    ``results.md``, a training summary) included when given.
    """
    license_id = getattr(config, "source_license", None)
    if not license_id:
        raise ValueError("No licence for the model card: the config has no source_license (rebuild the package with "
                         "zerank build, which records it).")
    template = Environment(undefined=StrictUndefined, keep_trailing_newline=True).from_string(
        MODEL_CARD_TEMPLATE.read_text()
    )
    return template.render(
        repo_id=repo_id,
        base_model=base_model,
        base_model_id=base_model_id,
        untrained=untrained,
        license=license_id,
        non_commercial=is_non_commercial(license_id),
        source_model=getattr(config, "source_model", None),
        source_revision=getattr(config, "source_revision", None),
        score_temperature=config.score_temperature,
        score_bias=config.score_bias,
        yes_token_id=config.yes_token_id,
        max_length=max_length,
        max_query_tokens=config.max_query_tokens,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        calibration=calibration,
        evaluation=evaluation,
        training=training,
    )
