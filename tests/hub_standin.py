"""A loopback stand-in for the parts of the Hugging Face Hub HTTP API that huggingface_hub uses to push and fetch.

Usage:
    hub = HubStandIn(tmp_path / "hub").start()      # listens on 127.0.0.1:<free port>
    HfApi(endpoint=hub.url) ...  or  HF_ENDPOINT=hub.url in a subprocess's environment
    hub.stop()                                       # the Hub "goes away": connections are refused
    hub.outage = 503                                 # or it answers every request with a server error

What it serves (enough for the real client's create_repo, repo_info, list_repo_tree, get_paths_info, upload_folder,
create_commit, hf_hub_download and snapshot_download):
    POST /api/repos/create                                  name, organization, type, visibility -> 409 if it exists
    GET  /api/{type}s/{repo}[/revision/{rev}]               repo info with the commit sha
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]            ?recursive=  (one page, no Link header)
    POST /api/{type}s/{repo}/paths-info/{rev}               form field paths
    POST /api/{type}s/{repo}/preupload/{rev}                uploadMode "lfs" or "regular" + the remote oid
    POST /[{type}s/]{repo}.git/info/lfs/objects/batch       LFS basic transfer: an upload action per missing object
    PUT  /lfs-objects/{sha256}                              the upload action's target
    POST /api/{type}s/{repo}/commit/{branch}                ndjson: header, file (base64), lfsFile, deletedFile,
                                                            deletedFolder
    POST /api/validate-yaml                                 a dataset card's front matter must be a YAML mapping
    HEAD/GET /[{type}s/]{repo}/resolve/{rev}/{path}          ETag (sha256 for LFS files), X-Repo-Commit, Content-Length

Like the Hub, preupload marks a file "lfs" when .gitattributes routes its extension to LFS (the seeded one does for
.npy and .tar) or when it is 10 MB or more; everything else is "regular" and travels base64 in the commit payload.
The stand-in speaks LFS's basic transfer, not Xet: clients run with HF_HUB_DISABLE_XET=1 (tests/conftest.py sets
it), which makes huggingface_hub use LFS for the files the Hub marks "lfs". An LFS object it already has gets no
upload action, so it is never sent twice.

Why an unchanged re-push makes no commit: preupload returns, per file, the remote oid (git blob sha1, or sha256 for
an LFS file); the client drops every file whose local oid equals it, and an upload left with nothing to commit
returns the current head without calling /commit.

What it counts, for tests of the Hub's limits: `requests` (every request; `resolver_requests()` the /resolve/ ones
the Hub rate-limits), `commit_log` (per commit: its operations), `uploads` (every file whose bytes were received:
regular files in commits and LFS objects), and `max_folder_entries()` / `file_count()` over a repo's history.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# What the real Hub seeds a new repo with (abridged to the extensions this project pushes).
GITATTRIBUTES = b"*.npy filter=lfs diff=lfs merge=lfs -text\n*.tar filter=lfs diff=lfs merge=lfs -text\n"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MB or more in LFS whatever their extension
LFS_PREFIX = "lfs:"  # a commit's file oid for an LFS file: "lfs:<sha256>"
FULL_SHA = re.compile(r"[0-9a-f]{40}")
BLOCK = 1 << 20  # LFS objects are received and files served in blocks of this size, never whole in memory


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob, which is what the Hub calls a regular file's oid (and its ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, str]  # path -> blob oid
    date: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def url_prefix(self) -> str:
        return URL_PREFIXES[self.repo_type]


class HubError(Exception):
    """An error answer: HTTP status, the X-Error-Code the client maps to an exception class, and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit
        self.extra = extra  # more fields for the JSON body


