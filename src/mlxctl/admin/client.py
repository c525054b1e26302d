"""The CLI's admin client: is a controller running, and ask it.

Light on purpose: ``mlxctl status`` with a controller running is this module, one
request and a print, so it imports only ``socket`` and ``json`` (``http.client``
alone costs ~35 ms here, a quarter of the budget of a whole ``status``). The server
speaks HTTP/1.0 (one request per connection, the answer ends at close), which needs
no more than a request line, a few headers, and reading to the end.

:func:`connect` says whether a controller serves this state directory: no socket, or
a socket nobody accepts on (a crashed controller's), means none, and the CLI works on
the state directory itself. An error answer becomes the MlxctlError (message, exit
code) the same command raises without a controller.
"""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlxctl.errors import ExitCode, MlxctlError, SpecError
from mlxctl.paths import Paths

# Seconds a quick request (status, events, ps) may take: a controller that answers
# nothing within this is wedged, and the command says so rather than hanging.
QUICK = 60.0


class AdminClient:
    def __init__(self, path: Path, sock: socket.socket | None = None) -> None:
        self.path = path
        self._sock = sock  # the connection :func:`connect` made, used by the first request

    def _connection(self, timeout: float | None) -> socket.socket:
        sock, self._sock = self._sock, None
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                sock.close()
                raise self._lost(exc) from None
        sock.settimeout(timeout)
        return sock

    def _lost(self, exc: BaseException) -> MlxctlError:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or "closed"
        if isinstance(exc, TimeoutError | socket.timeout):
            why = "no answer in time"
        return MlxctlError(f"lost the controller at {self.path}: {why}")

    def _send(self, method: str, target: str, body: Any, timeout: float | None) -> socket.socket:
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {target} HTTP/1.0\r\nHost: mlxctl\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        sock = self._connection(timeout)
        try:
            sock.sendall(head.encode() + b"\r\n" + data)
        except OSError as exc:
            sock.close()
            raise self._lost(exc) from None
        return sock

    def call(
        self, method: str, target: str, body: Any = None, *, timeout: float | None = QUICK
    ) -> Any:
        """One request; the decoded JSON answer, or the error it carries raised."""
        sock = self._send(method, target, body, timeout)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError as exc:
            raise self._lost(exc) from None
        finally:
            sock.close()
        status, payload = _split(b"".join(chunks), self.path)
        try:
            answer = json.loads(payload)
        except ValueError:
            raise MlxctlError(
                f"the controller at {self.path} answered {status} without JSON"
            ) from None
        if status >= 400:
            raise _error(answer, status)
        return answer

    def stream(self, target: str) -> Generator[Any, None, None]:
        """A streamed answer (NDJSON), one decoded object per line, until it closes."""
        sock = self._send("GET", target, None, None)
        try:
            reader = sock.makefile("rb")
            status_line = reader.readline()
            while reader.readline() not in (b"\r\n", b"\n", b""):
                pass
            status = _status(status_line, self.path)
            if status >= 400:
                raise _error(json.loads(reader.read() or b"{}"), status)
            for line in reader:
                if line.strip():
                    yield json.loads(line)
        except OSError as exc:
            raise self._lost(exc) from None
        finally:
            sock.close()


def _status(line: bytes, path: Path) -> int:
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise MlxctlError(f"the controller at {path} did not answer HTTP")
    return int(parts[1])


def _split(raw: bytes, path: Path) -> tuple[int, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise MlxctlError(f"lost the controller at {path}: the answer was cut")
    return _status(head.split(b"\r\n", 1)[0], path), body


def _error(answer: Any, status: int) -> MlxctlError:
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return MlxctlError(f"the controller answered {status}")
    message = str(error.get("message") or f"the controller answered {status}")
    problems = error.get("problems")
    if isinstance(problems, list) and problems:
        return SpecError([str(p) for p in problems])
    try:
        code = ExitCode(int(error.get("exit_code", ExitCode.APPLY_FAILED)))
    except (TypeError, ValueError):
        code = ExitCode.APPLY_FAILED
    return MlxctlError(message, exit_code=code)


def connect(paths: Paths) -> AdminClient | None:
    """A client of the controller serving ``paths``' state directory, or None when no
    controller runs (no socket, or a stale one nobody accepts on)."""
    from mlxctl.admin.sockdir import check_socket

    path = paths.admin_socket
    try:
        check_socket(path)
    except FileNotFoundError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return None
        raise MlxctlError(f"cannot reach the controller at {path}: {exc.strerror or exc}") from None
    return AdminClient(path, sock)


def query(**params: Any) -> str:
    """``?a=1&file=/x&file=/y`` from keyword arguments (lists repeat; None is left out)."""
    parts = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v is None or v is False:
                continue
            parts.append(f"{key}={quote(str(1 if v is True else v), safe='')}")
    return ("?" + "&".join(parts)) if parts else ""
