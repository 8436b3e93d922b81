"""What ``zerank publish`` checks before it uploads anything: the folder's contents (package files, other files,
refused files: links and pickles) and every problem of its config, remote code, weights, tokenizer and card, listed
at once."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from huggingface_hub import ModelCard
from safetensors import safe_open

from modeling_zerank import ZerankConfig, ZerankForSequenceClassification
from zerank.model.package import (
    AUTO_MAP,
    PACKAGE_FILES,
    TEMPLATE_FILE,
    TOKENIZER_FILES,
    WEIGHTS_FILE,
    WEIGHTS_INDEX,
    weight_map,
)
from zerank.packaging.scan import pickle_content
from zerank.utils.resources import remote_code_files

# Folders that tools keep beside a package (git, caches): neither uploaded nor searched.
UNSEARCHED_DIRS = (".*", "__pycache__")
REQUIRED_METADATA = {"pipeline_tag": "text-ranking", "library_name": "sentence-transformers"}
SNIPPET_REPO_RE = re.compile(r"""(?:CrossEncoder|from_pretrained)\(\s*["']([^"']+)["']""")


# --- what the folder holds: package files, other files, refused files ---


@dataclass
class FolderContents:
    upload: list[str]  # the package files present, relative paths
    not_uploaded: list[str]  # every other entry that is not refused (folders end with "/")
    refused: list[str]  # "relative path: why", entries that refuse the publish


def published_names(folder: Path) -> set[str]:
    """The relative paths a package publishes: ``package.PACKAGE_FILES`` and its weights (the index and the shards
    it names, else the single weights file)."""
    names = set(PACKAGE_FILES)
    if (folder / WEIGHTS_INDEX).exists():
        names.add(WEIGHTS_INDEX)
        with contextlib.suppress(Exception):  # an unreadable index: weight_problems reports it
            names |= set(weight_map(folder).values())
    else:
        names.add(WEIGHTS_FILE)
    return names


def folder_contents(folder: Path) -> FolderContents:
    """Every entry of ``folder``, sorted into the package files to upload, the others, and the refused ones: any
    symbolic link (publish uploads files, never what a link points at), anything that is not a regular file, and
    any pickle (``pickle_content``). Hidden folders and __pycache__ are neither uploaded nor searched."""
    allowed = published_names(folder)
    contents = FolderContents([], [], [])
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        searched = []
        for name in sorted(dirs):
            path, rel = base / name, (base / name).relative_to(folder).as_posix()
            if path.is_symlink():
                contents.refused.append(f"{rel}: a symbolic link (to {os.readlink(path)}); links are not published")
            elif any(fnmatch.fnmatch(name, pattern) for pattern in UNSEARCHED_DIRS):
                contents.not_uploaded.append(f"{rel}/")
            else:
                searched.append(name)
        dirs[:] = searched
        for name in sorted(files):
            path, rel = base / name, (base / name).relative_to(folder).as_posix()
            if path.is_symlink():
                contents.refused.append(f"{rel}: a symbolic link (to {os.readlink(path)}); links are not published")
            elif not path.is_file():
                contents.refused.append(f"{rel}: not a regular file")
            elif reason := pickle_content(path):
                contents.refused.append(f"{rel}: {reason}; pickles run code when loaded, only safetensors weights "
                                        "are published")
            elif rel in allowed:
                contents.upload.append(rel)
            else:
                contents.not_uploaded.append(rel)
    return contents


# --- the upload plan ---


def card_snippet_repos(card: str) -> list[str]:
    """The repo ids the card's usage snippets load (``CrossEncoder("...")``, ``from_pretrained("...")``)."""
    return SNIPPET_REPO_RE.findall(card)


def retarget(card: str, old: str, new: str) -> str:
    """Replace the repo id ``old`` by ``new`` wherever it stands alone (not inside a longer id like old-small)."""
    return re.sub(rf"(?<![\w.-]){re.escape(old)}(?![\w-]|\.\w)", new, card)


def card_problems(card: str, repo: str, source_license: str | None = None) -> list[str]:
    """What the model card lacks for the hub (metadata) or gets wrong (snippets naming another repo, a licence
    other than ``source_license``, the licence of the source weights recorded in config.json)."""
    problems = []
    try:
        metadata = ModelCard(card, ignore_metadata_errors=False).data.to_dict()
    except Exception as e:  # noqa: BLE001 -- the card's YAML block is unreadable (yaml and hub errors alike)
        return [f"README.md: its metadata block cannot be parsed ({e})"]
    license_id = metadata.get("license")
    if not license_id:
        problems.append("README.md metadata: no license")
    elif source_license and str(license_id).strip().lower() != str(source_license).strip().lower():
        problems.append(f"README.md metadata: license {license_id!r} differs from config.json's source_license "
                        f"{source_license!r}, the licence of the source weights (a package cannot relicense them)")
    if not metadata.get("base_model"):
        problems.append("README.md metadata: no base_model (build with --base-model-id)")
    for key, value in REQUIRED_METADATA.items():
        if metadata.get(key) != value:
            problems.append(f"README.md metadata: {key} must be {value!r}, got {metadata.get(key)!r}")
    tags = metadata.get("tags")
    if not isinstance(tags, list) or not tags:
        problems.append("README.md metadata: no tags")
    named = card_snippet_repos(card)
    if not named:
        problems.append("README.md: no usage snippet (CrossEncoder(...) / from_pretrained(...)) found")
    elif set(named) != {repo}:
        others = sorted(set(named) - {repo})
        problems.append(
            f"README.md: usage snippets name {others}, not {repo!r} "
            "(rebuild with --repo-id, or pass --retarget-card to upload the card with the repo id replaced)"
        )
    return problems


def weight_problems(folder: Path) -> list[str]:
    """Safetensors weights holding exactly the tensors (names, shapes) that ZerankForSequenceClassification expects."""
    try:
        shards = sorted(set(weight_map(folder).values()))
    except FileNotFoundError:
        return [f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX}"]
    except Exception as e:  # noqa: BLE001 -- an unreadable index or single weights file
        return [f"the weights cannot be read ({type(e).__name__}: {e})"]
    outside = [s for s in shards if PurePosixPath(s).name != s]
    if outside:
        return [f"{WEIGHTS_INDEX} names weight files outside the folder or in subfolders: {outside}"]
    missing_shards = [s for s in shards if not (folder / s).exists()]
    if missing_shards:
        return [f"weight shards listed in the index are missing: {missing_shards}"]
    problems = []
    found: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        try:
            with safe_open(folder / shard, framework="pt") as f:
                found.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})  # noqa: SIM118
        except Exception as e:  # noqa: BLE001 -- a truncated or corrupt file
            problems.append(f"{shard} is not a readable safetensors file ({e})")
    if problems:
        return problems
    try:
        with torch.device("meta"):
            model = ZerankForSequenceClassification(ZerankConfig.from_pretrained(folder))
    except Exception as e:  # noqa: BLE001 -- an invalid config (e.g. yes_token_id outside the vocabulary)
        return [f"config.json does not describe a valid zerank model ({type(e).__name__}: {e})"]
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if set(expected) - set(found):
        problems.append(f"weights lack tensors the model needs: {sorted(set(expected) - set(found))[:5]}")
    if set(found) - set(expected):
        problems.append(f"weights hold tensors the model does not use: {sorted(set(found) - set(expected))[:5]}")
    wrong = [f"{n} {found[n]} != {expected[n]}" for n in sorted(set(found) & set(expected)) if found[n] != expected[n]]
    if wrong:
        problems.append(f"tensor shapes differ from config.json: {wrong[:5]}")
    return problems


