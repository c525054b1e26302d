"""Use cases around running services: events, logs and the gateway's key.

Functions return values and never print (see :mod:`mlxctl.app.stacks`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args

from mlxctl.apply.events import Event, read_events
from mlxctl.desired.resolve import master_key_ref
from mlxctl.desired.state import GATEWAY
from mlxctl.errors import ExitCode, MlxctlError, NotFoundError, echo
from mlxctl.machine.logfiles import tail
from mlxctl.machine.record import EXIT_KINDS
from mlxctl.paths import Paths
from mlxctl.plan.actions import ActionKind
from mlxctl.spec import secrets
from mlxctl.spec.schema import NAME_PATTERN
from mlxctl.spec.stack_set import StackSet


def events(paths: Paths, limit: int | None = 50) -> list[Event]:
    """The most recent events, oldest first."""
    return read_events(paths.events, limit)


# What ``--kind`` takes: an action (what mlxctl did), ``exit`` (a death the poller
# noticed), or why a server died (a class of mlxctl.observe.exit_cause, or its word).
EVENT_KINDS = (*get_args(ActionKind), "exit")
EXIT_WORDS = ("out-of-memory", "port-in-use", "bad-model")


@dataclass(frozen=True)
class EventFilter:
    """``events --tier NAME --kind KIND`` (each repeatable; empty: all)."""

    tiers: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in self.tiers:
            if name != GATEWAY and not re.fullmatch(NAME_PATTERN, name):
                raise MlxctlError(f"{echo(name)} is not a tier name", exit_code=ExitCode.USAGE)
        known = (*EVENT_KINDS, *EXIT_KINDS, *EXIT_WORDS)
        for kind in self.kinds:
            if kind not in known and not re.fullmatch(r"SIG[A-Z0-9]{2,10}", kind):
                raise MlxctlError(
                    f"unknown event kind {echo(kind)}: one of {', '.join(known)}, or a "
                    "signal's name (SIGKILL, SIGSEGV, ...)",
                    exit_code=ExitCode.USAGE,
                )

    def matches(self, record: Mapping[str, Any]) -> bool:
        target = str(record.get("target", ""))
        if self.tiers and not any(target == t or target.startswith(f"{t}~") for t in self.tiers):
            return False
        if not self.kinds:
            return True
        cause = record.get("exit_cause")
        names = {record.get("kind")}
        if isinstance(cause, Mapping):
            names |= {cause.get("kind"), cause.get("word"), cause.get("signal")}
        return bool(names & set(self.kinds))


def event_records(
    paths: Paths,
    tail: int,
    only: EventFilter,
    *,
    follow: bool = False,
    stop: threading.Event | None = None,
) -> Iterator[dict[str, Any]]:
    """The last ``tail`` events ``only`` lets through (JSON records, oldest first); with
    ``follow``, then each new one as it is written, until ``stop`` is set. The one
    function behind ``mlxctl events`` with or without a controller."""
    offset = events_size(paths)
    found: list[dict[str, Any]] = []
    if tail > 0:
        # Filtered before the tail is taken: the last 50 crashes, not the crashes among
        # the last 50 events.
        every = events(paths, None) if only.tiers or only.kinds else events(paths, tail)
        found = [r for r in (e.to_json() for e in every) if only.matches(r)][-tail:]
    yield from found
    if follow:
        for record in follow_events(paths, offset, stop or threading.Event()):
            if only.matches(record):
                yield record


# Seconds between two looks at the event log while following it.
FOLLOW_POLL = 0.2


def events_size(paths: Paths) -> int:
    """Where the event log ends now: following from here misses nothing after a tail."""
    try:
        return paths.events.stat().st_size
    except OSError:
        return 0


def follow_events(paths: Paths, offset: int, stop: threading.Event) -> Iterator[dict[str, Any]]:
    """Each event appended to the log from ``offset`` on (JSON records), as it comes,
    reopening the log when it is rotated, until ``stop`` is set (or the consumer stops
    iterating). Unreadable lines (a torn write) are skipped."""
    path = paths.events
    handle = None
    inode = None
    pending = b""
    try:
        while not stop.is_set():
            if handle is None:
                try:
                    handle = open(path, "rb")  # noqa: SIM115 - reopened on rotation
                except FileNotFoundError:
                    stop.wait(FOLLOW_POLL)
                    offset = 0
                    continue
                info = os.fstat(handle.fileno())
                inode = info.st_ino
                handle.seek(offset if offset <= info.st_size else 0)
            chunk = handle.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if isinstance(record, dict):
                            yield record
                continue
            try:
                rotated = os.stat(path).st_ino != inode
            except FileNotFoundError:
                rotated = True
            if rotated:
                handle.close()
                handle, offset, pending = None, 0, b""
                continue
            stop.wait(FOLLOW_POLL)
    finally:
        if handle is not None:
            handle.close()


def event_of(record: Mapping[str, Any]) -> Event | None:
    """An event from its JSON record (as :meth:`Event.to_json` wrote it), or None."""
    names = {f.name for f in fields(Event)}
    try:
        return Event(**{k: v for k, v in record.items() if k in names})
    except TypeError:
        return None


def log_file(paths: Paths, name: str) -> Path:
    """The log of service ``name``; NotFoundError naming the known ones otherwise.

    A service name, nothing else: never a path (``../../x``) to some other ``*.log``.
    """
    if name != GATEWAY and not re.fullmatch(NAME_PATTERN, name):
        raise MlxctlError(
            f"{echo(name)} is not a service name: a tier name (lower-case letters, digits "
            "and '-') or 'gateway'",
            exit_code=ExitCode.USAGE,
        )
    log = paths.logs / f"{name}.log"
    if not log.is_file():
        known = sorted(p.stem for p in paths.logs.glob("*.log")) if paths.logs.exists() else []
        hint = f" (known: {', '.join(known)})" if known else ""
        raise NotFoundError(f"no log for '{name}'{hint}")
    return log


def log_tail(paths: Paths, name: str, lines: int) -> list[str]:
    return tail(log_file(paths, name), lines)


def gateway_key(paths: Paths, stack: StackSet, environ: Mapping[str, str] | None = None) -> str:
    """The gateway's API key: the user's reference resolved, or the one mlxctl generated."""
    ref = master_key_ref(stack, paths.state)
    try:
        return secrets.resolve(ref, os.environ if environ is None else environ, where="gateway key")
    except secrets.MissingSecretError:
        if stack.gateway.master_key is not None:
            raise  # the user's reference: its own message says what is missing
        raise NotFoundError(
            "no gateway key yet: mlxctl generates it when the gateway first starts "
            "(mlxctl reconcile --once)"
        ) from None


def rotate_gateway_key(paths: Paths, stack: StackSet) -> None:
    """Replace the generated key atomically (0600); the running gateway re-reads it in
    place (no restart). A key the stack names is the user's to change."""
    import secrets as pysecrets

    from mlxctl.desired.resolve import generated_key_path
    from mlxctl.machine.inventory import write_atomic

    if stack.gateway.master_key is not None:
        raise MlxctlError(
            f"the gateway key is yours ({stack.gateway.master_key}): change it there, "
            "then run mlxctl reconcile --once (only the gateway restarts)",
            exit_code=ExitCode.USAGE,
        )
    path = generated_key_path(paths.state)
    write_atomic(path, "sk-mlxctl-" + pysecrets.token_urlsafe(32) + "\n", mode=0o600)
