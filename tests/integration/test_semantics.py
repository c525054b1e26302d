"""GitOps semantics with real servers: an invalid save never stops healing, and a
suspended tier is left alone even when killed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.integration.conftest import (
    Mlxctl,
    events,
    free_ports,
    pid_alive,
    ready_pid,
    stack_yaml,
    wait_for,
)


def invalid_reports(ctl: Mlxctl) -> list[dict[str, object]]:
    return [e for e in events(ctl) if e["cause"] == "invalid file"]


def test_an_invalid_save_while_a_tier_is_killed_still_heals_it(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    [port] = free_ports(1)
    spec = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}, "port": port}
    mlxctl.write("stack.yaml", stack_yaml([spec]))
    mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", "1", log=tmp_path / "ctl.log")
    first = wait_for(lambda: ready_pid(mlxctl), 120, "the tier to be ready")

    # A typo saved, then the server killed: the last valid version is still healed.
    broken = json.loads(stack_yaml([spec]))
    broken["spec"]["tiers"][0]["runtim"] = broken["spec"]["tiers"][0].pop("runtime")
    mlxctl.write("stack.yaml", json.dumps(broken))
    wait_for(lambda: invalid_reports(mlxctl), 30, "the invalid file to be reported")
    os.kill(first, signal.SIGKILL)
    healed = wait_for(lambda: ready_pid(mlxctl, other_than=first), 120, "the tier to be healed")
    assert healed != first and not pid_alive(first)

    # Reported once, not at every resync (one a second here).
    time.sleep(3)
    (report,) = invalid_reports(mlxctl)
    assert "runtim" in str(report["message"])
    status = mlxctl.run("status", str(mlxctl.stacks))
    assert status.returncode == 0
    assert "invalid:" in status.stderr and "its last valid version is applied" in status.stderr
    assert "fast" in status.stdout and "ready" in status.stdout

    # Suspended: killed, and left alone until resumed.
    mlxctl.write("stack.yaml", stack_yaml([{**spec, "suspend": True}]))
    wait_for(lambda: mlxctl.tier("fast")["sync"] == "Suspended", 30, "Suspended in status")
    os.kill(healed, signal.SIGKILL)
    time.sleep(4)  # four resyncs
    assert mlxctl.inventory()["fast"]["pid"] == healed  # not restarted
    mlxctl.write("stack.yaml", stack_yaml([spec]))
    wait_for(lambda: ready_pid(mlxctl, other_than=healed), 120, "the tier resumed")
