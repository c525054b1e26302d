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
from pathlib import Path

from mlxctl.errors import storage_error
from mlxctl.machine.record import Record

INVENTORY_VERSION = 1


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
    """Write ``text`` to ``path`` so readers see the old or the new file, never a part.

    A full disk is a :class:`~mlxctl.errors.StorageError` naming ``path`` (not the
    temporary file), and leaves ``path`` as it was.
    """
    try:
        _write_atomic(path, text, mode)
    except OSError as exc:
        full = storage_error(exc, path)
        if full is None:
            raise
        raise full from exc


def _write_atomic(path: Path, text: str, mode: int) -> None:
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
