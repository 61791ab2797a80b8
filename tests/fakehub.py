"""A loopback fake of the Hugging Face Hub, so the real huggingface_hub client runs end to end offline.

An in-memory store of repos (commits, branches, tags) and LFS objects behind a stdlib
ThreadingHTTPServer on 127.0.0.1 (port 0), serving the endpoints the client calls
(the route table in `FakeHub.handle`). Uploads take the legacy LFS path: the `fake_hub` fixture sets
HF_HUB_DISABLE_XET. Test hooks: `corrupt` (tamper with a stored file), `commit_files` (a commit
by someone else), `before_commit` (run it while a push is under way), `token` (require auth),
`requests` (the log of (method, path) served), `add_repo` (a repo holding files, as another publisher's),
`ranges` (the log of (path, Range header) of ranged downloads), `fail_next` / `cut_next` (the next
download of a path answers an HTTP error / stops after some bytes and drops the connection).

    pytest_plugins = ["fakehub"]        # in a test module, then:

    def test_push(fake_hub):
        HfApi(endpoint=fake_hub.url).create_repo("me/x")
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

LFS_MIN_BYTES = 1024  # the real Hub decides by size and .gitattributes; bigger files (or weights) go to LFS
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API = rf"^/api/(?P<type>model|dataset)s/{_REPO}"
_PREFIXED = rf"^/(?P<prefix>datasets/)?{_REPO}"

Response = tuple[int, dict[str, str], bytes]


class _Refused(Exception):
    """An error response, raised from inside a route."""

    def __init__(self, response: Response) -> None:
        self.response = response


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content (what the Hub reports for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return len(data) > LFS_MIN_BYTES or path.endswith(".safetensors")


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # oid -> {path: content}
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        """The commit a branch, tag or commit oid names, or None."""
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        return rev if rev in self.commits else None


class FakeHub:
    """In-memory Hub state plus the HTTP routes; `start()` serves it on a free loopback port."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token  # when set, requests must send "Authorization: Bearer <token>"
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> uploaded object
        self.requests: list[tuple[str, str]] = []
        self.before_commit: Callable[[], None] | None = None  # runs once, inside the next commit call
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of ranged downloads
        self.fail_next: dict[str, int] = {}  # path -> HTTP status the next GET of it answers
        self.cut_next: dict[str, int] = {}  # path -> bytes the next GET of it sends before dropping the connection
        self.url = ""
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None

    def __str__(self) -> str:
        return self.url

    @staticmethod
    def dead_endpoint() -> str:
        """A loopback URL nothing listens on (a Hub that is down)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    # ---- serving ----------------------------------------------------------------------------

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms each
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _serve(self) -> None:
                status, headers, body = hub.handle(self.command, self.path, dict(self.headers), self._body())
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- test hooks -------------------------------------------------------------------------

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, rev: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a repo at a revision."""
        repo = self.repo(repo_id, repo_type)
        return dict(repo.commits[repo.resolve(rev)])

    def corrupt(self, repo_id: str, path: str, data: bytes | None = None, repo_type: str = "model") -> None:
        """Replace a stored file in every commit that has it (default: flip its first byte), as a
        tampering server or a damaged store would serve it."""
        with self._lock:
            for files in self.repo(repo_id, repo_type).commits.values():
                if path in files:
                    old = files[path]
                    files[path] = data if data is not None else bytes([old[0] ^ 0xFF]) + old[1:]

    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> str:
        """A public repo with `files` on main, made by someone else; returns the commit oid."""
        with self._lock:
            repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private=False)
            return self._commit(repo, "main", {".gitattributes": GITATTRIBUTES, **files})

    def commit_files(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> str:
        """A commit on main by someone else (adds or replaces `files`); returns its oid."""
        with self._lock:
            repo = self.repo(repo_id, repo_type)
            return self._commit(repo, "main", {**repo.commits[repo.branches["main"]], **files})

    # ---- routes -----------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Response:
        url = urlsplit(raw_path)
        path, query = url.path, parse_qs(url.query)
        with self._lock:
            self.requests.append((method, path))
        if self.token is not None and not path.startswith("/lfs/"):
            if headers.get("Authorization", headers.get("authorization")) != f"Bearer {self.token}":
                return _error(
                    401,
                    "Invalid credentials in Authorization header",
                    {"X-Error-Message": "Invalid credentials in Authorization header"},
                )
        routes: list[tuple[str, str, Callable[..., Response]]] = [
            ("POST", r"^/api/repos/create$", self._create_repo),
            ("POST", r"^/api/validate-yaml$", lambda m, b, q: _json({"errors": [], "warnings": []})),
            ("GET", rf"{_API}(?:/revision/(?P<rev>[^/]+))?$", self._repo_info),
            ("POST", rf"{_API}/preupload/(?P<rev>[^/]+)$", self._preupload),
            ("POST", rf"{_API}/commit/(?P<rev>[^/]+)$", self._commit_route),
            ("POST", rf"{_API}/tag/(?P<rev>[^/]+)$", self._create_tag),
            ("DELETE", rf"{_API}/tag/(?P<rev>[^/]+)$", self._delete_tag),
            ("GET", rf"{_API}/refs$", self._refs),
            ("GET", rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", self._tree),
            ("POST", rf"{_PREFIXED}\.git/info/lfs/objects/batch$", self._lfs_batch),
            ("PUT", r"^/lfs/(?P<oid>[0-9a-f]{64})$", self._lfs_upload),
            ("POST", r"^/lfs/(?P<oid>[0-9a-f]{64})/verify$", self._lfs_verify),
            ("HEAD", rf"{_PREFIXED}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", self._resolve),
            ("GET", rf"{_PREFIXED}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", self._resolve),
        ]
        for route_method, pattern, route in routes:
            match = re.match(pattern, path)
            if match and method == route_method:
                try:
                    with self._lock:
                        return route(match, body, {**query, "_headers": headers, "_method": method})
                except _Refused as refused:
                    return refused.response
        return _error(404, f"no route for {method} {path}")

    def _create_repo(self, match: re.Match, body: bytes, query: dict) -> Response:
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"{self.url}/{_prefix(repo_type)}{repo_id}"
        if (repo_type, repo_id) in self.repos:  # the client reads "url" from the 409 too (exist_ok)
            return (
                409,
                {"Content-Type": "application/json"},
                json.dumps({"error": "You already created this repo", "url": url}).encode(),
            )
        repo = self.repos[(repo_type, repo_id)] = Repo(
            repo_type, repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private"))
        )
        self._commit(repo, "main", {".gitattributes": GITATTRIBUTES})
        return _json({"url": url})

    def _find(self, match: re.Match) -> Repo:
        groups = match.groupdict()
        repo_type = groups.get("type") or ("dataset" if groups.get("prefix") else "model")
        repo = self.repos.get((repo_type, match["repo"]))
        if repo is None:
            raise _Refused(_error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"}))
        return repo

    def _at(self, match: re.Match) -> tuple[Repo, str]:
        """The repo and the commit oid of the revision in the route."""
        repo = self._find(match)
        oid = repo.resolve(unquote(match["rev"] or "main") if "rev" in match.groupdict() else "main")
        if oid is None:
            raise _Refused(_error(404, f"Invalid rev id: {match['rev']}", {"X-Error-Code": "RevisionNotFound"}))
        return repo, oid

    def _repo_info(self, match: re.Match, body: bytes, query: dict) -> Response:
        repo, oid = self._at(match)
        return _json(
            {
                "id": repo.repo_id,
                "sha": oid,
                "private": repo.private,
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(repo.commits[oid])],
            }
        )

    def _preupload(self, match: re.Match, body: bytes, query: dict) -> Response:
        repo, oid = self._at(match)
        current = repo.commits[oid]
        files = []
        for f in json.loads(body)["files"]:
            lfs = f["size"] > LFS_MIN_BYTES or f["path"].endswith(".safetensors")
            old = current.get(f["path"])
            old_oid = (
                None
                if old is None
                else (hashlib.sha256(old).hexdigest() if is_lfs(f["path"], old) else git_blob_sha1(old))
            )
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": old_oid}
            )
        return _json({"files": files})

    def _lfs_batch(self, match: re.Match, body: bytes, query: dict) -> Response:
        self._find(match)
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/lfs/{obj['oid']}/verify"},
                }
            objects.append(entry)
        return _json({"transfer": "basic", "objects": objects}, "application/vnd.git-lfs+json")

    def _lfs_upload(self, match: re.Match, body: bytes, query: dict) -> Response:
        if hashlib.sha256(body).hexdigest() != match["oid"]:
            return _error(400, "uploaded bytes do not match the oid")
        self.lfs[match["oid"]] = body
        return 200, {}, b""

    def _lfs_verify(self, match: re.Match, body: bytes, query: dict) -> Response:
        if match["oid"] not in self.lfs:
            return _error(404, "object not uploaded")
        return _json({"success": True})

    def _commit_route(self, match: re.Match, body: bytes, query: dict) -> Response:
        repo, head = self._at(match)
        if self.before_commit is not None:
            hook, self.before_commit = self.before_commit, None
            hook()
            head = repo.branches[unquote(match["rev"])]
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        parent = header.get("parentCommit")
        if parent is not None and parent != head:
            return _error(412, f"A commit has happened since {parent}: the branch head is now {head}")
        files = dict(repo.commits[head])
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return _error(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = self.lfs[value["oid"]]
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(folder)}
        oid = self._commit(repo, unquote(match["rev"]), files)
        return _json(
            {
                "commitUrl": f"{self.url}/{_prefix(repo.repo_type)}{repo.repo_id}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": None,
            }
        )

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes]) -> str:
        oid = hashlib.sha1(f"{repo.repo_id}:{next(self._ids)}".encode()).hexdigest()
        repo.commits[oid] = files
        repo.branches[branch] = oid
        return oid

    def _create_tag(self, match: re.Match, body: bytes, query: dict) -> Response:
        repo, oid = self._at(match)
        tag = json.loads(body)["tag"]
        if tag in repo.tags:
            return _error(409, f"Tag {tag} already exists")
        repo.tags[tag] = oid
        return _json({})

    def _delete_tag(self, match: re.Match, body: bytes, query: dict) -> Response:
        repo = self._find(match)
        if repo.tags.pop(unquote(match["rev"]), None) is None:
            return _error(404, "tag not found", {"X-Error-Code": "RevisionNotFound"})
        return _json({})

    def _refs(self, match: re.Match, body: bytes, query: dict) -> Response:
        repo = self._find(match)
        return _json(
            {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()
                ],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()],
                "converts": [],
                "pullRequests": [],
            }
        )

    def _tree(self, match: re.Match, body: bytes, query: dict) -> Response:
        repo, oid = self._at(match)
        base = unquote(match["path"] or "").strip("/")
        prefix = base + "/" if base else ""
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries: dict[str, dict] = {}
        for path, data in sorted(repo.commits[oid].items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40, "size": 0})
            if recursive or len(parts) == 1:
                entries[path] = _file_entry(path, data)
        if base and not entries:
            return _error(404, f"{base} not found", {"X-Error-Code": "EntryNotFound"})
        return _json(list(entries.values()))

    def _resolve(self, match: re.Match, body: bytes, query: dict) -> Response:
        repo, oid = self._at(match)
        path = unquote(match["path"])
        data = repo.commits[oid].get(path)
        if data is None:
            return _error(404, f"{path} not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid})
        entry = _file_entry(path, data)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if "lfs" in entry:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        asked = query["_headers"].get("Range", query["_headers"].get("range", ""))
        if asked:
            self.ranges.append((path, asked))
        if query["_method"] == "GET" and path in self.fail_next:
            status = self.fail_next.pop(path)
            return _error(status, f"refused for the test ({status})", {"X-Repo-Commit": oid})
        byte_range = re.fullmatch(r"bytes=(\d+)-(\d*)", asked)
        status, start, end = 200, 0, len(data) - 1
        if byte_range:
            start = int(byte_range[1])
            end = int(byte_range[2]) if byte_range[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status = 206
        body = data[start : end + 1]
        if query["_method"] == "GET" and path in self.cut_next:  # promise the whole body, send part, hang up
            headers.update({"Content-Length": str(len(body)), "Connection": "close"})
            body = body[: self.cut_next.pop(path)]
        return status, headers, body


def _file_entry(path: str, data: bytes) -> dict:
    entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    if is_lfs(path, data):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _prefix(repo_type: str) -> str:
    return "datasets/" if repo_type == "dataset" else ""


def _json(doc: Any, content_type: str = "application/json") -> Response:
    return 200, {"Content-Type": content_type}, json.dumps(doc).encode()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps({"error": message}).encode()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A running FakeHub; the client is set up for it (LFS uploads, a dummy token, no progress bars)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # hf_xet would upload to a Xet CAS server
    for key, value in {
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "hf_fake_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_ENDPOINT", "PWMCTL_HUB_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # the env switch is read at import time
    hub = FakeHub()
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()
        if not bars_were_off:
            enable_progress_bars()
