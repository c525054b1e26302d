"""The state lock: one reconciler per state directory, an advisory lock naming its holder.

Not to be confused with a stack's lock file (``NAME.lock.yaml``, pinned hub commits,
:mod:`mlxctl.sources.lockfile`), a thread mutex, or huggingface_hub's download locks.

``fcntl.flock`` is released by the kernel when the holder dies, so a crashed
controller never leaves a stale lock behind; the file's content (PID, command,
since when) only serves to tell the user who holds it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from mlxctl.errors import MlxctlError, StateLockHeldError, storage_error
from mlxctl.files import open_private


class StateLock:
    """``flock`` on the state directory's ``reconcile.lock`` (its file name is unchanged)."""

    def __init__(self, path: Path, command: str | None = None) -> None:
        self.path = path
        self.command = command or " ".join(["mlxctl", *sys.argv[1:]])
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        try:
            fd = open_private(self.path, os.O_RDWR)
            writable = True
        except OSError as exc:  # a full disk, a directory at the lock's path, a read-only dir
            full = storage_error(exc, self.path)
            if full is None:
                reason = exc.strerror or str(exc)
                raise MlxctlError(f"cannot take the lock {self.path}: {reason}") from None
            fd = self._read_only(full)
            writable = False
        handle = _text(fd) if writable else os.fdopen(fd, "r", encoding="utf-8", errors="replace")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read(4096))
            handle.close()
            raise StateLockHeldError(f"another mlxctl holds {self.path}: {holder}") from None
        self._handle = handle
        if not writable:
            return
        since = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        holder = json.dumps({"pid": os.getpid(), "command": self.command, "since": since})
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(holder)
            handle.flush()
        except OSError:
            # The lock is the flock, which needs no space: on a full disk hold it
            # without naming the holder (another mlxctl then says "holder unknown"), so
            # that `down` can still stop everything.
            pass

    def _read_only(self, full: Exception) -> int:
        """The existing lock file opened read-only, when the state cannot be written (a
        read-only or full file system): ``flock`` needs no write access, so ``down`` still
        excludes every other mlxctl and goes on to stop the servers."""
        try:
            return os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            raise full from None

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.seek(0)
                self._handle.truncate()
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            with contextlib.suppress(OSError):  # a holder line a full disk never took
                self._handle.close()
            self._handle = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _describe(raw: str) -> str:
    try:
        info: Any = json.loads(raw)
        return f"pid {info['pid']} ({info['command']}) since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _text(fd: int) -> IO[str]:
    """The lock file as text (a seam for tests of a disk that fills)."""
    return os.fdopen(fd, "r+", encoding="utf-8", errors="replace")
