"""Every daily command while a real controller (`mlxctl reconcile`) runs, through its
admin socket: status, events -f, diff, reconcile --once, down (and the suspension that
survives the controller's restart), up, gateway key --rotate, models update, and curl."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from tests.integration.conftest import (
    MLXCTL,
    Mlxctl,
    free_ports,
    pid_alive,
    ready_pid,
    stack_yaml,
    wait_for,
)


def start_controller(mlxctl: Mlxctl, log: Path) -> subprocess.Popen[str]:
    proc = mlxctl.start("reconcile", "--interval", "3600", log=log)
    wait_for(lambda: "admin API on" in log.read_text(), 30, "the admin API")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_daily_commands_work_through_a_running_controller(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    port, gateway_port = free_ports(2)
    stacks = mlxctl.home / "config" / "stacks"  # the default directory the controller watches
    stacks.mkdir(parents=True)
    mlxctl.stacks = stacks
    tier = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}, "port": port}
    mlxctl.write("stack.yaml", stack_yaml([tier], gateway={"port": gateway_port}))
    log = tmp_path / "controller.log"
    controller = start_controller(mlxctl, log)
    socket_path = mlxctl.home / "state" / "admin.sock"
    assert oct(socket_path.stat().st_mode & 0o777) == "0o600"

    # reconcile --once asks the controller and waits for its verdict (no exit 6).
    once = mlxctl.run("reconcile", "--once", timeout=180)
    assert once.returncode == 0, once.stderr
    assert "converged" in once.stderr and "fast" in once.stdout
    pid = ready_pid(mlxctl)
    assert pid is not None

    # status, diff, curl on the socket.
    status = json.loads(mlxctl.run("status", "-o", "json").stdout)
    assert [t["health"] for t in status["tiers"]] == ["ready"]
    diff = mlxctl.run("diff")
    assert diff.returncode == 0, diff.stdout + diff.stderr
    curl = subprocess.run(
        ["curl", "-s", "--unix-socket", str(socket_path), "http://mlxctl/v1/ps"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    [row] = json.loads(curl.stdout)["rows"]
    assert row["tier"] == "fast" and row["pid"] == pid and row["rss"] > 0
    ps = mlxctl.run("ps")
    assert ps.returncode == 0 and "fast" in ps.stdout and "IN-FLIGHT" in ps.stdout

    # events -f: the tail, then live lines; stopped by us.
    follower = subprocess.Popen(
        [*MLXCTL, "events", "-f", "-n", "2"], env=mlxctl.env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first.strip()
        rotate = mlxctl.run("gateway", "key", "--rotate")
        assert rotate.returncode == 0 and "rotated (by the controller)" in rotate.stderr
        assert rotate.stdout.startswith("sk-mlxctl-")
        lines = [follower.stdout.readline() for _ in range(2)]
        assert any("rotate" in line for line in [first, *lines]), lines
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)

    # models update: no hub models, nothing to change.
    update = mlxctl.run("models", "update")
    assert update.returncode == 0 and "every locked revision is current" in update.stdout

    # down: servers stopped, the controller stays up, suspended; a restart keeps it so.
    down = mlxctl.run("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "suspended" in down.stderr and not pid_alive(pid)
    assert controller.poll() is None
    stop(controller)
    controller = start_controller(mlxctl, log)
    wait_for(lambda: "suspended by mlxctl down" in log.read_text(), 30, "the suspension")
    note = mlxctl.run("status")
    assert "suspended by mlxctl down" in note.stderr
    assert ready_pid(mlxctl) is None and "fast" not in mlxctl.inventory()

    # reconcile --once resumes it.
    again = mlxctl.run("reconcile", "--once", timeout=180)
    assert again.returncode == 0, again.stderr
    assert ready_pid(mlxctl) is not None
    stop(controller)
    assert not socket_path.exists()  # removed on exit


def test_load_and_unload_need_a_controller(mlxctl: Mlxctl) -> None:
    for command in ("load", "unload"):
        done = mlxctl.run(command, "fast")
        assert done.returncode == 10
        assert done.stderr.strip().splitlines() == [
            f"error: `mlxctl {command}` needs a running controller: start it with "
            "`mlxctl reconcile`"
        ]
    ps = mlxctl.run("ps")
    assert ps.returncode == 0 and "no controller runs" in ps.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_long_home_gets_a_short_socket_that_curl_reaches(tmp_path: Path) -> None:
    home = tmp_path / ("h" * 50) / ("o" * 50)
    ctl = Mlxctl(home=home, stacks=home / "config" / "stacks")
    ctl.stacks.mkdir(parents=True)
    log = tmp_path / "controller.log"
    try:
        proc = start_controller(ctl, log)
        socket_path = Path(log.read_text().split("admin API on ")[1].split()[0])
        assert socket_path.parent.name.startswith("mlxctl-") and len(str(socket_path)) < 104
        curl = subprocess.run(
            ["curl", "-s", "--unix-socket", str(socket_path), "http://x/v1/controller"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(curl.stdout)["pid"] == proc.pid
        assert ctl.run("status").returncode == 0
        stop(proc)
        assert not socket_path.exists()
    finally:
        ctl.cleanup()
