"""Per-service log files: appended to, rotated by size, and read back for errors.

A server's output goes through a pipe to its log pump (:mod:`mlxctl.machine.logpump`), which
appends to ``name.log`` and rotates it by size while the server runs: ``name.log``
becomes ``name.log.1`` and so on, keeping ``KEEP`` generations. The file is also
rotated, if due, when the service (re)starts. Nothing is ever truncated, so no line
is lost and no file is sparse.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from mlxctl.files import open_private, private_dir

MAX_BYTES = 20 * 1024 * 1024
KEEP = 3


def rotate(path: Path, *, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> bool:
    """Rotate ``path`` if it has grown past ``max_bytes``; True when it did."""
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    for index in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
    return True


def open_append(path: Path) -> BinaryIO:
    """``path`` opened to append, unbuffered, created 0600 (logs hold what servers print)."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "ab", buffering=0)


@contextlib.contextmanager
def open_log(path: Path, argv: Sequence[str], started: float) -> Iterator[BinaryIO]:
    """Open (rotating first) a service log for a child to inherit, with a start banner
    stamped ``started`` (wall-clock seconds, the caller's clock)."""
    private_dir(path.parent)
    rotate(path)
    with open_append(path) as handle:
        stamp = _dt.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds")
        handle.write(f"--- mlxctl {stamp} start: {' '.join(argv)}\n".encode())
        yield handle


def tail(path: Path, lines: int = 20, *, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of ``path`` (empty when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    return text[-lines:] if lines > 0 else []
