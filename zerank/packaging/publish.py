"""Publish a built zerank folder to a Hugging Face Hub model repo: validate, upload in one commit, verify, tag.

Run by ``zerank publish``:

    zerank publish --folder build/zerank-1 --repo org/zerank-1 --tag v1.0 --dry-run   # what would be uploaded
    zerank publish --folder build/zerank-1 --repo org/zerank-1 --tag v1.0             # publish
    zerank publish --folder build/zerank-1 --repo org/zerank-1 --revision staging     # a branch (created if new)
    zerank publish --folder build/zerank-1 --repo org/zerank-1 --create-pr            # open a pull request
    zerank publish --folder build/zerank-1 --repo org/zerank-1 --endpoint https://hub.internal  # self-hosted hub

The token comes from the usual huggingface_hub sources (HF_TOKEN, `hf auth login`); it is never printed or logged.
The hub is ``--endpoint`` when given, else huggingface_hub's own (``$HF_ENDPOINT`` or huggingface.co); every hub call
names it explicitly.

Steps, each logged; nothing is uploaded unless every check passes:
 1. Validate the folder (every problem is listed at once): config.json maps `auto_map` to modeling_zerank;
    modeling_zerank.py and zerank_st.py are byte-identical to this installation's; the weights are safetensors and
    hold exactly the tensors the model expects; the tokenizer files and chat_template.jinja are there; README.md
    carries license (equal to config.json's `source_license` when there is one), base_model,
    `pipeline_tag: text-ranking`, `library_name: sentence-transformers` and tags, and its usage snippets name the
    target repo; the folder holds no symbolic link and no pickle (recognised by content, whatever its name). Then a
    smoke test loads the folder with CrossEncoder and scores a few pairs. --dry-run stops here and prints the files
    (size, regular or LFS) and the card.
 2. `create_repo(exist_ok=True)` (refused if --private is asked for a repo that exists and is public), create the
    branch if --revision names a new one, then one `upload_folder` commit. The repo revision becomes a mirror of
    the folder: remote files missing from the folder are deleted in the same commit (.gitattributes is kept).
    An unchanged folder makes no new commit.
 3. Verify the exact commit: download it into a fresh cache, compare every file's sha256 with the local file,
    load that download with CrossEncoder (its own remote code) and compare its scores with the local folder's.
 4. Create --tag on that commit, and print the commit id and a usage snippet pinned to it.

A card whose snippets name another repo (e.g. built with the default --repo-id) is refused; --retarget-card uploads
a copy of the card with that repo id replaced by --repo instead (the folder itself is not modified).
Only the package's own files are uploaded (``published_names``: package.PACKAGE_FILES and the weights, by their
index); anything else in the folder (notes, backups, build_report.json, which holds local paths) is listed as not
uploaded.
"""

from __future__ import annotations

import bz2
import contextlib
import fnmatch
import gc
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import pickletools
import re
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from huggingface_hub import HfApi, ModelCard, constants, get_token, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from safetensors import safe_open
from tqdm.auto import tqdm

from modeling_zerank import ZerankConfig, ZerankForSequenceClassification
from zerank.packaging.arguments import PublishArguments
from zerank.model.loading import load_reranker
from zerank.model.package import (
    AUTO_MAP,
    PACKAGE_FILES,
    PROBE_PAIRS,
    TEMPLATE_FILE,
    TOKENIZER_FILES,
    WEIGHTS_FILE,
    WEIGHTS_INDEX,
    weight_map,
)
from zerank.utils.resources import remote_code_files
from zerank.model.scoring import score_pairs
from zerank.utils.system import atomic_write_json

logger = logging.getLogger(__name__)

