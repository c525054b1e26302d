"""Issue 15, the state directory's boundary, for real (rows 5, 8, 9 and 12).

- ``down`` with ``MLXCTL_HOME`` pointing at a copy of a state directory touches none
  of the original's servers (the copy's records name them, with the right PID, start
  time, command line and instance marker: only the state marker tells them apart); the
  original's own ``down`` still stops them (a legitimately started server carries it).
- ``down`` on a read-only state directory still stops every server, then exits 9 with
  one line; a user's process (a ``sleep``) is never touched.
- The controller keeps healing while bad state files sit in the directory, and stays
  cool (row 9); a port another program holds is reassigned or waited for (row 12).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from tests.integration.conftest import (
    Mlxctl,
    events,
    free_ports,
    pid_alive,
    ready_pid,
    stack_yaml,
    wait_for,
)
from tests.integration.marked import ours

pytestmark = pytest.mark.integration

STORAGE = 9


def tier(name: str, port: int, model: Path) -> dict[str, object]:
    return {"name": name, "runtime": "mlx-lm", "model": {"path": str(model)}, "port": port}


def up(mlxctl: Mlxctl, model: Path, n: int) -> list[int]:
    ports = free_ports(n)
    tiers = [tier(f"t{i}", port, model) for i, port in enumerate(ports)]
    mlxctl.write("stack.yaml", stack_yaml(tiers))
    result = mlxctl.run("reconcile", "--once", str(mlxctl.stacks))
    assert result.returncode == 0, result.stdout + result.stderr
    pids = [int(r["pid"]) for r in mlxctl.inventory().values()]
    assert len(pids) == n and all(pid_alive(p) for p in pids)
    return pids


def test_down_through_a_copy_of_the_state_directory_touches_nothing_of_the_original(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path, stranger: subprocess.Popen[bytes]
) -> None:
    pids = up(mlxctl, tiny_model, 1)
    members = {p.pid for p in ours(mlxctl)}
    copy = Mlxctl(home=tmp_path / "copy-home", stacks=mlxctl.stacks)
    shutil.copytree(mlxctl.home / "state", copy.home / "state", symlinks=True)

    seen = copy.run("status", "-o", "json")
    assert seen.returncode == 0, seen.stderr
    down = copy.run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Traceback" not in down.stderr
    assert all(pid_alive(p) for p in members), down.stdout + down.stderr
    assert {p.pid for p in ours(mlxctl)} == members

    own = mlxctl.run("down")
    assert own.returncode == 0, own.stdout + own.stderr
    assert not [p for p in pids if pid_alive(p)] and not ours(mlxctl)
    assert stranger.poll() is None


def test_down_with_an_unusable_inventory_still_stops_what_carries_our_markers(
    mlxctl: Mlxctl, tiny_model: Path, stranger: subprocess.Popen[bytes]
) -> None:
    """A record doctored to name the user's ``sleep`` with a NaN start time makes the
    inventory unusable: ``down`` says so in one line (exit 4), never signals the
    ``sleep``, and still stops the servers that carry this state directory's markers."""
    pids = up(mlxctl, tiny_model, 1)
    path = mlxctl.home / "state" / "inventory.json"
    data = json.loads(path.read_text())
    doctored = dict(next(iter(data["services"].values())))
    doctored.update(
        name="user",
        pid=stranger.pid,
        pgid=stranger.pid,
        cmdline=["sleep", "1000"],
        create_time=float("nan"),
    )
    data["services"]["user"] = doctored
    path.write_text(json.dumps(data))  # NaN, as json writes it
    down = mlxctl.run("down")
    assert down.returncode == 4, down.stdout + down.stderr
    errors = [line for line in down.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a usable inventory" in errors[0], down.stderr
    assert "Traceback" not in down.stderr
    assert not [p for p in pids if pid_alive(p)] and not ours(mlxctl), down.stdout
    assert stranger.poll() is None


@pytest.fixture(params=["read-only mount", "immutable"])
def read_only(
    request: pytest.FixtureRequest, mlxctl: Mlxctl
) -> Iterator[tuple[Callable[[], Path], str]]:
    """Make ``mlxctl``'s state directory unwritable once the test says so: a bind mount
    over itself remounted read-only (EROFS), or ``chattr +i`` (EPERM; modes do not bind
    root); undone whatever happens. Yields the maker and the reason ``down`` names."""
    state = mlxctl.home / "state"
    undo: list[list[str]] = []

    def make() -> Path:
        if request.param == "immutable":
            if shutil.which("chattr") is None:
                pytest.skip("no chattr here")
            subprocess.run(["chattr", "+i", str(state)], check=True)
            undo.append(["chattr", "-i", str(state)])
            return state
        bound = subprocess.run(["mount", "--bind", str(state), str(state)], capture_output=True)
        if bound.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
        undo.append(["umount", "-l", str(state)])
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        return state

    reason = "read-only" if request.param == "read-only mount" else "operation not permitted"
    try:
        yield make, reason
    finally:
        for command in undo:
            subprocess.run(command, check=False)


def test_down_on_a_read_only_state_directory_stops_every_server(
    mlxctl: Mlxctl,
    tiny_model: Path,
    read_only: tuple[Callable[[], Path], str],
    stranger: subprocess.Popen[bytes],
) -> None:
    make_read_only, reason = read_only
    pids = up(mlxctl, tiny_model, 2)
    assert len(ours(mlxctl)) == 2  # the two servers (nothing beside them)
    state = make_read_only()
    probe = state / "probe"
    with pytest.raises(OSError):
        probe.write_text("x")

    down = mlxctl.run("down")
    assert down.returncode == STORAGE, down.stdout + down.stderr
    assert "Traceback" not in down.stderr, down.stderr
    errors = [line for line in down.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0], down.stderr
    assert not [p for p in pids if pid_alive(p)], down.stdout + down.stderr
    assert not ours(mlxctl)
    assert stranger.poll() is None


def test_the_controller_heals_a_killed_tier_while_bad_state_files_sit_there(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    """Row 9: job files with ``owner_pid: 1e400`` and ``identity: [1]``, a FIFO job file
    and a ``ports.json`` holding 70000, -1 and 10**29: each is set aside or repaired
    with one event, the controller stays cool and heals a killed tier, and ``status``
    answers."""
    [port] = free_ports(1)
    mlxctl.write("stack.yaml", stack_yaml([tier("t0", port, tiny_model)]))
    log = tmp_path / "controller.log"
    ctl = mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", "1", log=log)
    first = wait_for(lambda: ready_pid(mlxctl, name="t0"), 120, "t0 ready")

    state = mlxctl.home / "state"
    jobs = state / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "00000000000000a1.json").write_text(
        '{"identity": "x", "display": "x", "started_at": 1.0, "owner_pid": 1e400, '
        '"owner_created": 1.0}'
    )
    (jobs / "00000000000000a2.json").write_text(
        '{"identity": [1], "display": "x", "started_at": 1.0, "owner_pid": 1, "owner_created": 1.0}'
    )
    os.mkfifo(jobs / "00000000000000a3.json")
    (state / "ports.json").write_text('{"x": 70000, "y": -1, "z": 100000000000000000000000000000}')

    os.kill(first, signal.SIGKILL)
    healed = wait_for(lambda: ready_pid(mlxctl, other_than=first, name="t0"), 60, "t0 healed")
    assert healed != first

    controller = psutil.Process(ctl.pid)
    controller.cpu_percent(None)
    time.sleep(3.0)  # three resyncs
    cpu = controller.cpu_percent(None)
    assert cpu < 30, f"controller at {cpu:.0f}% CPU"

    status = mlxctl.run("status", str(mlxctl.stacks), timeout=20)
    assert status.returncode == 0, status.stderr
    assert "Traceback" not in log.read_text(), log.read_text()
    unusable = [e for e in events(mlxctl) if e["kind"] == "state"]
    assert sorted(Path(str(e["target"])).name for e in unusable) == [
        "00000000000000a1.json",
        "00000000000000a2.json",
        "00000000000000a3.json",
        "ports.json",
    ], unusable
    assert sorted(p.name for p in jobs.iterdir()) == [
        "00000000000000a1.json.bad",
        "00000000000000a2.json.bad",
        "00000000000000a3.json.bad",
    ]
    assert json.loads((state / "ports.json").read_text()) == {"t0": port}
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(30) == 0


def test_an_automatic_port_taken_is_reassigned_and_a_declared_one_waits_for_its_owner(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    """Row 12, for real: another program (a plain listening socket) holds the port
    ``ports.json`` remembers for ``auto`` and the one ``fixed`` declares. ``auto`` starts
    on another port; ``fixed`` is blocked, with one event, no start attempted, until the
    socket closes, then it starts."""
    held_auto, held_fixed = free_ports(2)
    squatters = [socket.socket(), socket.socket()]
    for sock, port in zip(squatters, (held_auto, held_fixed), strict=True):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    try:
        state = mlxctl.home / "state"
        state.mkdir(parents=True)
        (state / "ports.json").write_text(json.dumps({"auto": held_auto}))
        auto = {"name": "auto", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}}
        mlxctl.write("stack.yaml", stack_yaml([auto, tier("fixed", held_fixed, tiny_model)]))
        log = tmp_path / "controller.log"
        ctl = mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", "1", log=log)
        wait_for(lambda: ready_pid(mlxctl, name="auto"), 120, "auto ready")
        assert mlxctl.inventory()["auto"]["port"] != held_auto
        time.sleep(3.0)  # three resyncs with the declared port held
        assert "fixed" not in mlxctl.inventory()
        blocked = [e for e in events(mlxctl) if e["kind"] == "blocked"]
        assert [(e["target"], e["cause"]) for e in blocked] == [("fixed", "blocked")]
        assert f"port {held_fixed} is held by" in str(blocked[0]["message"])
        assert not [e for e in events(mlxctl) if e["result"] == "failed"]
        squatters.pop().close()
        wait_for(lambda: ready_pid(mlxctl, name="fixed"), 120, "fixed ready once its port is free")
        ctl.send_signal(signal.SIGTERM)
        assert ctl.wait(30) == 0
    finally:
        for sock in squatters:
            sock.close()
