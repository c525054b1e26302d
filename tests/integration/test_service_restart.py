"""What a controller restart by a service manager does to the model servers: nothing.

A controller killed with SIGKILL (a crash, an OOM kill, launchd's or systemd's restart of
a wedged job) is followed by one that adopts the servers from the inventory: the same
PIDs serve after its first passes, nothing is started, stopped or restarted. A ``down``
(the controller's suspension) outlives the restart. Then the same through a real
systemd user manager (``mlxctl service install``), where this container allows one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import (
    MLXCTL,
    Mlxctl,
    events,
    free_ports,
    pid_alive,
    ready_pid,
    stack_yaml,
    wait_for,
)

from mlxctl.admin.client import connect
from mlxctl.paths import default_paths

# Event kinds that would mean a server was touched.
TOUCHES = {"start", "restart", "stop", "crash", "evict", "unload"}


def one_tier(model: Path, port: int) -> str:
    return stack_yaml(
        [{"name": "fast", "runtime": "mlx-lm", "model": {"path": str(model)}, "port": port}]
    )


def controller_info(ctl: Mlxctl) -> dict[str, Any] | None:
    """The running controller's ``/v1/controller`` answer (pid, passes), or None."""
    try:
        client = connect(default_paths({"MLXCTL_HOME": str(ctl.home)}))
        return None if client is None else dict(client.call("GET", "/v1/controller"))
    except Exception:  # a controller starting up or going away
        return None


def passes_by(ctl: Mlxctl, pid: int, at_least: int) -> dict[str, Any] | None:
    info = controller_info(ctl)
    return info if info and info["pid"] == pid and info["passes"] >= at_least else None


def touched_after(ctl: Mlxctl, since: float) -> list[dict[str, Any]]:
    return [
        e
        for e in events(ctl)
        if e["ts"] >= since and e["target"] == "fast" and e["kind"] in TOUCHES
    ]


@pytest.mark.slow  # ~25 s: a controller, a tier, two kills and restarts
def test_a_killed_controller_is_followed_by_one_that_reloads_nothing(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    [port] = free_ports(1)
    mlxctl.write("stack.yaml", one_tier(tiny_model, port))
    first = mlxctl.start("reconcile", str(mlxctl.stacks), log=tmp_path / "first.log")
    server = wait_for(lambda: ready_pid(mlxctl), 120, "the tier to be ready")
    record = mlxctl.inventory()["fast"]

    killed_at = time.time()
    first.send_signal(signal.SIGKILL)  # a crash: no clean shutdown, the lock line stays
    first.wait(10)
    assert pid_alive(server)
    second = mlxctl.start("reconcile", str(mlxctl.stacks), log=tmp_path / "second.log")
    # Its first passes (the startup pass and a resync) found the server and kept it.
    wait_for(lambda: passes_by(mlxctl, second.pid, 2), 60, "the new controller's passes")
    assert ready_pid(mlxctl) == server
    after = mlxctl.inventory()["fast"]
    assert (after["pid"], after["create_time"], after["ready_at"]) == (
        record["pid"],
        record["create_time"],
        record["ready_at"],
    )
    assert touched_after(mlxctl, killed_at) == []
    tier = mlxctl.tier("fast")
    assert (tier["sync"], tier["health"]) == ("Synced", "ready"), tier

    # A `down` through the controller suspends it; a crash and restart keeps it down.
    down = mlxctl.run("down")
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not pid_alive(server), 30, "the server to stop")
    second.send_signal(signal.SIGKILL)
    second.wait(10)
    restarted_at = time.time()
    third = mlxctl.start("reconcile", str(mlxctl.stacks), log=tmp_path / "third.log")
    info = wait_for(lambda: passes_by(mlxctl, third.pid, 2), 60, "the third controller's passes")
    assert info["suspended"] is not None and info["suspended"]["by"] == "mlxctl down"
    assert [e for e in touched_after(mlxctl, restarted_at) if e["kind"] == "start"] == []
    assert "fast" not in mlxctl.inventory() or not pid_alive(mlxctl.inventory()["fast"]["pid"])


# -- a real systemd user manager -----------------------------------------------------------

SYSTEMD = Path("/lib/systemd/systemd")


