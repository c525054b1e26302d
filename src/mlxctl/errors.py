"""The error taxonomy: every failure a user can cause maps to one line and one exit code.

The CLI catches :class:`MlxctlError` and prints ``error: <message>``; anything else is a
bug and keeps its traceback. Exit codes are documented in ``docs/exit-codes.md``.
"""

from __future__ import annotations

import errno
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Process exit codes shared by every command."""

    OK = 0
    # ``diff`` only: the plan has changes (like ``diff(1)`` and ``kubectl diff``).
    CHANGES = 1
    # ``doctor``: a check failed (the same value: "something is different from fine").
    PROBLEMS = 1
    USAGE = 2
    INVALID_SPEC = 3
    APPLY_FAILED = 4
    HEALTH_TIMEOUT = 5
    LOCKED = 6
    NOT_FOUND = 7
    ADMISSION_REFUSED = 8
    # A write to the state directory failed: no space left, a quota, a size limit, a
    # read-only file system.
    STORAGE = 9
    # ``load`` / ``unload``: they need a running controller (``mlxctl reconcile``).
    NO_CONTROLLER = 10
    INTERRUPTED = 130


# The longest piece of user input an error message repeats: a refused value is shown
# clipped, so a hostile file can never make one error line huge.
ECHO_LIMIT = 60


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for an error message, clipped to about ``limit`` characters.

    Collections are described, not printed: printing one built from YAML aliases
    could cost as much as the alias bomb it came from.
    """
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key(s)"
    if isinstance(value, list | tuple | set):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"a {len(str(abs(value)))}-digit number"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit] + "..."


class MlxctlError(Exception):
    """An expected failure with a one-line message and an exit code."""

    exit_code: ExitCode = ExitCode.APPLY_FAILED

    def __init__(self, message: str, *, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class SpecError(MlxctlError):
    """The stack files are invalid; nothing was changed.

    ``problems`` holds every finding as ``file:line:column: path: message``.
    """

    exit_code = ExitCode.INVALID_SPEC

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StateLockHeldError(MlxctlError):
    """Another reconciler holds the state directory's state lock (``reconcile.lock``)."""

    exit_code = ExitCode.LOCKED


class AdmissionError(MlxctlError):
    """The desired tiers do not fit the memory budget together."""

    exit_code = ExitCode.ADMISSION_REFUSED


class NotFoundError(MlxctlError):
    """A named tier, model or catalog entry does not exist."""

    exit_code = ExitCode.NOT_FOUND


# Write failures that say the storage is full or closed, not that mlxctl has a bug.
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded (no space left for this user)",
    errno.EFBIG: "file too large (a file size limit; no space left for it)",
    errno.EROFS: "read-only file system",
}


class StorageError(MlxctlError, OSError):
    """A write to the state directory failed for lack of space (or write access).

    Also an :class:`OSError`, so code that carries on past a failed write (the executor
    applies every other action) still does; the CLI prints it as one line naming the
    path. Nothing half-written is left behind: files are replaced atomically.
    """

    exit_code = ExitCode.STORAGE

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = str(path)
        self.reason = reason


# Write refusals: a state directory made read-only by its mode (a user's `chmod -w`) or
# immutable (`chattr +i`, which binds root too). They count only where the caller names
# the path it wrote, one of mlxctl's own state files: elsewhere the same errnos mean
# something else (a server binary that cannot be executed is no storage problem).
WRITE_REFUSED_ERRNOS = {
    errno.EACCES: "permission denied (the state directory is not writable)",
    errno.EPERM: "operation not permitted (an immutable file or directory)",
}


def storage_error(exc: BaseException, path: Path | str | None = None) -> StorageError | None:
    """``exc`` as a :class:`StorageError` when it is a full or closed storage, else None."""
    if isinstance(exc, StorageError):
        return exc
    if not isinstance(exc, OSError):
        return None
    if exc.errno in WRITE_REFUSED_ERRNOS and path is not None:
        return StorageError(str(path), WRITE_REFUSED_ERRNOS[exc.errno])
    if exc.errno not in STORAGE_ERRNOS:
        return None
    where = path if path is not None else (exc.filename or "the state directory")
    return StorageError(str(where), STORAGE_ERRNOS[exc.errno])
