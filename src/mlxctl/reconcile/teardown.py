"""Stopping every recorded server when nothing can be recorded: ``down``'s way out.

``down`` normally converges to an empty stack through the ordinary passes, each stop
begun, recorded, escalated and confirmed. When the state directory cannot be written
(a full disk), a pass cannot record what it began, so ``down`` falls back to this:
every process the inventory names (and every intent whose process carries its
instance marker) is stopped by identity, SIGTERM then SIGKILL after the grace
period, waiting here, recording nothing. The inventory is left as it was: the next
run finds those PIDs gone and forgets them once it can write again.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxctl.machine.interfaces import Clock, Identity, Marked, ProcessControl
from mlxctl.machine.record import Record

POLL = 0.1


@dataclass(frozen=True)
class Stopped:
    name: str
    pid: int
    forced: bool
    left: int  # processes still alive at the end (survived SIGKILL)

    def line(self) -> str:
        if self.left:
            return f"{self.name}: pid {self.pid}: {self.left} process(es) survived SIGKILL"
        how = "killed after the grace period" if self.forced else "stopped"
        return f"{self.name}: pid {self.pid} {how}"


def _identity(record: Record, procs: ProcessControl) -> Identity | None:
    if record.spawned:
        return record.identity()
    found = procs.find_instance(record.instance)
    if found is None:
        return None
    return Identity(found.pid, found.pgid, found.create_time, found.cmdline, record.instance)


def stop_recorded(
    records: dict[str, Record],
    procs: ProcessControl,
    *,
    grace: float,
    clock: Clock,
    kill_wait: float = 5.0,
) -> list[Stopped]:
    """Stop every process ``records`` own, all at once; blocks up to grace + kill_wait."""
    targets = {
        name: ident
        for name, record in sorted(records.items())
        if (ident := _identity(record, procs)) is not None and procs.remaining(ident) > 0
    }
    return _stop_all(targets, procs, grace, kill_wait, clock)


def stop_strays(
    state: str,
    records: dict[str, Record],
    procs: ProcessControl,
    *,
    grace: float,
    clock: Clock,
    kill_wait: float = 5.0,
) -> list[Stopped]:
    """Stop every process carrying ``state``'s marker that no record names.

    The intent record makes this rare (see ``docs/reliability-runtime.md``), but a
    record can still be lost (``inventory.json`` deleted or unreadable), and a member
    of a server's group can outlive its leader and its record; such a process would
    otherwise hold its port, and memory, forever. Found by the state directory in its
    environment, identified by its own PID, start time and command line.
    """
    known = {record.instance for record in records.values()}
    groups: dict[tuple[str, int], Marked] = {}
    for found in procs.find_marked(state):
        if found.instance in known:
            continue
        key = (found.instance, found.pgid)
        if key not in groups or found.pid == found.pgid:  # the group's leader if it is there
            groups[key] = found
    targets = {
        f"{m.service} (no record; group {m.pgid})": Identity(
            m.pid, m.pgid, m.create_time, m.cmdline, m.instance
        )
        for m in groups.values()
    }
    return _stop_all(targets, procs, grace, kill_wait, clock)


def _stop_all(
    targets: dict[str, Identity],
    procs: ProcessControl,
    grace: float,
    kill_wait: float,
    clock: Clock,
) -> list[Stopped]:
    for ident in targets.values():
        procs.terminate(ident)
    forced: set[str] = set()
    deadline = clock.monotonic() + grace
    while any(procs.remaining(i) for i in targets.values()) and clock.monotonic() < deadline:
        clock.sleep(POLL)
    for name, ident in targets.items():
        if procs.remaining(ident):
            procs.kill(ident)
            forced.add(name)
    deadline = clock.monotonic() + kill_wait
    while any(procs.remaining(i) for i in targets.values()) and clock.monotonic() < deadline:
        clock.sleep(POLL)
    return [
        Stopped(name, ident.pid, name in forced, procs.remaining(ident))
        for name, ident in targets.items()
    ]
