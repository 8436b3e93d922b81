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

import fnmatch
import gc
import hashlib
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from tqdm.auto import tqdm

from zerank.packaging.arguments import PublishArguments
from zerank.model.loading import load_reranker
from zerank.model.package import (
    PROBE_PAIRS,
)
from zerank.packaging.validation import card_snippet_repos, folder_contents, folder_problems, retarget
from zerank.model.scoring import score_pairs
from zerank.utils.system import atomic_write_json

logger = logging.getLogger(__name__)

REPORT_FILE = "publish_report.json"
# What the Hub stores with git-LFS: its default .gitattributes patterns, files of 10 MiB or more, binary files.
LFS_PATTERNS = ("*.bin", "*.ckpt", "*.h5", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.pickle", "*.pkl", "*.pt",
                "*.pth", "*.safetensors", "*.gz", "*.tar", "*.zip", "*.zst", "*.model", "*tfevents*")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
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
