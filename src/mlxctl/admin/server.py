"""The controller's admin server: HTTP/1.0 over a Unix socket, in threads of the controller.

Stdlib ``http.server`` on a threading ``UnixStreamServer``, chosen over starlette on
uvicorn because it is the simpler reliable fit here:

- the peer check belongs at connection time, and ``socketserver`` has that hook
  (:meth:`AdminServer.verify_request`, called with the accepted socket before any
  byte is read); with uvicorn it needs a subclass of its protocol class, an internal
  API that has changed between releases;
- the routes block: ``reconcile --once`` and ``down`` wait for the controller's
  passes, an event stream waits for the log. One thread per connection does that
  plainly; in asyncio each would need a worker thread anyway;
- no event loop is run beside the controller's own thread model (a loop in a thread,
  its shutdown, its signal handling), and nothing is imported for it.

The load is a handful of local clients (the CLI, the gateway's report every few
seconds), so a thread per connection costs nothing. HTTP/1.0: one request per
connection, the answer ends when the connection closes (an NDJSON stream too), which
``curl --unix-socket`` and any HTTP client read.

The socket is created by :func:`serving` once the controller holds the state lock,
0600 in a 0700 directory (:mod:`mlxctl.admin.sockdir`), and removed on exit. A socket
file left by a crashed controller is replaced: the lock proves no live controller of
this state directory serves it; a socket that still answers is never taken over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from mlxctl.admin.api import MAX_BODY, ApiError, Response, Route, dispatch
from mlxctl.admin.routes import ROUTES
from mlxctl.admin.sockdir import peer_uid, prepare_dir
from mlxctl.app.control import ControllerPort
from mlxctl.errors import MlxctlError


class AdminServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves :data:`~mlxctl.admin.routes.ROUTES` for one controller, to its own user only."""

    daemon_threads = True  # a stream to a client that went quiet never holds the exit
    block_on_close = False

    def __init__(
        self,
        path: Path,
        ctl: ControllerPort,
        *,
        routes: Sequence[Route] = ROUTES,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.ctl = ctl
        self.routes = tuple(routes)
        self.log = log
        self.closing = threading.Event()
        self.uid = os.getuid()
        self._refused: set[int] = set()
        super().__init__(str(path), _Handler, bind_and_activate=False)
        try:
            self.server_bind()
            os.chmod(path, 0o600)
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Only the controller's own user: any other peer's connection is closed unread."""
        try:
            uid = peer_uid(request)
        except OSError:
            uid = None
        if uid == self.uid:
            return True
        key = uid if uid is not None else -1
        if key not in self._refused:  # said once per uid, not once per connection
            self._refused.add(key)
            self.log(f"admin: refused a connection from uid {uid} (only uid {self.uid} may)")
        return False


class _Handler(BaseHTTPRequestHandler):
    server: AdminServer
    protocol_version = "HTTP/1.0"
    server_version = "mlxctl-admin/1"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the controller's log is for what it does, not for each request."""

    def address_string(self) -> str:
        return "local"  # a Unix socket's peer has no address (http.server would index it)

    def _handle(self) -> None:
        try:
            body = self._body()
            response = dispatch(
                self.server.routes, self.server.ctl, self.command, self.path, body,
                self.server.closing,
            )  # fmt: skip
        except ApiError as exc:
            response = Response(exc.status, exc.body())
        except MlxctlError as exc:
            error = ApiError.of(exc)
            response = Response(error.status, error.body())
        except Exception as exc:  # a bug: answered, logged, the controller goes on
            self.server.log(f"admin: {self.command} {self.path} failed: {exc!r}")
            error = ApiError(500, "internal", f"the controller failed: {exc!r}")
            response = Response(error.status, error.body())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(response)

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if size < 0 or size > MAX_BODY:
            raise ApiError(413, "too_large", f"the body is over {MAX_BODY} bytes")
        return self.rfile.read(size)

    def _send(self, response: Response) -> None:
        if response.stream is None:
            data = json.dumps(response.body).encode() + b"\n"
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(response.status)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.flush()
        for record in response.stream:
            self.wfile.write(json.dumps(record).encode() + b"\n")
            self.wfile.flush()


def _clear_stale(path: Path) -> None:
    """Remove a socket a dead server left; refuse anything else at the path."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise MlxctlError(f"{path} exists and is not a socket: remove it to serve the admin API")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise MlxctlError(f"cannot check {path}: {exc.strerror or exc}") from None
    else:
        raise MlxctlError(f"another process serves {path}: not replaced")
    finally:
        probe.close()
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def serving(
    ctl: ControllerPort, path: Path, *, log: Callable[[str], None] = lambda _line: None
) -> Iterator[AdminServer]:
    """Serve the admin API at ``path`` in a background thread for the block's duration;
    the socket is removed after (unless another server has replaced it meanwhile)."""
    prepare_dir(path)
    _clear_stale(path)
    try:
        server = AdminServer(path, ctl, log=log)
    except OSError as exc:
        raise MlxctlError(f"cannot serve the admin API at {path}: {exc.strerror or exc}") from None
    inode = os.lstat(path).st_ino
    thread = threading.Thread(target=server.serve_forever, name="admin-api", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
        with contextlib.suppress(OSError):
            if os.lstat(path).st_ino == inode:
                path.unlink()
