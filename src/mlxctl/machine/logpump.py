"""The log pump: copies a server's output into its log file and rotates it by size.

``python -m mlxctl.machine.logpump FILE`` reads its standard input (the server's stdout and
stderr, through a pipe) and appends it to FILE; when FILE passes ``--max-bytes`` it is
renamed to ``FILE.1`` (older ones shift, ``--keep`` are kept) and a new FILE is opened.
Because the pump, not the server, owns the file, rotation loses no line and leaves no
sparse file (the faults of copy-and-truncate). It runs in the server's process group,
so stopping the service stops it too, and it exits when the server closes the pipe.
Kept tiny and free of third-party imports: one runs beside every server.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from mlxctl import files
from mlxctl.machine.logfiles import KEEP, MAX_BYTES

CHUNK = 65536


def pump(source: int, path: Path, *, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
    """Copy ``source`` (a file descriptor) into ``path`` until EOF, rotating by size.

    A write that fails (a full disk) drops that line and goes on reading: a pump that
    died would close the pipe and break the server's next write of its own output.
    Once writing works again, one line says how much was lost.
    """
    handle = files.open_append(path)  # reopened after each rotation
    size = handle.tell()
    dropped, why = 0, ""
    try:
        while True:
            chunk = os.read(source, CHUNK)
            if not chunk:
                return
            # Line by line, so a file is only ever rotated between two whole lines.
            for line in chunk.splitlines(keepends=True):
                try:
                    if dropped:
                        note = f"[mlxctl logpump: {dropped} bytes dropped: {why}]\n"
                        handle.write(note.encode())
                        dropped = 0
                    handle.write(line)
                except OSError as exc:
                    why = (exc.strerror or str(exc)).lower()
                    dropped += len(line)
                    continue
                size += len(line)
                if size >= max_bytes and line.endswith(b"\n"):
                    handle.close()
                    files.rotate(path, max_bytes=max_bytes, keep=keep)
                    handle = files.open_append(path)
                    size = handle.tell()
    finally:
        handle.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlxctl.machine.logpump")
    parser.add_argument("path", type=Path)
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES)
    parser.add_argument("--keep", type=int, default=KEEP)
    opts = parser.parse_args(argv)
    # Stopping the service signals the whole group: finish copying what the server
    # wrote before it died (EOF ends the pump), rather than dying first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pump(sys.stdin.fileno(), opts.path, max_bytes=opts.max_bytes, keep=opts.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
