"""The inventory: the processes mlxctl started, with the identity that proves it.

Only what is in the inventory is ever signalled or pruned. A record's identity is
the leader's PID, its start time and its command line, plus an instance marker in
the environment of every process of its group; a PID whose identity does not match
belongs to someone else and is never touched. The file is replaced atomically
(temp file, fsync, rename) so a crash mid-write never loses or corrupts it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mlxctl.machine.interfaces import Identity

INVENTORY_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One started service."""

    name: str
    role: str
    pid: int
    pgid: int
    create_time: float
    cmdline: tuple[str, ...]
    instance: str
    spec_hash: str
    port: int
    log: str
    started_at: float
    launch: Mapping[str, Any] = field(default_factory=dict)
    ready_at: float | None = None
    restarts: int = 0
    consecutive_crashes: int = 0
    died_at: float | None = None
    exit_code: int | None = None
    not_before: float | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cmdline"] = list(self.cmdline)
        data["launch"] = dict(self.launch)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["cmdline"] = tuple(values.get("cmdline", ()))
        return cls(**values)

    def evolve(self, **changes: Any) -> Record:
        return replace(self, **changes)

    def identity(self) -> Identity:
        """What must match before this record's processes may be signalled."""
        return Identity(self.pid, self.pgid, self.create_time, self.cmdline, self.instance)


class Inventory:
    """The inventory file of one state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Record]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        services = raw.get("services", {}) if isinstance(raw, dict) else {}
        return {name: Record.from_json(rec) for name, rec in services.items()}

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


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
