"""A server's log, kept by the server's own process: nothing runs beside it to carry it.

mlxctl starts every server (``RealProcessControl.spawn``) with its stdout and stderr
opened on its log file in append mode, and the file's path in :data:`LOG_FILE_ENV`.
Every server mlxctl starts begins in mlxctl's own code (a model server through
:mod:`mlxctl.runtimes.tier_guard`, the gateway as ``python -m mlxctl.gateway``), which
calls :func:`keep_log` first thing. It does, inside the server, what a log pump process
beside each server did before:

- **rotation by size**: a thread looks at the file every :data:`CHECK_SECONDS`; past
  :data:`MAX_BYTES` it is renamed ``NAME.log.1`` (older ones shift, :data:`KEEP` kept)
  and the process's descriptors 1 and 2 are pointed at a new file with ``dup2``, which
  is atomic: each write lands whole in the old file or in the new one. No line is lost
  and no file is sparse (the faults of copy-and-truncate).
- **a full disk never breaks the server**: ``sys.stdout`` and ``sys.stderr`` drop what
  the disk refuses (a server's ``print`` or log call would raise otherwise, and
  mlx_lm.server logs every request: each would fail) and say how much once a write
  succeeds again.

Why not a pump: each was a Python process (~13 MB here, one per server), and one pump
for all in the controller would die with it and break the output of every server that
outlives a controller restart. A descriptor the server holds needs nobody: it keeps
writing through a restart of mlxctl, and what it wrote before dying is already in the
file (the exit-cause classifier reads the last lines at once; nothing waits in a pipe).
Subprocesses a server starts inherit the same file; after a rotation they write to
``NAME.log.1`` until they exit.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mlxctl.files import open_private, rotate

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from mlxctl.machine.interfaces import Clock

LOG_FILE_ENV = "MLXCTL_LOG_FILE"
MAX_BYTES = 20 * 1024 * 1024
KEEP = 3
# Seconds between two looks at the log's size: a log may pass MAX_BYTES by what a server
# writes in that time (a few lines a request).
CHECK_SECONDS = 2.0


class Rotation:
    """The log that descriptors ``fds`` write to, rotated in place by size."""

    def __init__(
        self, path: Path, fds: Sequence[int] = (1, 2), *, max_bytes: int = MAX_BYTES,
        keep: int = KEEP,
    ) -> None:  # fmt: skip
        self.path = path
        self.fds = tuple(fds)
        self.max_bytes = max_bytes
        self.keep = keep

    def writes_there(self) -> bool:
        """The descriptors still write to the file at ``path``: once another process
        (a new instance of the same service) has rotated it, it is not ours to rotate."""
        try:
            here, there = os.fstat(self.fds[0]), os.stat(self.path)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def rotate_if_due(self) -> bool:
        """Rename the log away and point the descriptors at a new one, once it is past
        ``max_bytes``; True when it did."""
        if not self.writes_there() or not rotate(self.path, max_bytes=self.max_bytes,
                                                 keep=self.keep):  # fmt: skip
            return False
        fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            for target in self.fds:
                os.dup2(fd, target)
        finally:
            os.close(fd)
        return True

    def run(self, clock: Clock, every: float = CHECK_SECONDS) -> None:
        """Rotate whenever due, for the life of the process (a daemon thread's body)."""
        while True:
            clock.sleep(every)
            try:
                self.rotate_if_due()
            except OSError:
                continue  # a full disk or a removed directory: the next look tries again


class DroppingWriter(io.RawIOBase):
    """Writes to descriptor ``fd``; a write the disk refuses is dropped and counted, never
    raised, and the next write that succeeds is preceded by one line saying how much."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.dropped = 0
        self.why = ""

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: WriteableBuffer, /) -> int:
        size = memoryview(data).nbytes
        try:
            if self.dropped:
                note = f"[mlxctl: {self.dropped} bytes of output dropped: {self.why}]\n"
                os.write(self._fd, note.encode())
                self.dropped = 0
            return os.write(self._fd, data)
        except OSError as exc:
            self.dropped += size
            self.why = (exc.strerror or str(exc)).lower()
            return size


def dropping_text(fd: int, like: TextIO) -> TextIO:
    """A text stream on ``fd`` with ``like``'s encoding, line-buffered, that never raises
    for a full disk (:class:`DroppingWriter`)."""
    return io.TextIOWrapper(
        io.BufferedWriter(DroppingWriter(fd)),
        encoding=like.encoding,
        errors=like.errors,
        line_buffering=True,
    )


def keep_log(
    clock: Clock,
    environ: Mapping[str, str] = os.environ,
    *,
    max_bytes: int = MAX_BYTES,
    keep: int = KEEP,
    every: float = CHECK_SECONDS,
) -> Rotation | None:
    """Keep this process's log, when mlxctl started it with one (:data:`LOG_FILE_ENV`, and
    descriptor 1 on that file): streams that survive a full disk, and a daemon thread
    that rotates the file by size. None when there is no such log (run by hand)."""
    path = environ.get(LOG_FILE_ENV, "")
    if not path:
        return None
    rotation = Rotation(Path(path), max_bytes=max_bytes, keep=keep)
    if not rotation.writes_there():
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    sys.stdout = dropping_text(1, sys.stdout)
    sys.stderr = dropping_text(2, sys.stderr)
    thread = threading.Thread(target=rotation.run, args=(clock, every), name="mlxctl-log")
    thread.daemon = True
    thread.start()
    return rotation
