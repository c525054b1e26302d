"""Evidence that the kernel killed a process for memory (Linux), read from the machine.

Two sources, both read only when a server of ours died:

- Its memory cgroup's ``oom_kill`` counter: recorded at spawn, compared after its death.
  Counts kills by any OOM killer (the cgroup's own limit, or the whole machine's) of
  processes in that cgroup. cgroup v2: ``/proc/PID/cgroup``'s ``0::/path`` line, then
  ``<cgroup2 mount>/path/memory.events`` (``oom_kill N``); cgroup v1 (a hybrid
  hierarchy): the ``memory`` controller's line, then ``memory.oom_control``. The path
  must be read while the process lives (a zombie already shows the root cgroup).
- The kernel log (``/dev/kmsg``, readable as root): ``Killed process PID (name)`` (the
  global OOM killer says ``Out of memory: Killed process``, a cgroup's ``Memory cgroup
  out of memory: Killed process``), which names the very PID.

macOS has neither: jetsam kills with SIGKILL and logs to the unified log (see
docs/reconciler.md); there a SIGKILL mlxctl did not send is reported as such.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

from mlxctl.files import read_bounded

MOUNTS = Path("/proc/self/mountinfo")
KMSG = Path("/dev/kmsg")
# What is read of the kernel log at most: its ring buffer is usually 128 KB to 1 MB.
MAX_KMSG_BYTES = 8 * 1024 * 1024
MAX_SMALL = 64 * 1024


def cgroup_of(pid: int) -> str:
    """``v2:/path`` or ``v1:/path`` (the memory controller's), or "" when there is none."""
    try:
        text = read_bounded(f"/proc/{pid}/cgroup", MAX_SMALL).decode("utf-8", "replace")
    except OSError:
        return ""
    unified = ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            return f"v1:{parts[2]}"
        if parts[0] == "0" and parts[1] == "":
            unified = f"v2:{parts[2]}"
    return unified


def _mounts() -> tuple[str, str]:
    """The cgroup2 mount point and the cgroup v1 memory controller's ("" when absent)."""
    v2 = v1 = ""
    try:
        text = read_bounded(MOUNTS, 4 * MAX_SMALL).decode("utf-8", "replace")
    except OSError:
        return v2, v1
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or not extra:
            continue
        if extra[0] == "cgroup2" and not v2:
            v2 = fields[4]
        elif extra[0] == "cgroup" and "memory" in extra[-1].split(",") and not v1:
            v1 = fields[4]
    return v2, v1


def oom_kill_count(cgroup: str) -> int | None:
    """The ``oom_kill`` count of ``cgroup`` (as :func:`cgroup_of` names it), or None."""
    version, _, path = cgroup.partition(":")
    if not path.startswith("/") or ".." in path.split("/"):
        return None
    v2, v1 = _mounts()
    if version == "v2" and v2:
        events = Path(v2 + path.rstrip("/")) / "memory.events"
    elif version == "v1" and v1:
        events = Path(v1 + path.rstrip("/")) / "memory.oom_control"
    else:
        return None
    try:
        text = read_bounded(events, MAX_SMALL).decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def kernel_oom_line(pid: int, since_boot: float) -> str:
    """The kernel log's line saying it killed ``pid`` for memory, logged after
    ``since_boot`` (seconds since boot: a PID reused since does not match), or ""."""
    pattern = re.compile(rf"Killed process {pid} \(")
    found = ""
    read = 0
    try:
        fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        while read < MAX_KMSG_BYTES:
            try:
                chunk = os.read(fd, 16384)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # the record was overwritten: go on
                    continue
                break  # EAGAIN: the end of the log
            if not chunk:
                break
            read += len(chunk)
            head, _, message = chunk.decode("utf-8", "replace").partition(";")
            if not pattern.search(message):
                continue
            fields = head.split(",")
            with contextlib.suppress(IndexError, ValueError):
                if int(fields[2]) / 1e6 + 1.0 < since_boot:
                    continue
            found = message.splitlines()[0].strip()
    finally:
        os.close(fd)
    return found[:400]