def folder_problems(folder: Path, repo: str, card: str | None) -> list[str]:
    """Every static problem of the folder (the smoke test comes after). ``card`` is the README that would go up."""
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = []
    config_path = folder / "config.json"
    config = {}
    if not config_path.exists():
        problems.append("config.json is missing")
    else:
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            problems.append(f"config.json is not valid JSON ({e})")
    if config:
        if config.get("model_type") != "zerank":
            problems.append(f"config.json: model_type must be 'zerank', got {config.get('model_type')!r}")
        auto_map = config.get("auto_map") or {}
        for key, value in AUTO_MAP.items():
            if auto_map.get(key) != value:
                problems.append(f"config.json: auto_map[{key!r}] must be {value!r}, got {auto_map.get(key)!r}")
    for installed in remote_code_files():
        local = folder / installed.name
        if not local.exists():
            problems.append(f"{installed.name} is missing (remote code: the hub copy is what users run)")
        elif local.read_bytes() != installed.read_bytes():
            problems.append(f"{installed.name} differs from this package's {installed} (rebuild the folder)")
    modules = folder / "modules.json"
    if not modules.exists() or "zerank_st.ZerankTransformer" not in modules.read_text():
        problems.append("modules.json is missing or does not load zerank_st.ZerankTransformer")
    for name in (*TOKENIZER_FILES, TEMPLATE_FILE):
        if not (folder / name).exists():
            problems.append(f"{name} is missing")
    problems += folder_contents(folder).refused
    if card is None:
        problems.append("README.md (the model card) is missing")
    else:
        problems += card_problems(card, repo, config.get("source_license"))
    if config and not any(p.startswith("config.json") for p in problems):
        problems += weight_problems(folder)
    return problems
