"""Nothing is ever unowned: a crash or a failed write between a spawn and its record.

A start writes its intent record (PID 0, with the instance marker its processes will
carry) before spawning, then the PID. Here the second write never happens, with real
processes: the controller is SIGKILLed the moment its server is spawned, or every
inventory write after the spawn fails with ENOSPC. The next run adopts the server
(one server per tier, never a second one on the same port), and ``down`` stops it:
no process carrying this state directory's marker is left.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.integration.conftest import Mlxctl, free_ports, stack_yaml, wait_for
from tests.integration.marked import ours, server_leaders

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def run_faulty(ctl: Mlxctl, fault: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.faulty_mlxctl", fault, *args],
        env={**ctl.env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def one_tier(ctl: Mlxctl, model: Path) -> None:
    [port] = free_ports(1)
    spec = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(model)}, "port": port}
    ctl.write("stack.yaml", stack_yaml([spec]))


def assert_adopted_then_stopped(ctl: Mlxctl) -> None:
    intent = ctl.inventory()["fast"]
    assert intent["pid"] == 0 and intent["instance"], intent  # the PID was never recorded
    [orphan] = wait_for(lambda: server_leaders(ctl), 30, "the spawned server")

    again = ctl.run("reconcile", "--once", str(ctl.stacks))
    assert again.returncode == 0, again.stdout + again.stderr
    assert ctl.inventory()["fast"]["pid"] == orphan  # adopted, not started a second time
    assert server_leaders(ctl) == {orphan}

    down = ctl.run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not ours(ctl), [p.pid for p in ours(ctl)]
    assert ctl.inventory() == {}


def test_controller_killed_right_after_a_spawn_leaves_a_server_the_next_run_adopts(
    mlxctl: Mlxctl, tiny_model: Path
) -> None:
    one_tier(mlxctl, tiny_model)
    killed = run_faulty(mlxctl, "kill-after-spawn", "reconcile", str(mlxctl.stacks))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_adopted_then_stopped(mlxctl)


def test_an_inventory_write_failing_after_a_spawn_leaves_a_server_the_next_run_adopts(
    mlxctl: Mlxctl, tiny_model: Path
) -> None:
    one_tier(mlxctl, tiny_model)
    failed = run_faulty(mlxctl, "enospc-after-spawn", "reconcile", "--once", str(mlxctl.stacks))
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr, failed.stderr
    assert "no space left" in failed.stderr.lower(), failed.stdout + failed.stderr
    assert_adopted_then_stopped(mlxctl)


def test_down_stops_a_marked_server_that_no_record_names(mlxctl: Mlxctl, tiny_model: Path) -> None:
    """The intent record leaves no window; a record can still be lost (the inventory
    deleted by hand): the server carries this state directory's marker and ``down``
    finds it by that."""
    one_tier(mlxctl, tiny_model)
    up = mlxctl.run("reconcile", "--once", str(mlxctl.stacks))
    assert up.returncode == 0, up.stdout + up.stderr
    [server] = server_leaders(mlxctl)
    (mlxctl.home / "state" / "inventory.json").unlink()

    down = mlxctl.run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert f"fast (no record; group {server}): pid {server} stopped" in down.stdout, down.stdout
    assert not ours(mlxctl), [p.pid for p in ours(mlxctl)]
