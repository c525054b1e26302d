"""What every runtime adapter provides, and the pieces they share.

A runtime adapter (one file per runtime in this folder, listed in
:mod:`mlxctl.runtimes.registry`) knows three things about its server: the command
line that serves one model on loopback, the model name a client sends it, and the
HTTP check that proves it really serves (``ready``) or still answers (``live``).
Everything here is data and pure functions; the HTTP calls themselves are made by
:mod:`mlxctl.machine.probes`, which hands a check an :class:`Http` to call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

HOST = "127.0.0.1"
ProbeMode = Literal["ready", "live"]
# A value of a tier's ``args`` (rendered by :func:`render_args`).
ArgValue = str | int | float | bool | None


@dataclass(frozen=True)
class ProbeSpec:
    """Where and how to check one service: ``kind`` names its runtime adapter."""

    kind: str
    port: int
    model: str = ""
    host: str = HOST
    # The process that must be the one answering (0: any). Two gateways share a port
    # while one replaces the other; an answer from the other one proves nothing.
    pid: int = 0
    # The file of the tier's own key (a path, no secret): sent as its bearer key.
    key_file: str = ""


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str = ""
    # The server answered, and its answer means it will never become ready.
    fatal: bool = False
    # The server runs but can no longer generate, and a request did that to it (mlx-lm's
    # "generation thread died"): replace it at once, without counting a crash.
    poisoned: bool = False
    # The process that answered, when the server says (the gateway does).
    pid: int | None = None
    # It answered no completion, only "busy" (or nothing in time): fine now, but a
    # server busy for longer than its liveness budget answers nobody (monitor).
    busy: bool = False


class Http(Protocol):
    """One HTTP request to the service under check: ``(status, body)``.

    ``timeout`` (seconds) shortens the probe's own timeout for this request; a request
    that runs out of time raises :class:`TimeoutError`, any other failure ``OSError``.
    """

    def __call__(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[int, bytes]: ...


# How long a liveness check waits for its 1-token completion. Only an *answer* counts
# against a server: a completion still running after this long is queued behind a
# generation (busy), never a failure; a hung server is caught by its /health timing out.
COMPLETION_WAIT = 2.0
COMPLETION_PROMPT = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


def generates(http: Http, model: str) -> tuple[int | None, bytes]:
    """Ask for a 1-token completion: ``(status, body)``, or ``(None, b"")`` when the server
    was still busy with it after :data:`COMPLETION_WAIT` seconds."""
    try:
        return http(
            "POST",
            "/v1/chat/completions",
            {"model": model, **COMPLETION_PROMPT},
            timeout=COMPLETION_WAIT,
        )
    except TimeoutError:
        return None, b""


def excerpt(raw: bytes, limit: int = 300) -> str:
    """The start of an answer's body, on one line (it ends up in events and statuses)."""
    return " ".join(raw[:limit].decode(errors="replace").split())


@dataclass(frozen=True)
class ServerLaunch:
    """What a model server's command line is made of."""

    python: Path
    model_dir: Path
    port: int
    served_name: str
    args: Mapping[str, ArgValue]


@dataclass(frozen=True)
class Runtime:
    """One runtime adapter."""

    name: str
    # Seconds a server of this runtime may take to become ready (a stack may override).
    startup_timeout: float
    # The request model name that reaches this tier's model ("default_model", the tier name...).
    served_model_name: Callable[[str], str]
    # The readiness or liveness check, given an HTTP caller bound to the service.
    check: Callable[[Http, ProbeMode, str], ProbeResult]
    # The full command line (model servers only; the gateway renders its own).
    argv: Callable[[ServerLaunch], tuple[str, ...]] | None = None
    # The server flag that enforces each tier limit the memory estimate assumes
    # ("context": tokens of KV cache per sequence, "concurrency": sequences at once).
    # A limit missing here is estimated but not enforced, and ``diff`` says so.
    limit_flags: Mapping[str, str] = field(default_factory=dict)
    # Flags (without dashes) whose value mlxctl decides: a tier's ``args`` may not set
    # them, nor any prefix of them (argparse takes an unambiguous prefix as the flag),
    # or the server would listen, serve or authenticate other than the stack says.
    managed_flags: frozenset[str] = frozenset()
    # Started through :mod:`mlxctl.runtimes.tier_guard` with a key of its own: the
    # gateway and the probes send it, nothing else has it.
    guarded: bool = False


def managed_flag_for(key: str, managed: frozenset[str]) -> str | None:
    """The managed flag ``key`` names, abbreviates or embeds (``host=0.0.0.0``), if any.

    argparse accepts ``--ho`` for ``--host`` (``allow_abbrev`` is on in both servers'
    parsers) and ``--host=X`` as ``--host X``; the last occurrence wins, and mlxctl's
    own flags come first, so any of these forms would silently override them.
    """
    name = key.split("=", 1)[0]
    if not name:
        return None
    return next((flag for flag in sorted(managed) if flag.startswith(name)), None)


def render_args(args: Mapping[str, ArgValue]) -> list[str]:
    """Turn ``{max-tokens: 4096, trust-remote-code: true}`` into command-line flags.

    ``true`` is a bare flag; ``false`` and ``null`` leave the flag out. Flags are sorted
    so that reordering keys in the file renders the same command line (no restart).
    """
    out: list[str] = []
    for key, value in sorted(args.items()):
        if value is None or value is False:
            continue
        out.append(f"--{key}")
        if value is not True:
            out.append(str(value))
    return out