REPORT_FILE = "publish_report.json"
# Folders that tools keep beside a package (git, caches): neither uploaded nor searched.
UNSEARCHED_DIRS = (".*", "__pycache__")
# Pickle opcodes, as bytes: the byte after a pickle's PROTO header is one of them.
PICKLE_OPCODES = frozenset(op.code.encode("latin-1") for op in pickletools.opcodes)
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Bytes read from the start of a file (or of its decompressed stream) to recognise a pickle or an .npy header.
SNIFF_BYTES = 1 << 16
# Largest file searched for a protocol-0/1 pickle (no header: the whole file is disassembled).
HEADERLESS_PICKLE_MAX_BYTES = 16 << 20
REQUIRED_METADATA = {"pipeline_tag": "text-ranking", "library_name": "sentence-transformers"}
# What the Hub stores with git-LFS: its default .gitattributes patterns, files of 10 MiB or more, binary files.
LFS_PATTERNS = ("*.bin", "*.ckpt", "*.h5", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.pickle", "*.pkl", "*.pt",
                "*.pth", "*.safetensors", "*.gz", "*.tar", "*.zip", "*.zst", "*.model", "*tfevents*")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
SNIPPET_REPO_RE = re.compile(r"""(?:CrossEncoder|from_pretrained)\(\s*["']([^"']+)["']""")
MAX_SCORE_DIFF = 1e-6
# Loggers that write one INFO line per HTTP request.
NOISY_LOGGERS = ("httpx", "httpx2")


