"""A small Hugging Face hub on 127.0.0.1 (or a given address), serving repositories the
tests build.

The real hub is unreachable from the machines that run the tests, and the point of
the tests is to run the *real* huggingface_hub client: so this serves the routes the
client asks for (``shared/reference/hf-hub-protocol.md``, checked against the
installed client's source) and nothing else:

- ``GET /api/models/{repo}[/revision/{rev}]``: ``id``, ``sha``, ``siblings``;
- ``GET /api/models/{repo}/tree/{rev}``: the recursive file listing with git blob
  oids and LFS sha256/size;
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` /
  ``X-Linked-Etag`` (sha256 for LFS files, the git blob sha1 otherwise),
  ``X-Linked-Size``, ``Range`` requests answered with 206;
- errors through ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``, ``GatedRepo``), as the client maps them.

Faults a test can inject: cut a file's next download after N bytes (the client
resumes with ``Range``), refuse everything (an outage), gate a repo behind a token.
Lies a test can tell, as a hostile hub or mirror would: extra tree entries (paths such
as ``../../x`` or ``/abs``, any size or digest), a commit ``sha`` that is not 40 hex,
an ``X-Repo-Commit`` other than the one asked for, an ``ETag`` that is a path (the
client names the blob after it), a body longer than the listed size
or one that never ends (``ENDLESS``, capped so a test of the old code still ends).
Every request is logged (``requests``) so a test can assert what was fetched. Used by
tests and benchmarks; the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# The body of an "endless" file: far past any pin, bounded so that a client that never
# stops reading still finishes.
ENDLESS = 64 * 1024 * 1024
# Files the hub stores in LFS (everything big or binary, as a model repo's .gitattributes does).
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pth", ".npz", ".model")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the hub reports as ``oid`` for every file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    path: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_sha1(self.data)

    def tree_entry(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "type": "file",
            "path": self.path,
            "size": len(self.data),
            "oid": git_blob_sha1(self.data),
        }
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return entry


@dataclass
class HubRepo:
    repo_id: str
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    # A gated repo's files need ``Authorization: Bearer <token>``.
    token: str | None = None

    def resolve(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


@dataclass
class LoggedRequest:
    method: str
    path: str
    range: str | None
    authorized: bool


class LocalHub:
    """The hub's state and its HTTP server (``start``/``stop``, or ``with``)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        # The address it listens on: loopback, or (tests of several machines) an address
        # of a network namespace, bound from a thread inside it.
        self.host = host
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[LoggedRequest] = []
        # path -> bytes after which the next GET of that file is cut off.
        self.cut_after: dict[str, int] = {}
        # When set, every request is answered 503 (the hub is down).
        self.down = False
        # When set, file bodies are sent at about this many bytes per second (a slow link).
        self.rate: int | None = None
        # Lies. repo id -> raw entries appended to its tree listing.
        self.extra_tree: dict[str, list[dict[str, object]]] = {}
        # The ``sha`` /api/models answers (the tree and files still serve the real commit).
        self.fake_sha: str | None = None
        # The ``X-Repo-Commit`` of every file answer (HEAD and GET).
        self.fake_repo_commit: str | None = None
        # The ``ETag`` / ``X-Linked-Etag`` of every file answer (huggingface_hub names the
        # blob after it).
        self.fake_etag: str | None = None
        # The fake commit and ETag are told only after this many file HEADs were answered
        # truthfully (a hub that changes its answer between a check and the download).
        self.truthful_heads = 0
        # path -> bytes sent past the file's real end on GET (no Content-Length: the
        # body ends when the connection closes); ``ENDLESS`` for a body that never ends.
        self.overrun: dict[str, int] = {}
        # path -> body bytes actually written to clients (what a bound must cap).
        self.sent: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- building repositories ---------------------------------------------------

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | Path],
        *,
        branch: str = "main",
        tags: tuple[str, ...] = (),
    ) -> str:
        """Add a commit holding exactly ``files`` on ``branch``; return its 40-hex sha.

        A value is the file's bytes, text, or a local file to read.
        """
        repo = self.repos.setdefault(repo_id, HubRepo(repo_id))
        stored: dict[str, HubFile] = {}
        for path, value in files.items():
            if isinstance(value, Path):
                data = value.read_bytes()
            elif isinstance(value, str):
                data = value.encode()
            else:
                data = value
            stored[path] = HubFile(path, data)
        parent = repo.refs.get(branch, "")
        digest = hashlib.sha1(parent.encode())
        for path in sorted(stored):
            digest.update(f"{path}\0{stored[path].etag}\n".encode())
        sha = digest.hexdigest()
        with self._lock:
            repo.commits[sha] = stored
            repo.refs[branch] = sha
            for tag in tags:
                repo.refs[tag] = sha
        return sha

    def commit_dir(self, repo_id: str, directory: Path, **kwargs: object) -> str:
        """Commit every file under ``directory`` (a model directory) to ``repo_id``."""
        files: dict[str, bytes | str | Path] = {
            str(p.relative_to(directory)): p
            for p in sorted(directory.rglob("*"))
            if p.is_file() and not p.name.startswith(".")
        }
        return self.commit(repo_id, files, **kwargs)  # type: ignore[arg-type]

    def gate(self, repo_id: str, token: str) -> None:
        self.repos[repo_id].token = token

    # -- serving -----------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "the hub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def downloads(self, path: str | None = None) -> list[LoggedRequest]:
        """The file GETs served so far (of ``path`` only, when given)."""
        return [
            r
            for r in self.requests
            if r.method == "GET"
            and "/resolve/" in r.path
            and (path is None or r.path.endswith("/" + path))
        ]


