"""zerank publish end to end: the real huggingface_hub client against tests/hub_server.py, a local Hub server.

huggingface_hub reads HF_ENDPOINT, HF_HUB_DISABLE_XET and HF_HOME at import, so every client that talks to the server
runs in a subprocess with that environment; checks that need no hub (folder validation, dry run) run in-process.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hub_server import HubServer
from safetensors.torch import load_file, save_file

from modeling_zerank import ZerankConfig
from zerank.packaging import publish, validation
from zerank.packaging.arguments import BuildArguments
from zerank.cli import entry_point
from zerank.cli import main as cli_main
from zerank.model.package import PROBE_PAIRS, render_model_card

TOKEN = "hf_zerankTestToken9f3c1d7a"
REPO = "acme/zerank-tiny"
PUBLISH = ["-m", "zerank.cli", "publish"]


@pytest.fixture(scope="session")
def hub():
    with HubServer(token=TOKEN, user="acme") as server:
        yield server


@pytest.fixture(scope="session")
def release_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny built model with the card `zerank build --repo-id acme/zerank-tiny --base-model-id ...` writes."""
    out = tmp_path_factory.mktemp("release") / "zerank-tiny"
    shutil.copytree(tiny_model_dir, out)
    args = BuildArguments(out=out, base="Qwen/Qwen3-0.6B", repo_id=REPO, base_model_id="Qwen/Qwen3-0.6B")
    card = render_model_card(ZerankConfig.from_pretrained(out), repo_id=args.repo_id, base_model="Qwen/Qwen3-0.6B",
                             max_length=args.max_length, base_model_id=args.base_model_id)
    (out / "README.md").write_text(card)
    return out


def hub_env(hub: HubServer, home: Path, token: str | None = TOKEN, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "TRANSFORMERS_OFFLINE"}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), **extra)
    if token:
        env["HF_TOKEN"] = token
    return env


def run(argv: list, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *map(str, argv)], env=env, capture_output=True, text=True, timeout=600,
                            check=False)
    assert TOKEN not in result.stdout + result.stderr, "the token leaked into the output"
    return result


def run_publish(hub, home, folder, *argv, **env) -> subprocess.CompletedProcess:
    return run([*PUBLISH, "--folder", folder, *argv], hub_env(hub, home, **env))


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != "build_report.json"}


@pytest.fixture(scope="session")
def published(hub, release_dir, tmp_path_factory):
    """One full publish of the tiny model to acme/zerank-tiny@main, tagged v1.0."""
    home, out = tmp_path_factory.mktemp("publisher-hf-home"), tmp_path_factory.mktemp("publish-out")
    result = run_publish(hub, home, release_dir, "--repo", REPO, "--tag", "v1.0", "--message", "zerank tiny v1.0",
                         "--output-dir", out)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "publish_report.json").read_text())
    return SimpleNamespace(result=result, report=report, commit=report["commit"], home=home, report_dir=out)


CLIENT_DOWNLOADS = r"""
import hashlib, io, json, sys
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.file_download import hf_hub_url, http_get
repo, commit = sys.argv[1:3]
out = {
    "tag_config": open(hf_hub_download(repo, "config.json", revision="v1.0")).read(),
    "tag_weights": hf_hub_download(repo, "model.safetensors", revision="v1.0"),
    "snapshot": snapshot_download(repo, revision=commit),
    "tags": {r.name: r.target_commit for r in HfApi().list_repo_refs(repo).tags},
}
tail = io.BytesIO()
http_get(hf_hub_url(repo, "tokenizer.json", revision=commit), tail, resume_size=1000)  # sends Range: bytes=1000-
out["range_tail_sha256"] = hashlib.sha256(tail.getvalue()).hexdigest()
errors = {}
for name, args in {"revision": (repo, "config.json", "v9.9"), "entry": (repo, "missing.txt", "main"),
                   "repo": ("acme/missing", "config.json", "main")}.items():
    try:
        hf_hub_download(*args[:2], revision=args[2])
    except Exception as e:
        errors[name] = type(e).__name__
out["errors"] = errors
print(json.dumps(out))
"""