class HubStandIn:
    """An in-process Hub on 127.0.0.1; repos live in memory, file contents in `root/blobs/` (LFS objects are received
    and files served in blocks: a catalogue of a million products passes through without being held in memory)."""

    def __init__(self, root: str | Path | None = None, *, token: str | None = None, port: int = 0):
        """Args:
        root: folder for blobs (a temporary folder when None).
        token: when set, writes need `Authorization: Bearer <token>`; otherwise any bearer token will do.
        port: 0 picks a free port; the port is kept across stop()/start() so HF_ENDPOINT stays valid.
        """
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hub-standin-")
            root = self._tmp.name
        self.blobs = Path(root) / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.port = port
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests to inspect
        self.outage: int | None = None  # set to e.g. 503 to answer every request with that status
        self.commit_log: list[dict] = []  # per commit received: repo, number of operations, added and deleted paths
        self.uploads: list[tuple[str, int]] = []  # (path or "lfs:<sha256>", bytes) of every file content received
        self.downloads: list[tuple[str, int]] = []  # (path, bytes) of every file content sent (a GET of a file)
        # Called with the commit's number (1, 2, ...) before a commit is applied, e.g. to kill a pushing process.
        self.before_commit = None
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubStandIn:
        if self._server is not None:
            return self
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)  # stop() waits for one poll
        self._thread = threading.Thread(target=serve, name="hub-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: from now on every request gets 'connection refused'."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- inspection helpers for tests

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def commit_count(self, repo_id: str, repo_type: str = "dataset") -> int:
        """Commits on the repo, the initial one made by repo creation included."""
        return len(self.repo(repo_id, repo_type).commits)

    def head(self, repo_id: str, repo_type: str = "dataset", branch: str = "main") -> str:
        return self.repo(repo_id, repo_type).branches[branch]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Path -> content of every file at a revision."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            commit = repo.commits[self._resolve(repo, revision)]
            return {path: self._read_blob(oid) for path, oid in commit.files.items()}

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "dataset") -> bytes:
        """One file's content at a revision (files() reads them all)."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            return self._read_blob(repo.commits[self._resolve(repo, revision)].files[path])

    def file_sizes(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, int]:
        """Path -> size in bytes of every file at a revision, read from disk without loading any."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            files = repo.commits[self._resolve(repo, revision)].files
            return {path: (self.blobs / oid.removeprefix(LFS_PREFIX)).stat().st_size for path, oid in files.items()}

    def resolver_requests(self, since: int = 0) -> list[tuple[str, str]]:
        """The requests (from the `since`-th on) the Hub counts against its download rate limit: HEAD and GET on
        /resolve/."""
        return [(method, path) for method, path in self.requests[since:] if "/resolve/" in path]

    def file_count(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> int:
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            return len(repo.commits[self._resolve(repo, revision)].files)

    def max_folder_entries(self, repo_id: str, repo_type: str = "dataset") -> int:
        """The most entries (files and folders) any folder held, over every commit of the repo."""
        most = 0
        with self._lock:
            for commit in self.repo(repo_id, repo_type).commits.values():
                children: dict[str, set[str]] = {}
                for path in commit.files:
                    parts = path.split("/")
                    for depth in range(len(parts)):
                        children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
                most = max([most, *map(len, children.values())])
        return most

    # ---------------------------------------------------------------- state changes

    def _new_commit(self, repo: Repo, branch: str, files: dict[str, str], message: str) -> Commit:
        parent = repo.branches.get(branch)
        seed = json.dumps([repo.repo_type, repo.repo_id, parent, sorted(files.items()), message, next(self._counter)])
        sha = hashlib.sha1(seed.encode()).hexdigest()
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        commit = Commit(sha, parent, message, dict(files), date)
        repo.commits[sha] = commit
        repo.branches[branch] = sha
        return commit

    def _write_blob(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        path = self.blobs / oid
        if not path.exists():
            path.write_bytes(content)
        return oid

    def _read_blob(self, oid: str) -> bytes:
        return (self.blobs / oid.removeprefix(LFS_PREFIX)).read_bytes()

    def _resolve(self, repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if FULL_SHA.fullmatch(revision) and revision in repo.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    server_version = "HubStandIn/1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ---------------------------------------------------------------- plumbing

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.streamed = method == "PUT" and split.path.startswith("/lfs-objects/")  # read by _lfs_put, in blocks
        self.body = self.rfile.read(length) if length and not self.streamed else b""
        self.hub.requests.append((method, split.path))
        raw = [unquote(part) for part in split.path.strip("/").split("/")]
        try:
            if self.hub.outage is not None:
                raise HubError(self.hub.outage, "The Hub is having an outage")
            with self.hub._lock:
                self._route(method, raw)
        except HubError as err:
            self._send_error(err)

    def _route(self, method: str, parts: list[str]) -> None:
        if method == "PUT" and len(parts) == 2 and parts[0] == "lfs-objects":
            return self._lfs_put(parts[1])
        if method == "POST" and parts[-4:] == ["info", "lfs", "objects", "batch"] and parts[-5].endswith(".git"):
            owner_at = 1 if parts[0] in ("datasets", "spaces") else 0
            repo_type = REPO_TYPES[parts[0]] if owner_at else "model"
            return self._lfs_batch(repo_type, f"{parts[owner_at]}/{parts[owner_at + 1].removesuffix('.git')}")
        if parts[:1] == ["api"]:
            if method == "POST" and parts[1:] == ["repos", "create"]:
                return self._create_repo()
            if method == "POST" and parts[1:] == ["validate-yaml"]:
                return self._validate_yaml()
            if len(parts) >= 4 and parts[1] in REPO_TYPES:
                repo_type, repo_id, rest = REPO_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:]
                if method == "GET" and not rest:
                    return self._repo_info(repo_type, repo_id, "main")
                if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                    return self._repo_info(repo_type, repo_id, rest[1])
                if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                    return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]))
                if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                    return self._paths_info(repo_type, repo_id, rest[1])
                if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                    return self._preupload(repo_type, repo_id, rest[1])
                if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                    return self._commit(repo_type, repo_id, rest[1])
        elif method in ("GET", "HEAD"):
            repo_type = "model"
            if parts and parts[0] in ("datasets", "spaces"):
                repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve_file(method, repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubError(404, f"The stand-in does not serve {method} {self.path}")

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            return False
        return self.hub.token is None or auth[len("Bearer ") :].strip() == self.hub.token

    def _require_write(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private and not self._authorized():
            # Like the Hub: to a caller without a valid token, a private repo looks like a missing one.
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _send_json(self, value, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, val in (headers or {}).items():
            self.send_header(key, val)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.commit:
            headers["X-Repo-Commit"] = err.commit
        self._send_json({"error": err.message, **err.extra}, err.status, headers)

    # ---------------------------------------------------------------- endpoints

    def _create_repo(self) -> None:
        self._require_write()
        payload = json.loads(self.body or b"{}")
        name, organization = payload.get("name"), payload.get("organization")
        if not name or not organization:
            raise HubError(400, "The stand-in needs repo ids of the form OWNER/NAME")
        repo_type = payload.get("type") or "model"
        repo_id = f"{organization}/{name}"
        key = (repo_type, repo_id)
        url = f"{self.hub.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if key in self.hub.repos:  # the client reads "url" from this answer too when exist_ok=True
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        repo = Repo(repo_id, repo_type, private=payload.get("visibility") == "private")
        self.hub.repos[key] = repo
        self.hub._new_commit(repo, "main", {".gitattributes": self.hub._write_blob(GITATTRIBUTES)}, "initial commit")
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._get_repo(repo_type, repo_id)
        commit = repo.commits[self.hub._resolve(repo, revision)]
        self._send_json(
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "lastModified": commit.date,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            }
        )

    def _entries(self, commit: Commit) -> dict[str, dict]:
        """Every file and folder of a commit, as the tree / paths-info endpoints describe them."""
        entries: dict[str, dict] = {}
        for path, oid in sorted(commit.files.items()):
            size = (self.hub.blobs / oid.removeprefix(LFS_PREFIX)).stat().st_size
            entries[path] = {"type": "file", "oid": oid, "size": size, "path": path}
            if oid.startswith(LFS_PREFIX):
                sha256 = oid.removeprefix(LFS_PREFIX)
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
                entries[path]["oid"] = git_blob_oid(pointer)
                entries[path]["lfs"] = {"oid": sha256, "size": size, "pointerSize": len(pointer)}
            parts = path.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                tree_oid = hashlib.sha1(f"{commit.sha}:{folder}".encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": tree_oid, "size": 0, "path": folder})
        return entries

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._get_repo(repo_type, repo_id)
        commit = repo.commits[self.hub._resolve(repo, revision)]
        entries = self._entries(commit)
        if path and entries.get(path, {}).get("type") != "directory":
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound", commit.sha)
        recursive = self.query.get("recursive", ["False"])[0].lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        listing = [
            entry
            for name, entry in sorted(entries.items())
            if name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :])
        ]
        self._send_json(listing)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._get_repo(repo_type, repo_id)
        commit = repo.commits[self.hub._resolve(repo, revision)]
        form = parse_qs(self.body.decode())
        entries = self._entries(commit)
        self._send_json([entries[p] for p in form.get("paths", []) if p in entries])

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_write()
        repo = self._get_repo(repo_type, repo_id)
        if "create_pr" in self.query:
            raise HubError(400, "The stand-in does not do pull requests")
        commit = repo.commits[self.hub._resolve(repo, revision)]
        attributes = (
            self.hub._read_blob(commit.files[".gitattributes"]).decode() if ".gitattributes" in commit.files else ""
        )
        lfs_patterns = [line.split()[0] for line in attributes.splitlines() if "filter=lfs" in line]
        answer = []
        for f in json.loads(self.body).get("files", []):
            lfs = f.get("size", 0) >= LFS_THRESHOLD or any(
                fnmatch(f["path"].rsplit("/", 1)[-1], p) for p in lfs_patterns
            )
            oid = commit.files.get(f["path"])
            answer.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid.removeprefix(LFS_PREFIX) if oid else None,
                }
            )
        self._send_json({"files": answer, "commitOid": commit.sha})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_write()
        self._get_repo(repo_type, repo_id)
        objects = []
        for item in json.loads(self.body).get("objects", []):
            answer = {"oid": item["oid"], "size": item["size"]}
            if not (self.hub.blobs / item["oid"]).exists():
                answer["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-objects/{item['oid']}"}}
            objects.append(answer)
        self._send_json({"transfer": "basic", "objects": objects})

    def _lfs_put(self, sha256: str) -> None:
        """The object streamed to a file in blocks (large files stay on disk, never whole in memory), then checked."""
        left = int(self.headers.get("Content-Length") or 0)
        digest, size = hashlib.sha256(), left
        with tempfile.NamedTemporaryFile(dir=self.hub.blobs, delete=False) as out:
            while left:
                block = self.rfile.read(min(left, BLOCK))
                if not block:
                    break
                digest.update(block)
                out.write(block)
                left -= len(block)
        if digest.hexdigest() != sha256 or left:
            Path(out.name).unlink()
            raise HubError(400, "The uploaded content does not match its sha256")
        Path(out.name).replace(self.hub.blobs / sha256)
        self.hub.uploads.append((LFS_PREFIX + sha256, size))
        self._send_json({})

    def _validate_yaml(self) -> None:
        content = json.loads(self.body).get("content", "")
        if content.startswith("---\n"):
            try:
                front = yaml.safe_load(content[4:].split("\n---", 1)[0])
            except yaml.YAMLError as err:
                raise HubError(400, f"Invalid YAML in README.md: {err}") from err
            if not isinstance(front, dict):
                raise HubError(400, "The front matter of README.md must be a YAML mapping")
        self._send_json({"errors": [], "warnings": []})

    def _commit(self, repo_type: str, repo_id: str, branch: str) -> None:
        self._require_write()
        repo = self._get_repo(repo_type, repo_id)
        if "create_pr" in self.query:
            raise HubError(400, "The stand-in does not do pull requests")
        if branch not in repo.branches:
            raise HubError(400, f"Commits go to a branch; {branch!r} is not one", "RevisionNotFound")
        number = len(self.hub.commit_log) + 1
        if self.hub.before_commit is not None:
            self.hub.before_commit(number)
        files = dict(repo.commits[repo.branches[branch]].files)
        header: dict = {}
        log = {"repo": repo_id, "added": [], "deleted": []}
        for line in self.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key != "header":
                log["added" if key in ("file", "lfsFile") else "deleted"].append(value["path"])
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                content = base64.b64decode(value["content"])
                files[value["path"]] = self.hub._write_blob(content)
                self.hub.uploads.append((value["path"], len(content)))
            elif key == "lfsFile":
                if not (self.hub.blobs / value["oid"]).exists():
                    raise HubError(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = LFS_PREFIX + value["oid"]
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"Cannot delete {value['path']}: no such file", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: oid for p, oid in files.items() if not p.startswith(prefix)}
            else:  # anything newer than the stand-in knows
                raise HubError(400, f"The stand-in does not accept {key!r} commit operations")
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.branches[branch]:
            raise HubError(412, f"Parent commit {parent} is not the head of {branch}")
        self.hub.commit_log.append({**log, "operations": len(log["added"]) + len(log["deleted"])})
        commit = self.hub._new_commit(repo, branch, files, header.get("summary", ""))
        self._send_json(
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{self.hub.url}/{repo.url_prefix}{repo_id}/commit/{commit.sha}",
                "pullRequestUrl": None,
            }
        )

    def _resolve_file(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        repo = self._get_repo(repo_type, repo_id)
        commit = repo.commits[self.hub._resolve(repo, revision)]
        oid = commit.files.get(path)
        if oid is None:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound", commit.sha)
        blob = self.hub.blobs / oid.removeprefix(LFS_PREFIX)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(blob.stat().st_size))
        self.send_header("ETag", f'"{oid.removeprefix(LFS_PREFIX)}"')
        self.send_header("X-Repo-Commit", commit.sha)
        self.end_headers()
        if method == "GET":  # in blocks, from disk
            with self.hub._lock:
                self.hub.downloads.append((path, blob.stat().st_size))
            with open(blob, "rb") as source:
                while block := source.read(BLOCK):
                    self.wfile.write(block)


if __name__ == "__main__":  # python tests/hub_standin.py [PORT]: run it by hand, e.g. to try precompute/app against it
    import sys
    import time

    hub = HubStandIn(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(f"HF_ENDPOINT={hub.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