class PublishRefused(Exception):
    """The folder or the target repo fails a check: nothing was uploaded."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("Refusing to publish:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class PlannedFile:
    path: str
    size: int
    sha256: str
    mode: str  # "regular" or "lfs", as the Hub is expected to store it


@dataclass
class Progress:
    """What has been done on the hub so far, reported if a later step fails."""

    done: list[str] = field(default_factory=list)

    def record(self, step: str) -> None:
        self.done.append(step)
        logger.info("Done: %s", step)


@dataclass
class RemoteState:
    exists: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit
    tags: dict[str, str] = field(default_factory=dict)


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


def _pickle_header(data: bytes) -> str | None:
    """Why ``data`` (a file's or a decompressed stream's first bytes) starts a pickle with a header, else None: a
    pickle of protocol 2 to 5 (PROTO, then an opcode) or an .npy array of Python objects (stored as a pickle)."""
    if len(data) >= 3 and data[0] == 0x80 and 2 <= data[1] <= 5 and data[2:3] in PICKLE_OPCODES:
        return f"a pickle (protocol {data[1]})"
    if data.startswith(NPY_MAGIC):
        stream = io.BytesIO(data)
        try:
            major, _ = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(stream)
        except Exception:  # noqa: BLE001 -- an unreadable header: numpy refuses to load it anyway
            return None
        return "an .npy array of Python objects (a pickle)" if dtype.hasobject else None
    return None


def _is_headerless_pickle(stream) -> bool:
    """Whether ``stream`` (at its start) is one whole pickle of protocol 0 or 1, which have no header: its bytes
    disassemble, with a consistent stack, up to a STOP that ends the stream."""
    try:
        with open(os.devnull, "w") as sink:
            pickletools.dis(stream, out=sink)
    except Exception:  # noqa: BLE001 -- not a pickle (dis raises ValueError and decoding errors)
        return False
    return stream.read(1) == b""


def _decompressed_head(path: Path, head: bytes) -> bytes | None:
    """The first ``SNIFF_BYTES`` + 1 bytes of a gzip, zlib, bzip2, xz or lzma file's decompressed stream (reading
    no more than that, whatever the compression ratio), else None."""
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:  # zlib (joblib's compression)
        try:
            return zlib.decompressobj().decompress(head, SNIFF_BYTES + 1)
        except zlib.error:
            return None
    openers = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open, b"]\x00\x00": lzma.open}
    opener = next((opener for magic, opener in openers.items() if head.startswith(magic)), None)
    if opener is None:
        return None
    try:
        with opener(path, "rb") as f:
            return f.read(SNIFF_BYTES + 1)
    except (OSError, EOFError, lzma.LZMAError):  # not compressed after all: the magic bytes were a coincidence
        return None


def _zipped_pickle(path: Path) -> str | None:
    """Why a zip archive (torch.save's format, .npz) holds a pickle: a .pkl/.pickle member or an object .npy."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if PurePosixPath(member).suffix.lower() in (".pkl", ".pickle"):
                    return f"a zip archive holding the pickle {member} (torch.save's format)"
                if member.lower().endswith(".npy"):
                    with archive.open(member) as npy:
                        if _pickle_header(npy.read(SNIFF_BYTES)):
                            return f"a zip archive holding {member}, an .npy array of Python objects"
    except (zipfile.BadZipFile, OSError):
        return None
    return None


def pickle_content(path: Path) -> str | None:
    """Why the file at ``path`` holds a pickle, recognised by its content whatever its name, else None: a pickle
    (pickle.dump, joblib, torch.save's legacy format; of protocol 0 or 1, which have no header, up to
    ``HEADERLESS_PICKLE_MAX_BYTES``), one compressed with gzip, zlib, bzip2, xz or lzma (of protocol 0 or 1: up to
    ``SNIFF_BYTES`` decompressed), an .npy array of Python objects, or a zip archive (torch.save, .npz) holding a
    pickle."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
        if reason := _pickle_header(head):
            return reason
        if head[:1] in PICKLE_OPCODES and os.fstat(f.fileno()).st_size <= HEADERLESS_PICKLE_MAX_BYTES:
            f.seek(0)
            if _is_headerless_pickle(f):
                return "a pickle (protocol 0 or 1)"
    data = _decompressed_head(path, head)
    if data is not None:
        if reason := _pickle_header(data):
            return f"{reason}, compressed"
        if len(data) <= SNIFF_BYTES and data[:1] in PICKLE_OPCODES and _is_headerless_pickle(io.BytesIO(data)):
            return "a pickle (protocol 0 or 1), compressed"
        return None
    return _zipped_pickle(path) if head.startswith(ZIP_MAGIC) else None


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


def predicted_mode(relpath: str, size: int, sample: bytes) -> str:
    """"lfs" or "regular": how the Hub will store the file, from its name, size and first bytes."""
    name = relpath.rsplit("/", 1)[-1]
    lfs = any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS) or size >= LFS_SIZE_THRESHOLD or b"\0" in sample
    return "lfs" if lfs else "regular"


def sha256_file(path: Path, progress: tqdm | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (``progress`` advances by the bytes read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            if progress is not None:
                progress.update(len(block))
    return digest.hexdigest()


def upload_plan(folder: Path, card: str) -> tuple[list[PlannedFile], list[str]]:
    """The package files to upload (relative path, size, sha256, predicted mode) and the entries left out
    (``folder_contents``; the folder has passed validation, so none is refused). README.md is ``card``, the text
    that will be uploaded."""
    contents = folder_contents(folder)
    if contents.refused:
        raise PublishRefused(contents.refused)
    kept = [(folder / relpath, relpath) for relpath in contents.upload]
    skipped = contents.not_uploaded
    plan = []
    with tqdm(total=sum(p.stat().st_size for p, _ in kept), unit="B", unit_scale=True, desc="Hashing") as bar:
        for path, relpath in kept:
            if relpath == "README.md":
                data = card.encode("utf-8")
                plan.append(PlannedFile(relpath, len(data), hashlib.sha256(data).hexdigest(), "regular"))
                continue
            with open(path, "rb") as f:
                sample = f.read(512)
            size = path.stat().st_size
            plan.append(PlannedFile(relpath, size, sha256_file(path, bar), predicted_mode(relpath, size, sample)))
    return plan, skipped


# --- validation ---


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


def score_folder(folder: Path, seed: int) -> np.ndarray:
    """Load a local folder with CrossEncoder (its remote code, float32 on the CPU) and score the probe pairs:
    float32 array, in input order."""
    torch.manual_seed(seed)
    model = load_reranker(str(folder), device="cpu", dtype="float32")
    scores = score_pairs(model, PROBE_PAIRS)
    del model
    gc.collect()
    return scores


def smoke_test(folder: Path, seed: int) -> np.ndarray:
    """Scores of the probe pairs, or PublishRefused when loading or scoring fails or gives non-finite / out-of-range
    scores."""
    try:
        scores = score_folder(folder, seed)
    except Exception as e:  # noqa: BLE001 -- any failure to load or run the folder refuses the publish
        raise PublishRefused([f"smoke test: loading and scoring with CrossEncoder failed: {type(e).__name__}: {e}"])
    if not (np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()):
        raise PublishRefused([f"smoke test: scores must be finite and in [0, 1], got {scores.tolist()}"])
    return scores


def prepare_card(folder: Path, repo: str, retarget_card: bool) -> str | None:
    """README.md as it will be uploaded: the folder's, or retargeted to ``repo`` with --retarget-card."""
    path = folder / "README.md"
    if not path.exists():
        return None
    card = path.read_text(encoding="utf-8")
    named = set(card_snippet_repos(card))
    if retarget_card and len(named) == 1 and named != {repo}:
        (old,) = named
        logger.info("Retargeting the card from %s to %s (the folder's README.md is not modified)", old, repo)
        card = retarget(card, old, repo)
    return card


def stage(folder: Path, plan: list[PlannedFile], card: str, dest: Path) -> Path:
    """A folder of symlinks to exactly the planned files, with the card as it will be uploaded."""
    for item in plan:
        target = dest / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.path == "README.md":
            target.write_text(card, encoding="utf-8")
        else:
            target.symlink_to((folder / item.path).resolve())
    return dest


# --- hub steps ---


def verify_commit(api: HfApi, args: PublishArguments, commit: str, plan: list[PlannedFile],
                  local_scores: np.ndarray) -> dict:
    """Download ``commit`` into a fresh cache, compare sha256 of every file, then load that download with
    CrossEncoder (the remote code of the commit) and compare its scores with the local folder's."""
    with tempfile.TemporaryDirectory(prefix="zerank-verify-") as cache:
        logger.info("Verifying commit %s: downloading it into a fresh cache", commit)
        snapshot = Path(snapshot_download(args.repo, revision=commit, cache_dir=cache, endpoint=api.endpoint))
        remote = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
        expected = {item.path for item in plan}
        problems = []
        if expected - remote:
            problems.append(f"files missing from the commit: {sorted(expected - remote)}")
        if remote - expected - {".gitattributes"}:
            problems.append(f"unexpected files in the commit: {sorted(remote - expected - {'.gitattributes'})}")
        for item in tqdm(plan, desc="Checking sha256", unit="file"):
            if item.path in remote and sha256_file(snapshot / item.path) != item.sha256:
                problems.append(f"{item.path}: sha256 of the hub copy differs from the local file")
        if problems:
            raise RuntimeError("Verification failed:\n" + "\n".join(f"  - {p}" for p in problems))
        logger.info("All %d files match their local sha256; loading the commit with CrossEncoder", len(plan))
        hub_scores = score_folder(snapshot, args.seed)
    diff = float(np.abs(hub_scores - local_scores).max())
    if not diff <= MAX_SCORE_DIFF:
        raise RuntimeError(f"Verification failed: hub scores {hub_scores.tolist()} != local {local_scores.tolist()}")
    return {"files_checked": len(plan), "max_abs_score_diff": diff, "scores": hub_scores.tolist()}


def pinned_snippet(repo: str, commit: str, endpoint: str) -> str:
    """Python that loads ``repo`` pinned to ``commit`` (with a note on the endpoint of a self-hosted hub)."""
    lines = ["from sentence_transformers import CrossEncoder", ""]
    if endpoint != constants._HF_DEFAULT_ENDPOINT:
        lines.insert(0, f"# with HF_ENDPOINT={endpoint}")
    lines.append(f'model = CrossEncoder("{repo}", revision="{commit}", trust_remote_code=True)')
    return "\n".join(lines)


def print_dry_run(args: PublishArguments, plan: list[PlannedFile], skipped: list[str], card: str) -> None:
    print(f"\nDry run: would publish {args.folder} to {args.repo}@{args.revision}"
          + (f" and tag {args.tag}" if args.tag else "") + (" as a pull request" if args.create_pr else ""))
    print(f"\n{'file':<45} {'size':>12}  storage (predicted)")
    for item in plan:
        print(f"{item.path:<45} {item.size:>12,}  {item.mode.upper() if item.mode == 'lfs' else item.mode}")
    total = sum(item.size for item in plan)
    print(f"{len(plan)} files, {total:,} bytes ({sum(i.mode == 'lfs' for i in plan)} LFS)")
    if skipped:
        print(f"not uploaded: {skipped}")
    print("\n--- README.md (model card) as it would be uploaded ---")
    print(card)
    print("--- end of card ---\nDry run: nothing was uploaded.")


def authenticate(endpoint: str | None) -> HfApi:
    """An HfApi for ``endpoint`` (None: huggingface_hub's default) whose token, from the usual sources, the hub
    accepts; the token is never shown."""
    if get_token() is None:
        raise PublishRefused(["no Hugging Face token: set HF_TOKEN or run `hf auth login`"])
    api = HfApi(endpoint=endpoint.rstrip("/") if endpoint else None)
    try:
        user = api.whoami()["name"]
    except HfHubHTTPError as e:
        raise PublishRefused([f"{api.endpoint} rejected the token: {e}"])
    except Exception as e:  # transport errors (refused, DNS, TLS, timeout, offline mode) have no public type
        raise ConnectionError(f"cannot reach the hub at {api.endpoint} ({type(e).__name__}: {e}); nothing was "
                              "uploaded") from e
    logger.info("Authenticated on %s as %s", api.endpoint, user)
    return api


def preflight(api: HfApi, args: PublishArguments) -> RemoteState:
    """Read-only checks of the target repo, so that nothing is written when the publish cannot complete."""
    try:
        info = api.repo_info(args.repo)
    except RepositoryNotFoundError:
        logger.info("%s does not exist yet: it will be created %s", args.repo, "private" if args.private else "public")
        return RemoteState(exists=False)
    if args.private and not info.private:
        raise PublishRefused([f"--private was asked but {args.repo} already exists and is public"])
    refs = api.list_repo_refs(args.repo)
    state = RemoteState(
        True, {r.name: r.target_commit for r in refs.branches}, {r.name: r.target_commit for r in refs.tags}
    )
    problems = []
    if args.revision in state.tags and args.revision not in state.branches:
        problems.append(f"--revision {args.revision} is a tag; commits go to branches")
    if args.tag in state.tags and state.tags[args.tag] != state.branches.get(args.revision):
        problems.append(f"tag {args.tag} already exists on commit {state.tags[args.tag]}; tags are not moved")
    if problems:
        raise PublishRefused(problems)
    return state


def publish(args: PublishArguments) -> dict:
    """Validate, then (unless dry run) upload, verify and tag; the report. Raises PublishRefused before any write
    to the hub, RuntimeError (saying what was done) when a step on the hub fails."""
    folder = Path(args.folder)
    card = prepare_card(folder, args.repo, args.retarget_card) if folder.is_dir() else None
    logger.info("Validating %s for %s", folder, args.repo)
    problems = folder_problems(folder, args.repo, card)
    if problems:
        raise PublishRefused(problems)
    api = state = None
    if not args.dry_run:  # fail fast on credentials and the repo before the (slow, for a big model) smoke test
        api = authenticate(args.endpoint)
        state = preflight(api, args)
    logger.info("Smoke test: loading %s with CrossEncoder", folder)
    local_scores = smoke_test(folder, args.seed)
    logger.info("Smoke test passed: scores %s", [round(float(s), 6) for s in local_scores])
    plan, skipped = upload_plan(folder, card)
    report = {"repo": args.repo, "revision": args.revision, "dry_run": args.dry_run,
              "files": [asdict(item) for item in plan], "not_uploaded": skipped,
              "local_scores": local_scores.tolist()}
    if args.dry_run:
        print_dry_run(args, plan, skipped, card)
        return report

    report["endpoint"] = api.endpoint
    progress = Progress()
    try:
        return _publish_to_hub(api, args, state, plan, card, local_scores, report, progress)
    except Exception as e:
        done = "\n".join(f"  - {step}" for step in progress.done) or "  - nothing"
        raise RuntimeError(
            f"Publishing stopped: {type(e).__name__}: {e}\nDone before the failure:\n{done}\n"
            "Steps after the failure were not run (no tag was created unless listed above). Re-running the same "
            "command is safe: unchanged files are not uploaded again and an existing commit is verified again."
        ) from e


def _publish_to_hub(api: HfApi, args: PublishArguments, state: RemoteState, plan: list[PlannedFile], card: str,
                    local_scores: np.ndarray, report: dict, progress: Progress) -> dict:
    folder = Path(args.folder)
    url = api.create_repo(args.repo, private=args.private, exist_ok=True)
    if not state.exists:
        progress.record(f"repo {url} created")
        refs = api.list_repo_refs(args.repo)
        state.branches = {ref.name: ref.target_commit for ref in refs.branches}
    if args.revision not in state.branches:
        api.create_branch(args.repo, branch=args.revision)
        state.branches[args.revision] = api.repo_info(args.repo, revision=args.revision).sha
        progress.record(f"branch {args.revision} created from main")
    head_before = state.branches[args.revision]

    with tempfile.TemporaryDirectory(prefix="zerank-publish-") as tmp:
        staged = stage(folder, plan, card, Path(tmp))
        logger.info("Uploading %d files to %s@%s in one commit", len(plan), args.repo, args.revision)
        commit_info = api.upload_folder(
            repo_id=args.repo, folder_path=staged, revision=args.revision, create_pr=args.create_pr,
            commit_message=args.message or f"Publish zerank from {folder.name}", delete_patterns="*",
        )
    commit = commit_info.oid
    new_commit = commit != head_before
    if new_commit:
        target = commit_info.pr_url or f"{args.repo}@{args.revision}"
        progress.record(f"commit {commit} uploaded to {target} ({commit_info.commit_url})")
    else:
        progress.record(f"no new commit: {args.repo}@{args.revision} already holds this folder (commit {commit})")
    report.update(commit=commit, new_commit=new_commit, pr_url=commit_info.pr_url, commit_url=commit_info.commit_url)
    report["verification"] = verify_commit(api, args, commit, plan, local_scores)
    progress.record(f"commit {commit} verified (sha256 of {len(plan)} files, CrossEncoder scores)")

    if args.tag:
        if state.tags.get(args.tag) == commit:
            logger.info("Tag %s already points to %s", args.tag, commit)
        elif args.tag in state.tags:
            raise RuntimeError(f"tag {args.tag} already exists on commit {state.tags[args.tag]}, not on {commit}")
        else:
            api.create_tag(args.repo, tag=args.tag, revision=commit, tag_message=args.message)
            progress.record(f"tag {args.tag} created on {commit}")
        report["tag"] = args.tag
    report["usage"] = pinned_snippet(args.repo, commit, api.endpoint)
    return report


def print_summary(args: PublishArguments, report: dict) -> None:
    state = "new commit" if report["new_commit"] else "unchanged, no new commit"
    print(f"\nPublished {args.repo}@{args.revision}: commit {report['commit']} ({state})")
    if report.get("pr_url"):
        print(f"Pull request: {report['pr_url']}")
    if report.get("tag"):
        print(f"Tag: {report['tag']}")
    print(f"Verified: {report['verification']['files_checked']} files by sha256, scores equal "
          f"(max |diff| {report['verification']['max_abs_score_diff']:.1e})")
    print(f"\nUse it pinned to this commit (remote code runs from the hub):\n\n{report['usage']}\n")


def main(args: PublishArguments) -> int:
    """``zerank publish``: 0 when done (or dry run), 2 when refused (nothing uploaded), 1 when stopped midway.
    An unreachable hub raises ConnectionError (the command line's one-line error, exit 1; nothing uploaded)."""
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        report = publish(args)
    except PublishRefused as e:
        logger.error("%s\nNothing was uploaded.", e)
        return 2
    except RuntimeError as e:
        logger.error("%s", e)
        return 1
    if args.output_dir:
        atomic_write_json(Path(args.output_dir) / REPORT_FILE, report)
    if not args.dry_run:
        print_summary(args, report)
    return 0