CLIENT_CROSS_ENCODER = r"""
import json, sys
from sentence_transformers import CrossEncoder
from zerank.model.scoring import score_pairs
model = CrossEncoder(sys.argv[1], revision=sys.argv[2], trust_remote_code=True, device="cpu")
print(json.dumps(score_pairs(model, [tuple(p) for p in json.loads(sys.argv[3])]).tolist()))
"""


@pytest.fixture(scope="session")
def downloads(hub, published, tmp_path_factory):
    home = tmp_path_factory.mktemp("downloader-hf-home")
    result = run(["-c", CLIENT_DOWNLOADS, REPO, published.commit], hub_env(hub, home, token=None))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def hub_loads(hub, published, tmp_path_factory):
    """CrossEncoder(repo, revision=<commit>) in a fresh process and fresh cache, then again with HF_HUB_OFFLINE=1."""
    home = tmp_path_factory.mktemp("user-hf-home")
    argv = ["-c", CLIENT_CROSS_ENCODER, REPO, published.commit, json.dumps(PROBE_PAIRS)]
    loads = {}
    for mode, extra in (("online", {}), ("offline", {"HF_HUB_OFFLINE": "1"})):
        before = len(hub.requests)
        result = run(argv, hub_env(hub, home, token=None, **extra))
        assert result.returncode == 0, result.stderr[-3000:]
        loads[mode] = SimpleNamespace(scores=json.loads(result.stdout.strip().splitlines()[-1]),
                                      requests=hub.requests[before:])
    return loads


# --- publishing ---


def test_publish_makes_one_verified_commit_and_tags_it(hub, published, release_dir):
    repo = hub.repo(REPO)
    assert len(repo.commits) == 2, "the hub's initial commit (.gitattributes) and exactly one upload"
    commit = repo.commits[published.commit]
    assert commit.title == "zerank tiny v1.0" and commit.parent == next(iter(repo.commits))
    assert repo.branches == {"main": published.commit} and repo.tags == {"v1.0": published.commit}
    expected = local_files(release_dir)
    assert set(commit.files) == set(expected) | {".gitattributes"}
    assert all(commit.files[path].data == data for path, data in expected.items())
    assert commit.files["model.safetensors"].lfs and commit.files["tokenizer.json"].lfs
    assert not commit.files["config.json"].lfs and not commit.files["README.md"].lfs
    verification = published.report["verification"]
    assert verification["files_checked"] == len(expected) and verification["max_abs_score_diff"] == 0.0
    assert published.report["new_commit"] and published.report["tag"] == "v1.0"
    snippet = f'CrossEncoder("{REPO}", revision="{published.commit}", trust_remote_code=True)'
    assert snippet in published.result.stdout and f"HF_ENDPOINT={hub.url}" in published.result.stdout
    assert "build_report.json" in published.report["not_uploaded"]


def test_downloads_by_tag_commit_and_range(downloads, published, release_dir):
    assert downloads["tag_config"] == (release_dir / "config.json").read_text()
    weights = (release_dir / "model.safetensors").read_bytes()
    assert hashlib.sha256(Path(downloads["tag_weights"]).read_bytes()).digest() == hashlib.sha256(weights).digest()
    assert downloads["tags"] == {"v1.0": published.commit}
    snapshot = Path(downloads["snapshot"])
    assert snapshot.name == published.commit
    files = local_files(snapshot)
    assert files.pop(".gitattributes").startswith(b"*.7z filter=lfs") and files == local_files(release_dir)
    tail = (release_dir / "tokenizer.json").read_bytes()[1000:]
    assert downloads["range_tail_sha256"] == hashlib.sha256(tail).hexdigest()
    assert downloads["errors"] == {"revision": "RevisionNotFoundError", "entry": "RemoteEntryNotFoundError",
                                   "repo": "RepositoryNotFoundError"}


def test_cross_encoder_loads_from_the_hub_then_offline_from_the_cache(hub_loads, published):
    local = np.array(published.report["local_scores"])
    online, offline = hub_loads["online"], hub_loads["offline"]
    assert np.abs(np.array(online.scores) - local).max() <= 1e-6
    assert offline.scores == online.scores
    resolved = {path.rsplit("/", 1)[-1] for method, path in online.requests if f"/resolve/{published.commit}/" in path}
    assert {"config.json", "modeling_zerank.py", "zerank_st.py", "model.safetensors", "tokenizer.json"} <= resolved
    assert offline.requests == [], "HF_HUB_OFFLINE=1 must not reach the hub"


