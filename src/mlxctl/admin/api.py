"""The admin API's plumbing: requests, responses, errors and the route table's matcher.

Independent of the HTTP server that carries it (:mod:`mlxctl.admin.server`), so the
routes are tested by calling :func:`dispatch` directly. Errors are always
``{"error": {"code", "message", "exit_code"}}`` (plus ``problems`` for invalid stack
files): ``exit_code`` is what the CLI exits with, so a command run through the
controller fails exactly as it would without one (``docs/exit-codes.md``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from mlxctl.errors import ExitCode, MlxctlError, SpecError

if TYPE_CHECKING:
    from mlxctl.app.control import ControllerPort

# A request body past this is refused (413): a demand report of a few thousand tiers fits.
MAX_BODY = 1024 * 1024

# Exit code -> (HTTP status, error code), for MlxctlErrors raised by the use cases.
STATUS_OF = {
    ExitCode.USAGE: (400, "bad_request"),
    ExitCode.INVALID_SPEC: (422, "invalid_spec"),
    ExitCode.APPLY_FAILED: (500, "apply_failed"),
    ExitCode.HEALTH_TIMEOUT: (504, "timeout"),
    ExitCode.LOCKED: (409, "conflict"),
    ExitCode.NOT_FOUND: (404, "not_found"),
    ExitCode.ADMISSION_REFUSED: (422, "admission_refused"),
    ExitCode.STORAGE: (507, "storage"),
}


class ApiError(Exception):
    """An answer that is an error: an HTTP status, a stable code, one line of message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        exit_code: ExitCode = ExitCode.USAGE,
        problems: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.exit_code = exit_code
        self.problems = tuple(problems)

    @classmethod
    def of(cls, exc: MlxctlError) -> ApiError:
        status, code = STATUS_OF.get(exc.exit_code, (500, "failed"))
        problems = exc.problems if isinstance(exc, SpecError) else ()
        return cls(status, code, str(exc), exit_code=exc.exit_code, problems=problems)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "exit_code": int(self.exit_code),
        }
        if self.problems:
            error["problems"] = list(self.problems)
        return {"error": error}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    params: Mapping[str, str] = field(default_factory=dict)
    # Set when the server shuts down: long answers (an event stream) end.
    closing: threading.Event = field(default_factory=threading.Event)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object ({} when empty); 400 otherwise."""
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        return data

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("1", "true", "yes")

    def number(self, name: str, default: float | None, *, low: float, high: float) -> float | None:
        raw = self.arg(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ApiError(400, "bad_request", f"{name} must be a number") from None
        if not low <= value <= high:
            raise ApiError(400, "bad_request", f"{name} must be between {low:g} and {high:g}")
        return value

    def files(self, body: Mapping[str, Any] | None = None) -> list[Path]:
        """Stack files asked for (``?file=`` or the body's ``files``), absolute paths
        only: the controller's working directory is not the client's."""
        raw: Any = body.get("files", []) if body is not None else self.query.get("file", [])
        if not isinstance(raw, list) or not all(isinstance(f, str) and f for f in raw):
            raise ApiError(400, "bad_request", "files must be a list of paths")
        relative = [f for f in raw if not f.startswith("/")]
        if relative:
            raise ApiError(400, "bad_request", f"files must be absolute paths: {relative[0]}")
        return [Path(f) for f in raw]


@dataclass(frozen=True)
class Response:
    """A JSON answer, or a stream of JSON objects (NDJSON, one per line)."""

    status: int = 200
    body: Any = None
    stream: Iterator[dict[str, Any]] | None = None


Handler = Callable[["ControllerPort", Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str  # /v1/tiers/{tier}/load
    handler: Handler

    def match(self, path: str) -> dict[str, str] | None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.pattern))
        found = re.fullmatch(regex, path)
        return found.groupdict() if found else None


def dispatch(
    routes: Sequence[Route],
    ctl: ControllerPort,
    method: str,
    target: str,
    body: bytes = b"",
    closing: threading.Event | None = None,
) -> Response:
    """Route one request; every failure becomes an error answer, never an exception."""
    url = urlsplit(target)
    allowed = []
    for route in routes:
        params = route.match(url.path)
        if params is None:
            continue
        if route.method != method:
            allowed.append(route.method)
            continue
        request = Request(
            method, url.path, parse_qs(url.query), body, params, closing or threading.Event()
        )
        try:
            return route.handler(ctl, request)
        except ApiError as exc:
            return Response(exc.status, exc.body())
        except MlxctlError as exc:
            error = ApiError.of(exc)
            return Response(error.status, error.body())
    if allowed:
        error = ApiError(
            405, "method_not_allowed", f"{url.path} takes {', '.join(sorted(set(allowed)))}"
        )
    else:
        error = ApiError(404, "no_route", f"no route {method} {url.path} (see docs/admin-api.md)")
    return Response(error.status, error.body())
