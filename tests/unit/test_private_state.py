"""The state directory is 0700 and its files 0600, created so and repaired at start (#11 row 8).

Logs, events, the inventory, the gateway's config, ports and the lock hold command
lines, errors and where the gateway key is: no other user of the machine reads them.
The tests run under umask 022, the usual default, under which files would be 0644.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlxctl.apply.events import Event, EventLog
from mlxctl.machine.inventory import write_atomic
from mlxctl.machine.logfiles import open_log
from mlxctl.paths import default_paths
from mlxctl.reconcile.context import real_context, save_ports
from mlxctl.reconcile.state_lock import StateLock


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_writer_creates_private_files_in_private_directories(tmp_path: Path) -> None:
    paths = default_paths()
    write_atomic(paths.gateway / "config.yaml", "{}\n")
    EventLog(paths.events).emit(Event(ts=1.0, kind="start", target="a", cause="c", result="ok"))
    with open_log(paths.logs / "a.log", ["x"], 0.0):
        pass
    save_ports(paths, {"a": 8001})
    with StateLock(paths.lock, command="test"):
        pass
    for path in (
        paths.gateway / "config.yaml",
        paths.events,
        paths.logs / "a.log",
        paths.ports,
        paths.lock,
    ):
        assert mode(path) == 0o600, path
    for directory in (paths.state, paths.gateway, paths.logs):
        assert mode(directory) == 0o700, directory


def test_a_server_creates_its_rotated_logs_private(tmp_path: Path) -> None:
    from mlxctl.runtimes.server_log import Rotation

    log = tmp_path / "logs" / "a.log"
    with open_log(log, ["srv"], 0.0) as handle:
        fd = os.dup(handle.fileno())
    try:
        os.write(fd, b"line one\n" * 20)
        assert Rotation(log, (fd,), max_bytes=50, keep=2).rotate_if_due()
        os.write(fd, b"line two\n")
    finally:
        os.close(fd)
    assert log.read_text() == "line two\n"
    assert mode(log) == 0o600 and mode(log.with_name("a.log.1")) == 0o600


def test_an_old_public_state_directory_is_repaired_at_start(tmp_path: Path) -> None:
    paths = default_paths()
    for directory in (paths.state, paths.logs, paths.gateway, paths.models):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
    public = [paths.inventory, paths.events, paths.ports, paths.logs / "a.log",
              paths.gateway / "config.yaml"]  # fmt: skip
    for path in public:
        path.write_text("{}")
        path.chmod(0o644)
    real_context(paths)
    for path in public:
        assert mode(path) == 0o600, path
    for directory in (paths.state, paths.logs, paths.gateway, paths.models):
        assert mode(directory) == 0o700, directory


def test_repair_leaves_modes_that_are_already_private(tmp_path: Path) -> None:
    paths = default_paths()
    paths.state.mkdir(parents=True)
    paths.state.chmod(0o700)
    key = paths.inventory
    key.write_text("{}")
    key.chmod(0o400)  # stricter than 0600: kept
    paths.secure_state()
    assert mode(key) == 0o400