WRONG_TOKEN = "hf_wrongTokenValue123456"
SECOND_ROUND = r"""
import json, os, sys
from zerank.cli import main
codes = []
for token, argv in json.loads(sys.argv[1]):
    if token is None:
        os.environ.pop("HF_TOKEN", None)
    else:
        os.environ["HF_TOKEN"] = token
    codes.append(main(["publish", *argv]))
print("CODES", json.dumps(codes))
"""


@pytest.fixture(scope="session")
def second_round(hub, published, release_dir):
    """In one process (imports are the slow part): re-publish the unchanged folder; four publishes the hub side
    must refuse (wrong token, no token, --private on a public repo, a tag that would move); one whose tag request
    fails on the hub, after the verification."""
    cases = [
        (TOKEN, ["--folder", release_dir, "--repo", REPO, "--tag", "v1.0"]),
        (WRONG_TOKEN, ["--folder", release_dir, "--repo", REPO]),
        (None, ["--folder", release_dir, "--repo", REPO]),
        (TOKEN, ["--folder", release_dir, "--repo", REPO, "--private"]),
        (TOKEN, ["--folder", release_dir, "--repo", REPO, "--revision", "staging", "--tag", "v1.0"]),
        (TOKEN, ["--folder", release_dir, "--repo", REPO, "--tag", "v1.1"]),  # the hub fails the tag request
    ]
    hub.fail_next("POST", r"/tag/", 500)
    repo = hub.repo(REPO)
    state = (len(repo.commits), dict(repo.branches), dict(repo.tags), len(hub.repos), len(hub.lfs_store))
    cases_json = json.dumps([(token, [str(a) for a in argv]) for token, argv in cases])
    result = run(["-c", SECOND_ROUND, cases_json], hub_env(hub, published.home, token=None))
    codes = re.search(r"CODES (.*)", result.stdout)
    assert codes, result.stderr[-4000:]
    return SimpleNamespace(result=result, codes=json.loads(codes.group(1)), state_before=state)


def test_republishing_an_unchanged_folder_makes_no_commit(hub, published, second_round):
    assert second_round.codes[0] == 0, second_round.result.stderr[-3000:]
    assert f"commit {published.commit} (unchanged, no new commit)" in second_round.result.stdout
    assert hub.commit_count(REPO) == 2 and hub.repo(REPO).tags == {"v1.0": published.commit}


def test_refusals_that_need_the_hub_write_nothing(hub, second_round):
    assert second_round.codes[1:5] == [2, 2, 2, 2]
    stderr = second_round.result.stderr
    for message in ("rejected the token", "no Hugging Face token", f"{REPO} already exists and is public",
                    "tag v1.0 already exists on commit"):
        assert message in stderr
    assert stderr.count("Nothing was uploaded.") == 4
    assert WRONG_TOKEN not in second_round.result.stdout + stderr
    repo = hub.repo(REPO)
    state = (len(repo.commits), repo.branches, repo.tags, len(hub.repos), len(hub.lfs_store))
    assert state == second_round.state_before


def test_a_failure_midway_says_what_was_done(hub, published, second_round):
    assert second_round.codes[5] == 1 and hub.injected_failures == []
    stderr = second_round.result.stderr
    report = stderr[stderr.index("Publishing stopped: HfHubHTTPError"):]
    assert "Injected failure" in report and f"  - commit {published.commit} verified" in report
    assert "no tag was created unless listed above" in report and "Re-running the same command is safe" in report
    assert "v1.1" not in hub.repo(REPO).tags


def test_the_token_never_appears_in_output_or_report(published):
    assert TOKEN not in published.result.stdout + published.result.stderr
    assert TOKEN not in (published.report_dir / "publish_report.json").read_text()
    assert "Authenticated on" in published.result.stderr


