"""A full disk: every write that fails says which path and "no space left", in one line;
nothing half-written replaces a good file; the actions that can still run do run.

The real-filesystem version (a filled tmpfs, real servers) is
``tests/integration/test_full_disk.py``; these pin each write path down quickly.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from mlxctl.apply.events import Event, EventLog
from mlxctl.errors import ExitCode, StorageError, storage_error
from mlxctl.machine import inventory as inventory_module
from mlxctl.machine.inventory import Inventory, write_atomic
from mlxctl.reconcile.state_lock import StateLock
from mlxctl.reconcile.teardown import stop_recorded
from tests.unit.world import World, tier, tiers_yaml

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Flaky:
    """A file whose writes of some data (or of anything) fail as on a full disk."""

    def __init__(self, real: Any, failing: set[bytes] | None = None) -> None:
        self.real = real
        self.failing = failing

    def write(self, data: Any) -> int:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if self.failing is None or raw in self.failing:
            raise ENOSPC
        return int(self.real.write(data))

    def flush(self) -> None:
        if self.failing is None:
            raise ENOSPC

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_storage_errors_name_the_path_and_have_their_own_exit_code() -> None:
    full = storage_error(ENOSPC, "/state/inventory.json")
    assert isinstance(full, StorageError) and isinstance(full, OSError)
    assert str(full) == "cannot write /state/inventory.json: no space left on device"
    assert full.exit_code == ExitCode.STORAGE == 9
    assert storage_error(OSError(errno.EACCES, "denied")) is None  # not a storage fault


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "inventory.json"
    write_atomic(target, "old\n")

    def full(_fd: int) -> None:
        raise ENOSPC

    monkeypatch.setattr(inventory_module.os, "fsync", full)
    with pytest.raises(
        StorageError, match=re.escape(f"cannot write {target}: no space left on device")
    ):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["inventory.json"]


def test_the_event_log_never_stops_an_action_and_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Event] = []
    log = EventLog(tmp_path / "events.jsonl", [seen.append])

    def full(_fd: int, _data: bytes) -> int:
        raise ENOSPC

    monkeypatch.setattr("mlxctl.apply.events.os.write", full)
    for _ in range(3):
        log.emit(Event(1.0, "stop", "fast", "mlxctl down", "ok"))
    assert len(seen) == 3  # the listeners (the CLI's progress) still hear every event
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"warning: cannot write {tmp_path / 'events.jsonl'}: no space left on device "
        "(events are not recorded meanwhile)"
    ]


def test_a_torn_event_line_stays_on_its_own_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    real_write = os.write
    monkeypatch.setattr("mlxctl.apply.events.os.write", lambda fd, data: real_write(fd, data[:9]))
    log.emit(Event(1.0, "stop", "a", "cause", "ok"))  # the disk took 9 bytes of it
    monkeypatch.setattr("mlxctl.apply.events.os.write", real_write)
    log.emit(Event(2.0, "stop", "b", "cause", "ok"))
    from mlxctl.apply.events import read_events

    assert [e.target for e in read_events(path)] == ["b"]
    assert len(path.read_text().splitlines()) == 2


def test_the_lock_is_held_even_when_its_holder_line_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlxctl.errors import StateLockHeldError

    lock = StateLock(tmp_path / "lock")
    from mlxctl.reconcile import state_lock as lock_module

    real = lock_module._text
    monkeypatch.setattr(lock_module, "_text", lambda fd: Flaky(real(fd)))
    lock.acquire()
    monkeypatch.undo()
    try:
        with pytest.raises(StateLockHeldError, match="holder unknown"):
            StateLock(tmp_path / "lock").acquire()
    finally:
        lock.release()


def test_a_pass_that_cannot_record_applies_every_action_then_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path)
    world.write(tiers_yaml(tier("a", 8001), tier("b", 8002)))
    assert world.apply().converged
    pids = {name: world.record(name).pid for name in ("a", "b", "gateway")}

    def full(self: Inventory, records: object) -> None:
        raise storage_error(ENOSPC, self.path) or AssertionError

    monkeypatch.setattr(Inventory, "save", full)
    world.write(tiers_yaml().replace("tiers:\n", "tiers: []\n"))
    with pytest.raises(StorageError, match=r"inventory\.json: no space left on device"):
        world.step(allow_empty=True)
    # Every stop was begun (SIGTERM sent) although none could be recorded.
    assert all(not world.procs.procs[pid].alive for pid in pids.values())


def test_down_without_a_writable_state_stops_every_recorded_process(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.write(tiers_yaml(tier("a", 8001), tier("b", 8002)))
    assert world.apply().converged
    records = world.ctx.inventory.load()
    world.procs.ignore_term.add(records["b"].pid)  # a server that ignores SIGTERM

    stopped = stop_recorded(records, world.procs, grace=1.0, clock=world.clock)
    assert {s.name: s.forced for s in stopped} == {"a": False, "b": True, "gateway": False}
    assert all(s.left == 0 for s in stopped)
    assert all(world.procs.remaining(r.identity()) == 0 for r in records.values())


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="/dev/full: a full disk (Linux)")
def test_a_server_drops_output_the_disk_refuses_and_goes_on(tmp_path: Path) -> None:
    """A server's own print or log call never fails on a full disk (mlx_lm.server logs
    every request: it would fail every request); once writing works again, one line
    says how much was lost. ``/dev/full`` refuses every write with ENOSPC."""
    from mlxctl.runtimes.server_log import dropping_text

    log = tmp_path / "fast.log"
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        stream = dropping_text(fd, sys.stderr)
        print("one", file=stream)  # refused by the disk: dropped, nothing raised
        space = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(space, fd)  # space again (the descriptor now reaches a real file)
        os.close(space)
        print("two", file=stream)
    finally:
        os.close(fd)
    assert log.read_text().splitlines() == [
        "[mlxctl: 4 bytes of output dropped: no space left on device]",
        "two",
    ]


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_a_refused_write_to_a_named_state_file_is_a_storage_error_and_nothing_else_is(
    code: int,
) -> None:
    """An unwritable state directory (`chmod -w`, `chattr +i`) is exit 9 like a read-only
    file system, so `down` still stops every server; the same errno from anywhere that
    does not name a state file (a server binary that cannot be executed) is not."""
    refused = OSError(code, os.strerror(code), "/opt/bin/server")
    error = storage_error(refused, "/state/inventory.json")
    assert error is not None and error.exit_code == ExitCode.STORAGE
    assert str(error).startswith("cannot write /state/inventory.json: ")
    assert storage_error(refused) is None
