"""The inventory: the processes mlxctl started, with the identity that proves it.

Only what is in the inventory is ever signalled or pruned. A record's identity is
the leader's PID, its start time and its command line, plus an instance marker in
the environment of every process of its group; a PID whose identity does not match
belongs to someone else and is never touched. Every record is validated, with
ranges, on every read (:class:`RecordModel`): one that is not
usable makes the whole file unusable, in one line, and nothing is started or stopped
on its strength. The file is replaced atomically (temp file, fsync, rename) so a
crash mid-write never loses or corrupts it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from mlxctl.errors import MlxctlError, storage_error
from mlxctl.files import PRIVATE_FILE, private_dir, read_text_bounded
from mlxctl.machine.record import ExitCause, Record
from mlxctl.machine.statemodel import (
    Cmdline,
    Count,
    Pid,
    Port,
    ShortStr,
    StateModel,
    Text,
    Timestamp,
    problem,
)

INVENTORY_VERSION = 1
# A record is well under 4 KiB; a few thousand services would still fit.
MAX_INVENTORY_BYTES = 16 * 1024 * 1024


class Inventory:
    """The inventory file of one state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Record]:
        """The records, or :class:`MlxctlError` naming the file when it cannot be trusted.

        The file is only ever replaced whole, so a corrupt one was damaged from
        outside: guessing which processes are ours from it could signal a stranger's,
        and forgetting it would leave ours unowned. The user decides (the message says
        how); until then nothing is started or stopped.
        """
        try:
            raw = json.loads(read_text_bounded(self.path, MAX_INVENTORY_BYTES))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:
            raise self._unusable(exc) from None
        services = raw.get("services", {}) if isinstance(raw, dict) else None
        if not isinstance(services, dict):
            raise self._unusable(TypeError("no 'services' mapping"))
        records: dict[str, Record] = {}
        for name, rec in services.items():
            try:
                records[name] = parse_record(rec)
            except ValidationError as exc:
                raise self._unusable(ValueError(f"record '{name[:40]}': {problem(exc)}")) from None
        return records

    def _unusable(self, exc: BaseException) -> MlxctlError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return MlxctlError(
            f"{self.path}: not a usable inventory ({reason[:120]}); mlxctl will not guess "
            "which processes it owns: restore it, or move it aside and stop the servers "
            "it listed yourself"
        )

    def save(self, records: Mapping[str, Record]) -> None:
        payload = {
            "version": INVENTORY_VERSION,
            "services": {name: rec.to_json() for name, rec in sorted(records.items())},
        }
        write_atomic(self.path, json.dumps(payload, indent=2) + "\n")

    def put(self, record: Record) -> None:
        records = self.load()
        records[record.name] = record
        self.save(records)

    def remove(self, name: str) -> None:
        records = self.load()
        if records.pop(name, None) is not None:
            self.save(records)


Name = Annotated[str, Field(min_length=1, max_length=256)]
# A uuid4 hex today; anything short and non-empty from older versions.
Instance = Annotated[str, Field(min_length=1, max_length=128)]
ExitStatus = Annotated[int, Field(ge=-255, le=255)]
Bytes = Annotated[int, Field(ge=0, le=1 << 60)]


class ExitCauseModel(StateModel):
    """Why a server died, as a record holds it (:class:`~mlxctl.machine.record.ExitCause`)."""

    kind: Literal["oom-killed", "signal", "error", "could-not-start", "exited", "unknown"]
    word: ShortStr
    detail: Text
    exit_code: ExitStatus | None = None
    signal: ShortStr = ""
    by_us: bool = False
    out_of_memory: bool = False
    evidence: Text = ""


class RecordModel(StateModel):
    """A record as the inventory file must hold it (see :mod:`mlxctl.machine.statemodel`).

    A record is what a signal is sent on the strength of, so nothing in it is taken on
    trust: a ``NaN`` start time (which no comparison rejects), a PID past the kernel's
    range or a command line that is not a list of strings makes the file unusable.
    """

    name: Name
    role: ShortStr
    pid: Pid
    pgid: Pid
    create_time: Timestamp
    cmdline: Cmdline
    instance: Instance
    spec_hash: ShortStr
    port: Port
    log: Text
    started_at: Timestamp
    launch: dict[str, Any] = Field(default_factory=dict)
    ready_at: Timestamp | None = None
    restarts: Count = 0
    consecutive_crashes: Count = 0
    died_at: Timestamp | None = None
    exit_code: ExitStatus | None = None
    not_before: Timestamp | None = None
    last_error: Text | None = None
    stop_requested_at: Timestamp | None = None
    stop_cause: Text | None = None
    kill_sent_at: Timestamp | None = None
    memory_bytes: Bytes | None = None
    stack: ShortStr = ""
    handover_to: ShortStr = ""
    exit_cause: ExitCauseModel | None = None
    restarted_after: ExitCauseModel | None = None
    cgroup: Text = ""
    oom_kills_at_start: Count | None = None
    generation: Count = 0


def parse_record(data: object) -> Record:
    """The record ``data`` holds, validated (:class:`pydantic.ValidationError` if a field
    is missing, of the wrong type or out of range)."""
    values = RecordModel.model_validate(data).model_dump()
    values["cmdline"] = tuple(values["cmdline"])
    for cause in ("exit_cause", "restarted_after"):
        if values[cause] is not None:
            values[cause] = ExitCause(**values[cause])
    return Record(**values)


def write_atomic(
    path: Path, text: str, *, mode: int = PRIVATE_FILE, foreign_dir: bool = False
) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never a part.

    The file is private (0600) in a private directory (0700) unless ``mode`` says
    otherwise (its state directory is mlxctl's alone). With
    ``foreign_dir`` the directory is not mlxctl's (the user's stack directory holding a
    lock file, the shared Hugging Face cache's ``refs/``): it is created when missing
    with the user's umask and its mode is never changed. A full
    disk is a :class:`~mlxctl.errors.StorageError` naming ``path`` (not the temporary
    file), and leaves ``path`` as it was.
    """
    try:
        _write_atomic(path, text, mode, foreign_dir)
    except OSError as exc:
        full = storage_error(exc, path)
        if full is None:
            raise
        raise full from exc


def _write_atomic(path: Path, text: str, mode: int, foreign_dir: bool) -> None:
    if foreign_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
