"""Reading and writing mlxctl's own files: regular files only, bounded, private.

Two mechanisms, used everywhere a file is read from a path a user controls or
written into the state directory:

- :func:`read_bounded` opens without blocking and reads only a regular file, at most
  ``max_bytes``: a FIFO, ``/dev/zero`` or a huge file named as a stack, a secret or a
  model config is refused in one line instead of hanging mlxctl or filling memory.
- :func:`private_dir`, :func:`open_private` and :func:`make_private` give the state
  directory 0700 and its files 0600 (logs, events, inventory, gateway config, ports,
  lock): they hold command lines, errors and the gateway key's location, which other
  users of the machine have no business reading. Existing files are repaired.

And the two verbs of every log (the event log, the servers' logs): :func:`open_append`
and :func:`rotate`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileRefusedError(OSError):
    """A path that is not a regular file, or a file over its size cap.

    An :class:`OSError`, so every caller that already reports unreadable files reports
    these the same way; ``str()`` is the whole one-line message, ``reason`` the same
    without the path.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_bounded(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``; :class:`FileRefusedError` for anything else.

    ``O_NONBLOCK`` makes opening a FIFO return at once (no writer needed), so the type
    check runs before any read could block; the size is checked on the open file and
    again while reading, in case it grows.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefusedError(path, f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise FileRefusedError(path, f"{info.st_size} bytes, over the {max_bytes} allowed")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise FileRefusedError(path, f"grew over the {max_bytes} bytes allowed")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text_bounded(path: Path | str, max_bytes: int) -> str:
    """:func:`read_bounded` decoded as UTF-8 (a :class:`UnicodeDecodeError` if it is not)."""
    return read_bounded(path, max_bytes).decode("utf-8")


def make_private(path: Path, *, directory: bool = False) -> None:
    """Give an existing path its private mode (0700 / 0600) when group or others have any."""
    mode = os.stat(path).st_mode
    if stat.S_IMODE(mode) & 0o077:
        os.chmod(path, PRIVATE_DIR if directory else PRIVATE_FILE)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700, or repair it to 0700; returns it."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    make_private(path, directory=True)
    return path


def open_private(path: Path, flags: int) -> int:
    """``os.open`` a file in a private directory, created 0600 (an existing one repaired)."""
    private_dir(path.parent)
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: Path) -> BinaryIO:
    """``path`` opened to append, unbuffered, created 0600 (logs hold what servers print)."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "ab", buffering=0)


def rotate(path: Path, *, max_bytes: int, keep: int) -> bool:
    """Rotate ``path`` by renaming if it has grown past ``max_bytes``: ``path`` becomes
    ``path.1``, older ones shift, ``keep`` are kept. True when it did. Nothing is ever
    truncated: a writer still holding the old file finishes its line there."""
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