def user_manager_possible() -> str | None:
    """Why a user manager cannot run here, or None. It needs a private mount namespace
    in which ``/run/systemd/system`` exists (``systemd --user`` refuses to run unless
    the system was booted with systemd): root, ``unshare`` and systemd's binary."""
    if sys.platform != "linux":
        return "not Linux"
    if os.geteuid() != 0:
        return "needs root (a private mount namespace for /run/systemd)"
    if not SYSTEMD.exists() or shutil.which("unshare") is None or not shutil.which("systemctl"):
        return "needs systemd and unshare installed"
    return None


class UserManager:
    """``systemd --user`` in a private mount namespace (a tmpfs over /run/systemd with an
    empty ``system`` directory: "booted with systemd" as far as it can tell). systemctl
    outside that namespace reaches it through ``$XDG_RUNTIME_DIR/systemd/private``."""

    def __init__(self, runtime: Path, home: Path) -> None:
        self.runtime = runtime
        self.home = home
        script = (
            "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && "
            f"exec {SYSTEMD} --user"
        )
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(home)}
        env.pop("XDG_CONFIG_HOME", None)
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "--", "sh", "-c", script],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemctl", "--user", *args],
            env={**os.environ, "XDG_RUNTIME_DIR": str(self.runtime)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def show(self) -> dict[str, str]:
        out = self.systemctl("show", "mlxctl.service", "-p", "ActiveState,SubState,MainPID")
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def stop(self) -> None:
        self.systemctl("exit")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main_pid(manager: UserManager, other_than: int = 0) -> int | None:
    state = manager.show()
    pid = int(state.get("MainPID") or 0)
    return pid if state.get("SubState") == "running" and pid not in (0, other_than) else None


@pytest.mark.slow  # ~40 s: a user manager, a controller and a tier, twice
@pytest.mark.skipif(user_manager_possible() is not None, reason=str(user_manager_possible()))
def test_the_systemd_user_unit_for_real(mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path) -> None:
    """install -> systemd runs the controller -> it serves the tier -> kill -9 the
    controller -> systemd restarts it (Restart=on-failure) and the new one adopts the same
    server (KillMode=process) -> status -> uninstall leaves no unit and no process of it."""
    home = tmp_path / "userhome"
    home.mkdir()
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    manager = UserManager(runtime, home)
    env = {**mlxctl.env, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime), "USER": "root"}
    env.pop("XDG_CONFIG_HOME", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MLXCTL, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    try:
        wait_for(lambda: manager.systemctl("show", "-p", "Version").returncode == 0, 20, "systemd")
        [port] = free_ports(1)
        mlxctl.write("stack.yaml", one_tier(tiny_model, port))
        installed = cli("service", "install", str(mlxctl.stacks))
        assert installed.returncode == 0, installed.stderr
        unit = home / ".config/systemd/user/mlxctl.service"
        assert unit.is_file()
        assert "ran: systemctl --user enable --now mlxctl.service" in installed.stdout
        again = cli("service", "install", str(mlxctl.stacks))
        assert "already installed, unchanged" in again.stdout, again.stdout

        first = wait_for(lambda: main_pid(manager), 30, "systemd to run the controller")
        server = wait_for(lambda: ready_pid(mlxctl), 120, "the tier to be ready")
        status = json.loads(cli("service", "status", "-o", "json").stdout)
        assert status["installed"] and status["loaded"] and status["running"]
        assert status["service_pid"] == first == status["controller_pid"]

        killed_at = time.time()
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: main_pid(manager, first), 40, "systemd to restart it")
        wait_for(lambda: passes_by(mlxctl, second, 2), 60, "the new controller's passes")
        assert ready_pid(mlxctl) == server  # the same server: no reload
        assert touched_after(mlxctl, killed_at) == []

        removed = cli("service", "uninstall")
        assert removed.returncode == 0, removed.stderr
        assert not unit.exists()
        assert list(unit.parent.iterdir()) == []
        wait_for(lambda: not pid_alive(second), 30, "the controller to stop")
        assert manager.show().get("ActiveState") == "inactive"
        assert pid_alive(server)  # the servers keep running; `mlxctl down` stops them
        assert mlxctl.run("down").returncode == 0
        assert not pid_alive(server)
    finally:
        manager.systemctl("stop", "mlxctl.service")
        manager.stop()