def test_client_uses_only_endpoints_the_server_implements(hub, published, second_round, downloads, hub_loads):
    """Contract with the pinned huggingface_hub: a new client calling an unknown endpoint fails here, loudly."""
    assert hub.unknown_requests == []
    seen = {(method, re.sub(r"/[0-9a-f]{40}", "/<commit>", path)) for method, path in hub.requests}
    expected = {
        ("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"), ("GET", "/api/whoami-v2"),
        ("POST", f"/api/models/{REPO}/preupload/main"), ("POST", f"/{REPO}.git/info/lfs/objects/batch"),
        ("POST", f"/{REPO}.git/info/lfs/objects/verify"), ("POST", f"/api/models/{REPO}/commit/main"),
        ("POST", f"/api/models/{REPO}/tag/<commit>"), ("GET", f"/api/models/{REPO}/refs"),
        ("GET", f"/api/models/{REPO}/tree/<commit>"), ("HEAD", f"/{REPO}/resolve/<commit>/config.json"),
        ("GET", f"/{REPO}/resolve/<commit>/model.safetensors"), ("GET", f"/{REPO}/resolve/v1.0/config.json"),
    }
    assert expected <= seen, expected - seen
    assert any(method == "PUT" and path.startswith("/lfs-upload/") for method, path in hub.requests)


def test_server_answers_501_to_unknown_routes_and_records_them():
    with HubServer(token=TOKEN) as server:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{server.url}/api/models/acme/x/discussions")
        assert error.value.code == 501
        assert server.unknown_requests == [("GET", "/api/models/acme/x/discussions")]


# --- validation, in-process: every refusal, the dry run ---


