"""``mlxctl doctor`` for real: a stack with the tiny model, then a stranger on its port."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.integration.conftest import Mlxctl, free_ports, stack_yaml

NAMES = [
    "runtimes", "mlx backend", "gpu wired limit", "ports", "disk", "memory budget", "hf token",
    "controller", "linger", "admin socket", "state lock", "inventory",
]  # fmt: skip


def test_doctor_checks_this_machine(mlxctl: Mlxctl, tiny_model: Path) -> None:
    [port] = free_ports(1)
    tier = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}, "port": port}
    mlxctl.write("stack.yaml", stack_yaml([tier]))
    done = mlxctl.run("doctor", str(mlxctl.stacks), "-o", "json", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == NAMES and report["ok"] is True
    assert checks["runtimes"]["level"] == "ok" and "mlx-lm" in checks["runtimes"]["detail"]
    assert checks["mlx backend"]["detail"].startswith("CPU")  # this machine: MLX on the CPU
    assert checks["gpu wired limit"]["level"] == "skip"  # Linux
    assert checks["ports"]["level"] == "ok"
    assert checks["linger"]["level"] == "skip"  # no systemd user unit installed here

    with socket.socket() as stranger:  # someone else listens on the tier's port
        stranger.bind(("127.0.0.1", port))
        stranger.listen()
        text = mlxctl.run("doctor", str(mlxctl.stacks), timeout=120)
    assert text.returncode == 1, text.stdout + text.stderr
    line = next(line for line in text.stdout.splitlines() if " ports " in line)
    assert line.startswith("FAIL") and f"{port} (fast) held by" in line and "-> fix:" in line
    assert "problems found" in text.stderr