@contextmanager
def local_hub() -> Iterator[LocalHub]:
    hub = LocalHub().start()
    try:
        yield hub
    finally:
        hub.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the request log is ``hub.requests``."""

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- routing -------------------------------------------------------------------

    def _route(self, *, head: bool) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        with hub._lock:
            hub.requests.append(
                LoggedRequest(self.command, split.path, self.headers.get("Range"), bool(token))
            )
        if hub.down:
            self._error(503, "", "the hub is down")
            return
        if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
            self._api(parts[2] + "/" + parts[3], parts[4:])
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]), token, head)
        else:
            self._error(404, "", "no such route")

    def _repo(self, repo_id: str) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _api(self, repo_id: str, rest: list[str]) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        revision = "main"
        if rest[:1] in (["revision"], ["tree"]) and len(rest) >= 2:
            revision = rest[1]
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        files = repo.commits[sha]
        if rest[:1] == ["tree"]:
            prefix = "/".join(rest[2:])
            extra = self.hub.extra_tree.get(repo_id, [])
            entries: list[dict[str, object]] = []
            dirs: set[str] = set()
            for path in sorted(files):
                if prefix and not path.startswith(prefix + "/"):
                    continue
                parent = path.rpartition("/")[0]
                while parent and parent != prefix and parent not in dirs:
                    dirs.add(parent)
                    entries.append({"type": "directory", "path": parent, "oid": "0" * 40})
                    parent = parent.rpartition("/")[0]
                entries.append(files[path].tree_entry())
            self._json(entries + extra)
            return
        siblings = [
            {
                "rfilename": f.path,
                "size": len(f.data),
                "blobId": git_blob_sha1(f.data),
                **(
                    {"lfs": {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}}
                    if f.lfs
                    else {}
                ),
            }
            for f in files.values()
        ]
        gated = "auto" if repo.token else False
        shown = self.hub.fake_sha if self.hub.fake_sha is not None else sha
        self._json({"id": repo_id, "sha": shown, "siblings": siblings, "gated": gated})

    def _resolve(self, repo_id: str, revision: str, path: str, token: str, head: bool) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if repo.token is not None and token != repo.token:
            self._error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
            return
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        file = repo.commits[sha].get(path)
        if file is None:
            self._error(404, "EntryNotFound", f"{path} does not exist", commit=sha)
            return
        data = file.data
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and not head:
            start = int(ranged.removeprefix("bytes=").split("-", 1)[0] or 0)
            if start >= len(data):
                self._error(416, "", "range not satisfiable")
                return
        body = data[start:]
        overrun = None if head else self.hub.overrun.get(path)
        if overrun is not None:
            self._overrun(file, sha, body, overrun)
            return
        lie = True
        if head:
            with self.hub._lock:
                lie = self.hub.truthful_heads <= 0
                self.hub.truthful_heads -= 1
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", (self.hub.fake_repo_commit if lie else None) or sha)
        etag = (self.hub.fake_etag if lie else None) or file.etag
        self.send_header("ETag", f'"{etag}"')
        if file.lfs:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        with self.hub._lock:
            self.hub.sent[path] = self.hub.sent.get(path, 0) + len(body)
        cut = self.hub.cut_after.pop(path, None)
        if cut is not None and cut < len(body):
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        rate = self.hub.rate
        if rate is None:
            self.wfile.write(body)
            return
        step = max(rate // 10, 1)
        for offset in range(0, len(body), step):
            self.wfile.write(body[offset : offset + step])
            self.wfile.flush()
            time.sleep(0.1)  # a slow link, for tests of what happens during a pull

    def _overrun(self, file: HubFile, sha: str, body: bytes, extra: int) -> None:
        """The file's bytes and ``extra`` more, with no length: ends when it is closed."""
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.hub.fake_repo_commit or sha)
        self.send_header("ETag", f'"{file.etag}"')
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        chunk = b"\0" * (256 * 1024)
        remaining = len(body) + extra
        pending = body
        try:
            while remaining > 0:
                piece = (pending or chunk)[: min(remaining, len(chunk))]
                pending = pending[len(piece) :] if pending else b""
                self.wfile.write(piece)
                remaining -= len(piece)
                with self.hub._lock:
                    self.hub.sent[file.path] = self.hub.sent.get(file.path, 0) + len(piece)
        except OSError:
            return  # the client stopped reading

    # -- responses -------------------------------------------------------------------

    def _json(self, value: object) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, *, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
