"""The controller (`mlxctl reconcile`) driven by real file saves and real crashes."""

from __future__ import annotations

import os
import signal
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


def one_tier(model: Path, port: int, max_tokens: int) -> str:
    return stack_yaml(
        [
            {
                "name": "fast",
                "runtime": "mlx-lm",
                "model": {"path": str(model)},
                "port": port,
                "args": {"max-tokens": max_tokens},
            },
        ]
    )


def restarts(ctl: Mlxctl) -> int:
    """How many restarts the controller has begun (from its event log)."""
    return sum(1 for e in events(ctl) if e["kind"] == "restart")


def test_controller_heals_follows_saves_and_ignores_invalid_edits(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    [port] = free_ports(1)
    stack = mlxctl.write("stack.yaml", one_tier(tiny_model, port, 64))
    log = tmp_path / "controller.log"
    controller = mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", "3600", log=log)
    pid = wait_for(lambda: ready_pid(mlxctl), 120, "the tier to be ready")

    # The lock names its holder: a second controller is refused; `reconcile --once` of
    # other files too (the controller would undo them), naming the controller.
    second = mlxctl.run("reconcile", "--once", str(mlxctl.stacks / "other.yaml"))
    assert second.returncode == 6 and f"pid {controller.pid}" in second.stderr

    # kill -9: noticed and healed.
    os.kill(pid, signal.SIGKILL)
    healed = wait_for(lambda: ready_pid(mlxctl, other_than=pid), 60, "the tier to be restarted")
    # The pass that restarted it wrote its "crash" event first (the executor applies a
    # crash before a start), so it is there to read now: with the exit status, which the
    # controller, the server's parent, reads whichever of its threads looks first.
    crashes = [e for e in events(mlxctl) if e["kind"] == "crash" and e["target"] == "fast"]
    assert [(c["exit_cause"]["exit_code"], c["exit_cause"]["signal"]) for c in crashes] == [
        (-9, "SIGKILL")
    ], crashes

    # A save by rename (as editors do): one reconcile restarts the tier with the new args.
    tmp = mlxctl.stacks / ".stack.yaml.swp"
    tmp.write_text(one_tier(tiny_model, port, 128))
    os.replace(tmp, stack)
    edited = wait_for(lambda: ready_pid(mlxctl, other_than=healed), 60, "the edit to be applied")
    assert mlxctl.inventory()["fast"]["launch"]["args"] == {"max-tokens": 128}
    assert restarts(mlxctl) == 1  # one save, one reconcile, one restart

    # A save by truncate-and-write: applied once, with the final content.
    with open(stack, "w") as handle:
        handle.write(one_tier(tiny_model, port, 256))
    wait_for(lambda: ready_pid(mlxctl, other_than=edited), 60, "the second edit to be applied")
    assert mlxctl.inventory()["fast"]["launch"]["args"] == {"max-tokens": 256}
    assert restarts(mlxctl) == 2
    current = mlxctl.inventory()["fast"]["pid"]

    # An invalid edit is reported and changes nothing: its last valid version stays applied.
    stack.write_text(
        one_tier(tiny_model, port, 512).replace('"runtime": "mlx-lm"', '"runtime": "mlx"')
    )
    wait_for(lambda: "invalid:" in log.read_text(), 30, "the invalid edit to be reported")
    assert "its last valid version is applied" in log.read_text()
    assert mlxctl.inventory()["fast"]["pid"] == current and pid_alive(current)

    # SIGTERM ends the loop cleanly; servers keep running until `down`.
    controller.send_signal(signal.SIGTERM)
    assert controller.wait(30) == 0
    assert pid_alive(current)
    assert "restart" in log.read_text()
    assert mlxctl.run("down").returncode == 0
    assert not pid_alive(current)
