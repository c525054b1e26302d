"""Tiers reachable only by the gateway: every model server starts through this module.

``python -m mlxctl.runtimes.tier_guard RUNTIME ARGS...`` runs the runtime's own entry
point in this process (no patched copy of either server, no second process), after
keeping its log (:mod:`mlxctl.runtimes.server_log`: rotated by size, safe on a full
disk, with no process beside the server) and setting up the one thing each lacks:

- **vllm-mlx** has ``--api-key`` (every route but ``/health`` and ``/metrics`` then
  wants ``Authorization: Bearer KEY``), but only as a flag, and a command line is
  visible to every user of the machine (``ps``, ``/proc/PID/cmdline``). So the key is
  read here from the file :data:`KEY_FILE_ENV` names (mode 0600, in the state
  directory) and appended to ``sys.argv`` in this process: ``/proc/PID/cmdline``
  keeps the command line the kernel was given, without it. vllm-mlx sends no CORS
  headers at all (no ``CORSMiddleware``), so a browser may not read its answers.
- **mlx_lm.server** has no key, and answers every request, a CORS preflight included,
  with ``Access-Control-Allow-Origin: *`` (its ``--allowed-origins`` defaults to ``*``).
  Its handler class (``mlx_lm.server.APIHandler``, a ``BaseHTTPRequestHandler``) is
  where a server built on ``http.server`` is extended: ``_set_cors_headers`` is
  replaced by one that grants nothing, and ``do_GET``/``do_POST``/``do_OPTIONS`` first
  refuse a request that carries an ``Origin`` (a browser always sends one on a
  cross-origin POST, "simple" ``text/plain`` ones included, which need no preflight
  and which CORS alone would let through blind) and a request without the tier's key
  (``/health`` excepted: it tells nothing and the probes read it first).

The gateway and mlxctl's probes send the key (``Route.key_file``,
``ProbeSpec.key_file``). What no runtime protects is in ``docs/reliability.md``.
"""

from __future__ import annotations

import hmac
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlxctl.machine.clock import SystemClock
from mlxctl.runtimes import server_log

KEY_FILE_ENV = "MLXCTL_TIER_KEY_FILE"
MODULE = "mlxctl.runtimes.tier_guard"
# What a guarded mlx_lm.server answers without asking for a key.
OPEN_PATHS = frozenset({"/health"})
MAX_KEY_BYTES = 4096


def read_key(path: str | os.PathLike[str]) -> str:
    """The key in ``path`` (stripped); an empty string when the file is empty."""
    with open(path, "rb") as f:
        return f.read(MAX_KEY_BYTES).decode("utf-8", "replace").strip()


def bearer(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """The ``Authorization`` header for the tier whose key is in ``path`` (none if unset
    or not written yet)."""
    if not path:
        return {}
    try:
        key = read_key(path)
    except OSError:
        return {}
    return {"Authorization": f"Bearer {key}"} if key else {}


def refusal(handler: Any) -> str | None:
    """Why ``handler``'s request (an ``http.server`` handler) is refused, or None."""
    if handler.headers.get("Origin") is not None:
        return "403 cross-origin requests are refused: this server answers mlxctl's gateway only"
    key: str = handler.guard_key
    if not key or handler.path.split("?", 1)[0] in OPEN_PATHS:
        return None
    sent = handler.headers.get("Authorization", "")
    if hmac.compare_digest(sent.encode(), f"Bearer {key}".encode()):
        return None
    return "401 missing or wrong tier key: this server answers mlxctl's gateway only"


def _guarded(method: Callable[[Any], None]) -> Callable[[Any], None]:
    def run(handler: Any) -> None:
        why = refusal(handler)
        if why is None:
            method(handler)
            return
        status, _, message = why.partition(" ")
        body = ('{"error": "' + message + '"}').encode()
        handler.send_response(int(status))
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True

    return run


def guard_mlx_lm(key: str) -> None:
    """Make ``mlx_lm.server.APIHandler`` grant no CORS and answer only requests with
    ``key`` and without an ``Origin``."""
    from mlx_lm import server

    handler: Any = server.APIHandler
    handler.guard_key = key
    handler._set_cors_headers = lambda self: None
    for name in ("do_GET", "do_POST", "do_OPTIONS"):
        setattr(handler, name, _guarded(getattr(handler, name)))


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("mlx-lm", "vllm-mlx"):
        sys.exit("usage: python -m mlxctl.runtimes.tier_guard mlx-lm|vllm-mlx ARGS...")
    server_log.keep_log(SystemClock())
    runtime, args = argv[0], argv[1:]
    path = os.environ.pop(KEY_FILE_ENV, "")
    key = read_key(Path(path)) if path else ""
    if path and not key:  # fail closed: a tier meant to have a key never serves without
        sys.exit(f"mlxctl tier guard: the key file {path} is empty")
    serve: Callable[[], Any]
    if runtime == "mlx-lm":
        guard_mlx_lm(key)
        from mlx_lm import server

        serve = server.main
        sys.argv = ["mlx_lm.server", *args]
    else:
        import vllm_mlx.cli  # type: ignore[import-untyped]

        serve = vllm_mlx.cli.main
        sys.argv = ["vllm-mlx", *args, *(["--api-key", key] if key else [])]
    sys.exit(serve())  # type: ignore[no-untyped-call,unused-ignore]


if __name__ == "__main__":
    main(sys.argv[1:])
