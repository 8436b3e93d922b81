"""A small in-memory server speaking the Hugging Face Hub's HTTP API, for tests of the real `huggingface_hub` client.

It implements what `huggingface_hub` 2.x sends when it creates a repo, uploads a folder (preupload, git-LFS batch
upload and verify, ndjson commit), tags, branches, lists refs and trees, and downloads files (`/resolve` with the
`X-Repo-Commit`, `ETag` / `X-Linked-Etag` / `X-Linked-Size` headers, ranges and `X-Error-Code` errors). Repos live in
memory: a commit is a full snapshot {path: file}, refs map names to commit ids.

Writes need ``Authorization: Bearer <token>``; reads of public repos do not. A request to a route the server does not
know is answered 501 and recorded in ``HubServer.unknown_requests``, so a test can fail loudly when a new client version
calls an endpoint this server lacks. Every request is recorded in ``HubServer.requests`` as (method, path), and
``HubServer.fail_next`` makes the next matching request fail, as a flaky hub would.

Usage (tests):

    with HubServer(token="hf_test") as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_test", "HF_HOME": tmp}
        ...  # run the client in a subprocess with that environment

Standalone (to rehearse a publish by hand):

    python tests/hub_server.py --port 8765 --token hf_local
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MiB or more with git-LFS
# The .gitattributes the Hub commits when it creates a model repo (its patterns decide which files go to LFS).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
        "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
        "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
        "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def lfs_patterns(gitattributes: bytes | None) -> list[str]:
    if gitattributes is None:
        return []
    return [line.split()[0] for line in gitattributes.decode().splitlines() if "filter=lfs" in line.split()[1:]]


def is_lfs_path(path: str, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path if "/" in p else name, p) for p in patterns)


@dataclass
class File:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        """What the Hub calls the file's oid: the git blob id (of the LFS pointer for LFS files)."""
        return git_blob_sha1(lfs_pointer(self.sha256, len(self.data)) if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, File]
    date: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        if rev in self.branches:
            return self.commits[self.branches[rev]]
        if rev in self.tags:
            return self.commits[self.tags[rev]]
        match = re.fullmatch(r"refs/pr/(\d+)", rev)
        if match and int(match.group(1)) in self.pull_requests:
            return self.commits[self.pull_requests[int(match.group(1))]]
        return self.commits.get(rev)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
    """The Hub's state plus a ThreadingHTTPServer on 127.0.0.1 (port 0 = any free port) serving it from a thread."""

    def __init__(self, token: str = "hf_test_token", user: str = "tester", host: str = "127.0.0.1", port: int = 0):
        self.token, self.user = token, user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.upload_urls: dict[str, tuple[str, int]] = {}  # signature -> (oid, size)
        self.requests: list[tuple[str, str]] = []
        self.unknown_requests: list[tuple[str, str]] = []
        self.injected_failures: list[tuple[str, re.Pattern, int]] = []
        self.lock = threading.RLock()
        self._counter = itertools.count()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail_next(self, method: str, path_pattern: str, status: int = 500) -> None:
        """Answer the next ``method`` request whose path matches ``path_pattern`` with ``status`` (a flaky hub)."""
        with self.lock:
            self.injected_failures.append((method, re.compile(path_pattern), status))

    # --- state helpers (also used by tests to inspect the hub) ---

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        repo = self.repo(repo_id, repo_type)
        return len(repo.commits) if repo else 0

    def new_commit(self, repo: Repo, parent: str | None, title: str, files: dict[str, File]) -> Commit:
        seed = f"{repo.repo_id}\n{parent}\n{title}\n{next(self._counter)}\n{time.time_ns()}"
        listing = "".join(f"{path} {f.oid}\n" for path, f in sorted(files.items()))
        oid = hashlib.sha1((seed + listing).encode()).hexdigest()
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        commit = Commit(oid=oid, parent=parent, title=title, files=files, date=date)
        repo.commits[oid] = commit
        return commit


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet: tests read the recorded requests instead
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # --- plumbing ---

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _dispatch(self, method: str):
        url = urlsplit(self.path)
        body = self._read_body()
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.body = body
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        with self.hub.lock:
            self.hub.requests.append((method, url.path))
        try:
            with self.hub.lock:
                for failure in self.hub.injected_failures:
                    if failure[0] == method and failure[1].search(url.path):
                        self.hub.injected_failures.remove(failure)
                        raise HubError(failure[2], "Injected failure (tests/hub_server.py fail_next)")
            route = self._route(method, segments)
            if route is None:
                with self.hub.lock:
                    self.hub.unknown_requests.append((method, url.path))
                raise HubError(501, f"hub_server.py does not implement {method} {url.path}")
            handler, args = route
            with self.hub.lock:
                handler(*args)
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json(e.status, {"error": e.message}, headers)

    def _route(self, method: str, s: list[str]):
        api_repo = len(s) >= 4 and s[0] == "api" and s[1] in REPO_TYPES
        routes = [
            (method == "GET" and s == ["api", "agent-harnesses"], self.agent_harnesses, ()),
            (method == "GET" and s == ["api", "whoami-v2"], self.whoami, ()),
            (method == "POST" and s == ["api", "repos", "create"], self.create_repo, ()),
            (method == "POST" and s == ["api", "validate-yaml"], self.validate_yaml, ()),
        ]
        if api_repo:
            kind, repo_id, rest = REPO_TYPES[s[1]], f"{s[2]}/{s[3]}", s[4:]
            rev = rest[1] if len(rest) > 1 else None
            routes += [
                (method == "GET" and rest == [], self.repo_info, (kind, repo_id, None)),
                (method == "GET" and len(rest) == 2 and rest[0] == "revision", self.repo_info, (kind, repo_id, rev)),
                (method == "GET" and len(rest) >= 2 and rest[0] == "tree", self.tree,
                 (kind, repo_id, rev, "/".join(rest[2:]))),
                (method == "GET" and rest == ["refs"], self.refs, (kind, repo_id)),
                (method == "POST" and len(rest) == 2 and rest[0] == "preupload", self.preupload,
                 (kind, repo_id, rev)),
                (method == "POST" and len(rest) == 2 and rest[0] == "commit", self.commit,
                 (kind, repo_id, rev)),
                (method == "POST" and len(rest) == 2 and rest[0] == "tag", self.create_tag,
                 (kind, repo_id, rev)),
                (method == "POST" and len(rest) == 2 and rest[0] == "branch", self.create_branch,
                 (kind, repo_id, rev)),
            ]
        # git-LFS: /[{type}s/]{namespace}/{name}.git/info/lfs/objects/{batch,verify}
        prefix_type, t = ("model", s) if not s or s[0] not in REPO_TYPES else (REPO_TYPES[s[0]], s[1:])
        if len(t) == 6 and t[1].endswith(".git") and t[2:5] == ["info", "lfs", "objects"] and method == "POST":
            repo_id = f"{t[0]}/{t[1][:-4]}"
            routes += [
                (t[5] == "batch", self.lfs_batch, (prefix_type, repo_id)),
                (t[5] == "verify", self.lfs_verify, (prefix_type, repo_id)),
            ]
        if method == "PUT" and len(s) == 2 and s[0] == "lfs-upload":
            routes.append((True, self.lfs_upload, (s[1],)))
        # downloads: /[{type}s/]{namespace}/{name}/resolve/{revision}/{path}
        if method in ("GET", "HEAD") and len(t) >= 5 and t[2] == "resolve":
            routes.append((True, self.resolve, (prefix_type, f"{t[0]}/{t[1]}", t[3], "/".join(t[4:]))))
        return next(((handler, args) for ok, handler, args in routes if ok), None)

    # --- auth and lookups ---

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _require_auth(self):
        if not self.headers.get("Authorization"):
            raise HubError(401, "Authorization header is required for this operation")
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, kind: str, repo_id: str) -> Repo:
        repo = self.hub.repo(repo_id, kind)
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404 if self._authorized() else 401, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _branch_for_write(self, repo: Repo, rev: str) -> str:
        if rev not in repo.branches and not re.fullmatch(r"refs/pr/\d+", rev):
            if repo.resolve(rev) is None:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            raise HubError(400, f"Invalid rev id: {rev} is not a branch")
        return rev

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as e:
            raise HubError(400, f"Invalid JSON body: {e}")

    # --- endpoints ---

    def agent_harnesses(self):
        self._json(200, {"standardEnvVars": [], "harnesses": {}})

    def whoami(self):
        self._require_auth()
        self._json(200, {"type": "user", "name": self.hub.user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def create_repo(self):
        self._require_auth()
        payload = self._json_body()
        kind = payload.get("type") or "model"
        name = payload.get("name") or ""
        if not re.fullmatch(r"[\w.-]+", name) or "--" in name or ".." in name:
            raise HubError(400, f"Invalid repo name: {name!r}")
        repo_id = f"{payload.get('organization') or self.hub.user}/{name}"
        prefix = "" if kind == "model" else f"{kind}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if self.hub.repo(repo_id, kind) is not None:
            self._json(409, {"error": "You already created this model repo", "url": url})
            return
        repo = Repo(repo_id=repo_id, repo_type=kind, private=payload.get("visibility") == "private")
        self.hub.repos[(kind, repo_id)] = repo
        first = self.hub.new_commit(
            repo, None, "initial commit", {".gitattributes": File(DEFAULT_GITATTRIBUTES.encode(), lfs=False)}
        )
        repo.branches["main"] = first.oid
        self._json(200, {"url": url, "name": repo_id, "id": first.oid})

    def validate_yaml(self):
        payload = self._json_body()
        content = payload.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        if not match:
            self._json(200, {"warnings": [{"message": "Empty or missing yaml metadata in repo card"}]})
            return
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as e:
            self._json(400, {"errors": [{"message": f"Invalid YAML: {e}"}]})
            return
        errors = []
        if not isinstance(metadata, dict):
            errors.append("Metadata must be a YAML mapping")
        else:
            for key in ("license", "pipeline_tag", "library_name"):
                if key in metadata and not isinstance(metadata[key], str):
                    errors.append(f'"{key}" must be a string')
            if "tags" in metadata and not isinstance(metadata["tags"], list):
                errors.append('"tags" must be an array')
        if errors:
            self._json(400, {"errors": [{"message": m} for m in errors]})
        else:
            self._json(200, {"warnings": []})

    def repo_info(self, kind: str, repo_id: str, rev: str | None):
        repo = self._repo(kind, repo_id)
        commit = self._commit(repo, rev or "main")
        blobs = self.query.get("blobs") in ("True", "true", "1")
        siblings = []
        for path, f in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=len(f.data), blobId=f.oid)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": len(f.data),
                                      "pointerSize": len(lfs_pointer(f.sha256, len(f.data)))}
            siblings.append(sibling)
        info = {"_id": repo_id, "id": repo_id, "private": repo.private, "sha": commit.oid,
                "lastModified": commit.date, "siblings": siblings, "disabled": False, "gated": False}
        card = commit.files.get("README.md")
        match = card and re.match(r"^---\s*\n(.*?)\n---\s*\n", card.data.decode(errors="replace"), re.DOTALL)
        if match:
            data = yaml.safe_load(match.group(1)) or {}
            info.update(cardData=data, tags=data.get("tags", []), pipeline_tag=data.get("pipeline_tag"),
                        library_name=data.get("library_name"))
        if kind == "model":
            info["modelId"] = repo_id
        self._json(200, info)

    def tree(self, kind: str, repo_id: str, rev: str, path: str):
        repo = self._repo(kind, repo_id)
        commit = self._commit(repo, rev)
        recursive = self.query.get("recursive") in ("True", "true", "1")
        prefix = f"{path.strip('/')}/" if path else ""
        if path and path not in commit.files and not any(p.startswith(prefix) for p in commit.files):
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        entries, folders = [], set()
        for file_path, f in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                    "size": 0, "path": folder})
            if len(parts) > 1 and not recursive:
                continue
            entry = {"type": "file", "oid": f.oid, "size": len(f.data), "path": file_path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.data),
                                "pointerSize": len(lfs_pointer(f.sha256, len(f.data)))}
            entries.append(entry)
        self._json(200, entries)

    def refs(self, kind: str, repo_id: str):
        repo = self._repo(kind, repo_id)
        def ref(name, prefix, oid):
            return {"name": name, "ref": f"{prefix}{name}", "targetCommit": oid}
        payload = {
            "branches": [ref(n, "refs/heads/", o) for n, o in sorted(repo.branches.items())],
            "converts": [],
            "tags": [ref(n, "refs/tags/", o) for n, o in sorted(repo.tags.items())],
        }
        if self.query.get("include_prs"):
            payload["pullRequests"] = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o}
                for n, o in sorted(repo.pull_requests.items())
            ]
        self._json(200, payload)

    def preupload(self, kind: str, repo_id: str, rev: str):
        self._require_auth()
        repo = self._repo(kind, repo_id)
        commit = self._commit(repo, rev)
        patterns = lfs_patterns(commit.files[".gitattributes"].data if ".gitattributes" in commit.files else None)
        files = []
        for item in self._json_body().get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            lfs = is_lfs_path(item["path"], patterns) or item["size"] >= LFS_SIZE_THRESHOLD or b"\0" in sample
            entry = {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = commit.files.get(item["path"])
            if existing is not None:
                # The client compares this with its own oid: sha256 for LFS files, git blob sha1 for regular ones.
                entry["oid"] = existing.sha256 if existing.lfs else git_blob_sha1(existing.data)
            files.append(entry)
        self._json(200, {"files": files, "commitOid": commit.oid})

    def lfs_batch(self, kind: str, repo_id: str):
        self._require_auth()
        self._repo(kind, repo_id)
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "hub_server.py supports LFS uploads only (downloads go through /resolve)")
        objects = []
        prefix = "" if kind == "model" else f"{kind}s/"
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs_store:
                signature = secrets.token_hex(16)
                self.hub.upload_urls[signature] = (oid, size)
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-upload/{signature}", "expires_in": 3600},
                    "verify": {"href": f"{self.hub.url}/{prefix}{repo_id}.git/info/lfs/objects/verify",
                               "header": {"Authorization": f"Bearer {self.hub.token}"}},
                }
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def lfs_upload(self, signature: str):
        # Like a presigned S3 url: the signature in the path is the credential, no Authorization header is sent.
        if signature not in self.hub.upload_urls:
            raise HubError(403, "Invalid or expired upload url")
        oid, size = self.hub.upload_urls.pop(signature)
        if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
        self.hub.lfs_store[oid] = self.body
        self._send(200, b"", {"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def lfs_verify(self, kind: str, repo_id: str):
        self._require_auth()
        payload = self._json_body()
        data = self.hub.lfs_store.get(payload.get("oid"))
        if data is None or len(data) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} not found or of the wrong size")
        self._json(200, {"success": True})

    def commit(self, kind: str, repo_id: str, rev: str):
        self._require_auth()
        repo = self._repo(kind, repo_id)
        create_pr = self.query.get("create_pr") == "1"
        branch = self._branch_for_write(repo, rev)
        base = self._commit(repo, branch)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        if not header.get("summary"):
            raise HubError(400, "A commit needs a summary")
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            raise HubError(412, f"A commit has happened since {header['parentCommit']}")
        files = dict(base.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, "file content must be base64")
                files[value["path"]] = File(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = self.hub.lfs_store.get(value["oid"])
                if data is None:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = File(data, lfs=True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = self.hub.new_commit(repo, base.oid, header["summary"], files)
        prefix = "" if kind == "model" else f"{kind}s/"
        pr_url = None
        if create_pr:
            number = max(repo.pull_requests, default=0) + 1
            repo.pull_requests[number] = commit.oid
            pr_url = f"{self.hub.url}/{prefix}{repo_id}/discussions/{number}"
        elif branch in repo.branches:
            repo.branches[branch] = commit.oid
        else:
            repo.pull_requests[int(branch.rsplit("/", 1)[1])] = commit.oid
        self._json(200, {"success": True, "commitOid": commit.oid,
                         "commitUrl": f"{self.hub.url}/{prefix}{repo_id}/commit/{commit.oid}",
                         "pullRequestUrl": pr_url})

    def create_tag(self, kind: str, repo_id: str, rev: str):
        self._require_auth()
        repo = self._repo(kind, repo_id)
        commit = self._commit(repo, rev)
        tag = self._json_body().get("tag")
        if not tag or not re.fullmatch(r"[\w.\-/]+", tag):
            raise HubError(400, f"Invalid tag name: {tag!r}")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = commit.oid
        self._json(200, {})

    def create_branch(self, kind: str, repo_id: str, branch: str):
        self._require_auth()
        repo = self._repo(kind, repo_id)
        start = self._commit(repo, self._json_body().get("startingPoint") or "main")
        if branch in repo.branches:
            raise HubError(409, f"Branch {branch} already exists")
        repo.branches[branch] = start.oid
        self._json(200, {})

    def resolve(self, kind: str, repo_id: str, rev: str, path: str):
        repo = self._repo(kind, repo_id)
        commit = self._commit(repo, rev)
        f = commit.files.get(path)
        if f is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{f.etag}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data))})
        data, status = f.data, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(f.data) - 1
            if start >= len(f.data):
                raise HubError(416, "Requested range not satisfiable",
                               headers={"Content-Range": f"bytes */{len(f.data)}"})
            data, status = f.data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{len(f.data)}"
        self._send(status, data, headers, content_type="application/octet-stream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=8765, help="Port (0 picks a free one).")
    parser.add_argument("--token", default="hf_local_token", help="The one write token this hub accepts.")
    parser.add_argument("--user", default="tester", help="Name of the token's user (default namespace).")
    args = parser.parse_args()
    hub = HubServer(token=args.token, user=args.user, host=args.host, port=args.port)
    print(f"Hub listening on {hub.url} (HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1)", flush=True)
    try:
        hub.httpd.serve_forever()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
