"""The one writer of service files: write a :class:`File` unless it is already there."""

from __future__ import annotations

import contextlib
import os

from mlxctl.files import read_text_bounded
from mlxctl.machine.inventory import write_atomic
from mlxctl.machine.services.base import File

MAX_BYTES = 1 << 20


def current(file: File) -> str | None:
    """What is at ``file.path`` now (None when nothing, or not a readable regular file)."""
    try:
        return read_text_bounded(file.path, MAX_BYTES)
    except (OSError, UnicodeDecodeError):
        return None


def same(file: File) -> bool:
    """Whether ``file`` is already written, content and mode."""
    if current(file) != file.content:
        return False
    return os.stat(file.path).st_mode & 0o777 == file.mode


def write(file: File) -> bool:
    """Write ``file`` atomically (its directory created with the user's umask, never
    re-moded: ``~/Library/LaunchAgents`` is not mlxctl's); False when it was already there."""
    if same(file):
        return False
    write_atomic(file.path, file.content, mode=file.mode, foreign_dir=True)
    return True


def remove(file: File) -> bool:
    """Remove ``file``; False when it was not there."""
    with contextlib.suppress(FileNotFoundError):
        file.path.unlink()
        return True
    return False
