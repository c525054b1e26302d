"""The event log: every action mlxctl takes, with its cause and result, one JSON line each.

``mlxctl events`` reads it back. Lines are appended (one ``write`` each, so lines from
concurrent writers never interleave) and the file is rotated once past ``MAX_BYTES``.
Secrets never reach it: causes and messages carry references, never values.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from mlxctl.errors import MlxctlError, storage_error
from mlxctl.files import FileRefusedError, open_private, private_dir, read_bounded, rotate
from mlxctl.machine.inventory import ExitCauseModel
from mlxctl.machine.statemodel import Seconds, ShortStr, StateModel, Text, Timestamp

EVENT_SCHEMA = 1
MAX_BYTES = 5 * 1024 * 1024
# What ``mlxctl events`` reads of one file: rotation keeps each near MAX_BYTES.
MAX_READ_BYTES = 8 * MAX_BYTES


@dataclass(frozen=True)
class Event:
    ts: float
    kind: str
    target: str
    cause: str
    result: str  # "ok", "failed", "planned", "noticed", "refused"
    message: str = ""
    duration: float | None = None
    # A crash's class (see mlxctl.observe.exit_cause): kind, word, detail, signal...
    exit_cause: dict[str, Any] | None = None
    # A restart's: the death it follows (the same fields). Not the event's own class, so
    # ``--kind SIGKILL`` lists the death, not the restart too.
    restarted_after: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"v": EVENT_SCHEMA, **asdict(self)}
        return {k: v for k, v in data.items() if v not in (None, "")}


Listener = Callable[[Event], None]


class EventLog:
    """Appends events to the state directory and tells listeners (the CLI's progress)."""

    def __init__(self, path: Path | None, listeners: list[Listener] | None = None) -> None:
        self.path = path
        self.listeners = list(listeners or [])
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        """Append ``event`` and tell the listeners. The log never stops an action: when
        it cannot be written (a full disk) that is said once on stderr, and the
        actions go on (``down`` must still stop every server)."""
        with self._lock:
            if self.path is not None:
                try:
                    self._append(self.path, json.dumps(event.to_json(), sort_keys=True))
                except OSError as exc:
                    _warn_once(self.path, exc)
            for listener in self.listeners:
                listener(event)

    @staticmethod
    def _append(path: Path, line: str) -> None:
        private_dir(path.parent)
        rotate(path, max_bytes=MAX_BYTES, keep=2)
        data = line.encode() + b"\n"
        if str(path) in _torn:
            # The last append was cut short (the disk filled mid-line): start a new line
            # so that the torn one stays unreadable on its own and this one is whole.
            data = b"\n" + data
        # Never blocks on a FIFO (no reader: ENXIO) and never follows a symlink out of
        # the state directory; anything but a regular file is refused like a failed write.
        flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        fd = open_private(path, flags)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FileRefusedError(path, "not a regular file")
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written < len(data):
            _torn.add(str(path))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        _torn.discard(str(path))
        _warned.discard(str(path))


# Event logs whose last line was cut short, and those already reported as unwritable
# (once per process, not once per event).
_torn: set[str] = set()
_warned: set[str] = set()


def _warn_once(path: Path, exc: OSError) -> None:
    if str(path) in _warned:
        return
    _warned.add(str(path))
    full = storage_error(exc, path)
    reason = str(full) if full is not None else f"cannot write {path}: {exc.strerror or exc}"
    print(f"warning: {reason} (events are not recorded meanwhile)", file=sys.stderr, flush=True)


def read_events(path: Path, limit: int | None = None) -> list[Event]:
    """The most recent events, oldest first."""
    lines: list[str] = []
    for candidate in (path.with_name(path.name + ".1"), path):
        try:
            raw = read_bounded(candidate, MAX_READ_BYTES)
        except FileNotFoundError:
            continue
        except OSError as exc:  # a directory, a FIFO, a file far past its rotation size
            raise MlxctlError(f"cannot read the event log: {exc}") from None
        lines.extend(raw.decode("utf-8", errors="replace").splitlines())
    events: list[Event] = []
    for line in lines:
        try:
            model = EventModel.model_validate_json(line)
        except ValueError:  # a torn line, a line that is not an event (ValidationError)
            continue
        events.append(Event(**model.model_dump()))
    return events[-limit:] if limit else events


class EventModel(StateModel):
    """An event line as :meth:`EventLog.emit` writes it; any other line is skipped."""

    ts: Timestamp
    kind: ShortStr
    target: Text
    cause: Text = ""
    result: ShortStr = ""
    message: Annotated[str, Field(max_length=1 << 16)] = ""
    duration: Seconds | None = None
    exit_cause: ExitCauseModel | None = None
    restarted_after: ExitCauseModel | None = None
