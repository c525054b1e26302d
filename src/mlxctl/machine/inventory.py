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

from mlxctl.errors import MlxctlError, storage_error
from mlxctl.files import PRIVATE_FILE, private_dir, read_text_bounded
from mlxctl.machine.record import Record

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
        try:
            services = raw.get("services", {}) if isinstance(raw, dict) else None
            if not isinstance(services, dict):
                raise TypeError("no 'services' mapping")
            for name, rec in services.items():
                _check_fields(str(name), rec)
            return {str(name): Record.from_json(rec) for name, rec in services.items()}
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise self._unusable(exc) from None

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


_FIELD_TYPES: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("name", str),
    ("role", str),
    ("pid", int),
    ("pgid", int),
    ("create_time", (int, float)),
    ("cmdline", list),
    ("instance", str),
    ("spec_hash", str),
    ("port", int),
    ("log", str),
    ("started_at", (int, float)),
)


def _check_fields(name: str, rec: object) -> None:
    """The fields a record is trusted by (its identity) have the types they must."""
    if not isinstance(rec, dict):
        raise TypeError(f"record '{name[:40]}' is not a mapping")
    for field, kind in _FIELD_TYPES:
        value = rec.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"record '{name[:40]}': {field} is missing or not a {kind}")
    if not all(isinstance(part, str) for part in rec["cmdline"]):
        raise TypeError(f"record '{name[:40]}': cmdline is not a list of strings")


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