def clone(src: Path, dst: Path) -> Path:
    """Copy small files, hard-link big ones (mutations unlink before rewriting)."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.stat().st_size > 1_000_000:
            os.link(path, dst / path.name)
        else:
            shutil.copy2(path, dst / path.name)
    return dst


def edit(path: Path, old: str, new: str, pattern: bool = False) -> None:
    text = path.read_text()
    edited = re.sub(old, new, text) if pattern else text.replace(old, new)
    assert edited != text, f"mutation of {path.name} did nothing"
    path.write_text(edited)


def rewrite_weights(folder: Path, change) -> None:
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    (folder / "model.safetensors").unlink()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def drop_auto_map(d):
    config = json.loads((d / "config.json").read_text())
    del config["auto_map"]
    (d / "config.json").write_text(json.dumps(config))


def set_source_license(d, license_id):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "source_license": license_id}))


def outside_shard(d):
    index = {"weight_map": {"score.weight": "../model.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


MUTATIONS = {
    "no auto_map": (drop_auto_map, "auto_map['AutoConfig'] must be 'modeling_zerank.ZerankConfig'"),
    "modeling file missing": (lambda d: (d / "modeling_zerank.py").unlink(), "modeling_zerank.py is missing"),
    "modeling file edited": (lambda d: edit(d / "modeling_zerank.py", "class ZerankConfig", "class ZerankConfig "),
                             "modeling_zerank.py differs from this package's"),
    "input module edited": (lambda d: edit(d / "zerank_st.py", "import logging", "import logging, os"),
                            "zerank_st.py differs from this package's"),
    ".bin weights": (lambda d: torch.save({"w": torch.zeros(2)}, d / "pytorch_model.bin"),
                     "pytorch_model.bin: a zip archive holding the pickle pytorch_model/data.pkl"),
    "weights index naming a file outside": (outside_shard, "names weight files outside the folder"),
    "tokenizer missing": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "chat template missing": (lambda d: (d / "chat_template.jinja").unlink(), "chat_template.jinja is missing"),
    "card missing": (lambda d: (d / "README.md").unlink(), "README.md (the model card) is missing"),
    "no license": (lambda d: edit(d / "README.md", "license: apache-2.0\n", ""), "no license"),
    "card relicenses a non-commercial source": (
        lambda d: set_source_license(d, "cc-by-nc-4.0"),
        "license 'apache-2.0' differs from config.json's source_license 'cc-by-nc-4.0'"),
    "no base_model": (lambda d: edit(d / "README.md", "base_model: Qwen/Qwen3-0.6B\n", ""), "no base_model"),
    "wrong pipeline_tag": (lambda d: edit(d / "README.md", "pipeline_tag: text-ranking", "pipeline_tag: fill-mask"),
                           "pipeline_tag must be 'text-ranking'"),
    "no library_name": (lambda d: edit(d / "README.md", "library_name: sentence-transformers\n", ""),
                        "library_name must be 'sentence-transformers'"),
    "no tags": (lambda d: edit(d / "README.md", r"tags:\n(- .*\n)+", "", pattern=True), "no tags"),
    "snippet names another repo": (lambda d: edit(d / "README.md", f'CrossEncoder("{REPO}"', 'CrossEncoder("x/y"'),
                                   "usage snippets name ['x/y']"),
    "missing tensor": (lambda d: rewrite_weights(d, lambda t: t.pop("score.weight")), "lack tensors"),
    "extra tensor": (lambda d: rewrite_weights(d, lambda t: t.update({"lm_head.weight": t["score.weight"].clone()})),
                     "does not use: ['lm_head.weight']"),
    "invalid config": (lambda d: edit(d / "config.json", '"yes_token_id": 9454', '"yes_token_id": 999999'),
                       "config.json does not describe a valid zerank model"),
}


def problems_of(folder: Path, repo: str = REPO, retarget_card: bool = False) -> list[str]:
    return validation.folder_problems(folder, repo, publish.prepare_card(folder, repo, retarget_card))


def test_release_folder_passes_validation(release_dir):
    assert problems_of(release_dir) == []


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_refuses_a_broken_folder(name, release_dir, tmp_path):
    mutate, expected = MUTATIONS[name]
    folder = clone(release_dir, tmp_path / "model")
    mutate(folder)
    problems = problems_of(folder)
    assert any(expected in p for p in problems), problems


def test_smoke_test_refuses_non_finite_scores(release_dir, tmp_path):
    folder = clone(release_dir, tmp_path / "model")
    rewrite_weights(folder, lambda t: t["score.weight"].fill_(float("nan")))
    assert problems_of(folder) == []  # names and shapes are right: only running the model shows it
    with pytest.raises(publish.PublishRefused, match=r"scores must be finite and in \[0, 1\]"):
        publish.smoke_test(folder, seed=0)


def test_cli_lists_every_problem_and_contacts_no_hub(hub, release_dir, tmp_path, monkeypatch, caplog):
    folder = clone(release_dir, tmp_path / "model")
    drop_auto_map(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": [1.0]}))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # as a publisher's shell would have it
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    before = len(hub.requests)
    assert cli_main(["publish", "--folder", str(folder), "--repo", REPO, "--endpoint", hub.url]) == 2
    assert "auto_map" in caplog.text and "pytorch_model.bin: a pickle (protocol" in caplog.text
    assert "Nothing was uploaded." in caplog.text and len(hub.requests) == before


# The files the issue found uploaded: each is refused (links, pickles whatever their name) or left out.
REFUSED = {
    "token": "a symbolic link (to ",
    "pytorch_model.BIN": "a zip archive holding the pickle pytorch_model/data.pkl",
    "optimizer.Pt": "a pickle (protocol 2)",
    "features.pkl.gz": "a pickle (protocol 4), compressed",
    "embeddings.npy": "an .npy array of Python objects",
    "classifier.joblib": "a pickle (protocol 4), compressed",
    "nested/args.bin": "a pickle (protocol 0 or 1)",
}


def add_refused_files(folder: Path, token_file: Path) -> None:
    (folder / "token").symlink_to(token_file)
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.BIN")
    torch.save({"w": torch.zeros(2)}, folder / "optimizer.Pt", _use_new_zipfile_serialization=False)
    (folder / "features.pkl.gz").write_bytes(gzip.compress(pickle.dumps({"f": 1}, protocol=4)))
    np.save(folder / "embeddings.npy", np.array([{"v": 1}], dtype=object))
    (folder / "classifier.joblib").write_bytes(zlib.compress(pickle.dumps({"c": 1}, protocol=4)))  # joblib, zlib
    (folder / "nested").mkdir()
    (folder / "nested" / "args.bin").write_bytes(pickle.dumps({"lr": 0.1}, protocol=0))


def test_refuses_links_and_pickles_by_content_and_names_each(release_dir, tmp_path):
    folder = clone(release_dir, tmp_path / "model")
    token_file = tmp_path / "hf-home" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN)
    add_refused_files(folder, token_file)
    np.save(folder / "scores.npy", np.zeros(3))  # numbers, not objects: not refused (and not uploaded)
    problems = problems_of(folder)
    for name, reason in REFUSED.items():
        assert [p for p in problems if p.startswith(f"{name}: {reason}")], (name, problems)
    assert len(problems) == len(REFUSED), problems
    assert TOKEN not in "\n".join(problems)
    with pytest.raises(publish.PublishRefused) as refused:
        publish.upload_plan(folder, publish.prepare_card(folder, REPO, False))
    assert len(refused.value.problems) == len(REFUSED)


def test_uploads_only_the_package_files(release_dir, tmp_path, capsys):
    folder = clone(release_dir, tmp_path / "model")
    (folder / "notes.txt").write_text("release notes\n")
    shutil.copy2(folder / "config.json", folder / "config.json.20261203-101010.bak")  # an old calibrate --write
    np.save(folder / "scores.npy", np.zeros(3))
    (folder / "sub").mkdir()
    (folder / "sub" / "config.json").write_text("{}")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.pkl").write_bytes(pickle.dumps(1))  # hidden folders are not searched
    assert problems_of(folder) == []
    plan, skipped = publish.upload_plan(folder, publish.prepare_card(folder, REPO, False))
    assert sorted(item.path for item in plan) == sorted(local_files(release_dir))
    assert skipped == [".cache/", "build_report.json", "config.json.20261203-101010.bak", "notes.txt",
                       "scores.npy", "sub/config.json"]
    assert cli_main(["publish", "--folder", str(folder), "--repo", REPO, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "not uploaded: ['.cache/', 'build_report.json', 'config.json.20261203-101010.bak'" in out
    assert not re.search(r"^(notes\.txt|config\.json\.2)", out, re.MULTILINE)


def test_a_sharded_package_uploads_its_index_and_every_shard(release_dir, tmp_path):
    folder = clone(release_dir, tmp_path / "model")
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:1], "model-00002-of-00002.safetensors": names[1:]}
    for shard, group in shards.items():
        save_file({n: tensors[n] for n in group}, folder / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: shard for shard, group in shards.items() for n in group}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00003-of-00002.safetensors").write_bytes(b"stray")  # not in the index
    assert problems_of(folder) == []
    contents = validation.folder_contents(folder)
    assert {"model.safetensors.index.json", *shards} <= set(contents.upload)
    assert "model-00003-of-00002.safetensors" in contents.not_uploaded


def test_licence_of_the_card_must_be_the_source_licence(release_dir, tmp_path):
    folder = clone(release_dir, tmp_path / "model")
    set_source_license(folder, "cc-by-nc-4.0")
    problems = problems_of(folder)
    assert problems == [("README.md metadata: license 'apache-2.0' differs from config.json's source_license "
                        "'cc-by-nc-4.0', the licence of the source weights (a package cannot relicense them)")]
    edit(folder / "README.md", "license: apache-2.0\n", "license: cc-by-nc-4.0\n")
    assert problems_of(folder) == []


def test_an_unreachable_endpoint_is_a_one_line_error(release_dir, monkeypatch, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(sys, "argv", ["zerank", "publish", "--folder", str(release_dir), "--repo", REPO,
                                      "--endpoint", endpoint])
    with pytest.raises(SystemExit) as exit_info:
        entry_point()
    message = exit_info.value.code  # sys.exit(message): printed to stderr, exit status 1
    assert isinstance(message, str) and "\n" not in message and TOKEN not in message
    assert message.startswith(f"zerank: error: cannot reach the hub at {endpoint} (")
    assert message.endswith("nothing was uploaded")
    assert "Traceback" not in capsys.readouterr().err


def test_retarget_card_replaces_the_repo_id_only_with_the_flag(release_dir, tmp_path):
    folder = clone(release_dir, tmp_path / "model")
    edit(folder / "README.md", "## Limits", f"See also {REPO}-small and {REPO}.\n\n## Limits")
    assert any("--retarget-card" in p for p in problems_of(folder, "org/fork"))
    card = publish.prepare_card(folder, "org/fork", retarget_card=True)
    assert validation.card_problems(card, "org/fork") == []
    assert set(validation.card_snippet_repos(card)) == {"org/fork"}
    assert "See also acme/zerank-tiny-small and org/fork." in card and "base_model: Qwen/Qwen3-0.6B" in card
    assert REPO in (folder / "README.md").read_text(), "the folder's own card is never modified"


def test_dry_run_shows_files_and_card_and_uploads_nothing(hub, release_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    before = len(hub.requests)
    argv = ["publish", "--folder", str(release_dir), "--repo", "acme/other", "--retarget-card", "--tag", "v2",
            "--dry-run", "--endpoint", hub.url]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert len(hub.requests) == before and hub.repo("acme/other") is None
    size = (release_dir / "model.safetensors").stat().st_size
    assert re.search(rf"model\.safetensors\s+{size:,}\s+LFS", out)
    assert re.search(r"tokenizer\.json\s+[\d,]+\s+LFS", out) and re.search(r"config\.json\s+[\d,]+\s+regular", out)
    assert "not uploaded: ['build_report.json']" in out
    assert 'CrossEncoder("acme/other", trust_remote_code=True)' in out and "pipeline_tag: text-ranking" in out
    assert "Dry run: nothing was uploaded." in out


@pytest.mark.parametrize("argv, message", [
    (["--repo", "not-a-repo-id"], "--repo must look like org/name"),
    (["--repo", REPO, "--tag", "v1 final"], "--tag 'v1 final' is not a valid git ref name"),
    (["--repo", REPO, "--create-pr", "--revision", "dev"], "cannot be combined with --revision"),
    (["--repo", REPO, "--create-pr", "--tag", "v1"], "would tag an unmerged pull request"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["publish", "--folder", "some/folder", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# --- slower paths: branches, mirroring, pull requests, private repos ---


@pytest.mark.slow
def test_branch_mirror_pull_request_and_private_repo(hub, published, release_dir, tmp_path):
    folder = clone(release_dir, tmp_path / "model")
    (folder / "notes").mkdir()
    (folder / "notes" / "release.txt").write_text("release notes\n")  # not a package file: never uploaded
    edit(folder / "README.md", "## Limits", "A staged card.\n\n## Limits")
    home = published.home
    repo = hub.repo(REPO)

    result = run_publish(hub, home, folder, "--repo", REPO, "--revision", "staging")
    assert result.returncode == 0, result.stderr[-3000:]
    staging = repo.commits[repo.branches["staging"]]
    assert staging.parent == published.commit and b"A staged card." in staging.files["README.md"].data
    assert "notes/release.txt" not in staging.files and repo.branches["main"] == published.commit

    put = ("from huggingface_hub import HfApi; HfApi().upload_file(path_or_fileobj=b'old', path_in_repo='old.txt', "
           f"repo_id='{REPO}', revision='staging')")
    assert run(["-c", put], hub_env(hub, home)).returncode == 0
    assert "old.txt" in repo.commits[repo.branches["staging"]].files
    edit(folder / "README.md", "A staged card.", "A changed card.")
    result = run_publish(hub, home, folder, "--repo", REPO, "--revision", "staging")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "old.txt" not in repo.commits[repo.branches["staging"]].files, "the branch mirrors the package files"

    edit(folder / "README.md", "A changed card.", "A proposed card.")
    result = run_publish(hub, home, folder, "--repo", REPO, "--create-pr")
    assert result.returncode == 0, result.stderr[-3000:]
    proposed = repo.commits[repo.pull_requests[1]].files["README.md"].data
    assert repo.branches["main"] == published.commit and b"A proposed card." in proposed
    assert f"Pull request: {hub.url}/{REPO}/discussions/1" in result.stdout

    result = run_publish(hub, home, release_dir, "--repo", "acme/zerank-private", "--private", "--retarget-card")
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.repo("acme/zerank-private").private
    code = "from huggingface_hub import hf_hub_download; hf_hub_download('acme/zerank-private', 'config.json')"
    anonymous = run(["-c", code], hub_env(hub, tmp_path / "anon", token=None))
    assert anonymous.returncode != 0 and "RepositoryNotFoundError" in anonymous.stderr
