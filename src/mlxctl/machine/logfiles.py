"""Per-service log files: appended to, rotated by size, and read back for errors.

A server writes its stdout and stderr straight into ``name.log``, opened here in append
mode before it starts (:func:`open_log`) and inherited; the server's own process rotates
it by size while it runs (:mod:`mlxctl.runtimes.server_log`): ``name.log`` becomes
``name.log.1`` and so on, keeping ``KEEP`` generations. The file is also rotated, if
due, when the service (re)starts. Nothing is ever truncated, so no line is lost and no
file is sparse.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from mlxctl.files import open_append, private_dir, rotate
from mlxctl.runtimes.server_log import KEEP, MAX_BYTES


@contextlib.contextmanager
def open_log(path: Path, argv: Sequence[str], started: float) -> Iterator[BinaryIO]:
    """Open (rotating first) a service log for a child to inherit, with a start banner
    stamped ``started`` (wall-clock seconds, the caller's clock)."""
    private_dir(path.parent)
    rotate(path, max_bytes=MAX_BYTES, keep=KEEP)
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
