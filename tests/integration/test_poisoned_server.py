"""A real mlx_lm.server poisoned by one request is replaced at once, without a crash counted.

One chat completion with ``"stop": 123`` sent straight to the backend port kills
mlx_lm.server's generation thread: the process keeps running and every completion
then fails. The controller (within one resync) and ``reconcile --once`` replace it,
the crash-loop count does not grow, and the crash event says a request caused it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tests.integration.conftest import (
    Mlxctl,
    events,
    free_ports,
    pid_alive,
    ready_pid,
    stack_yaml,
    tier_key_headers,
    wait_for,
)

from mlxctl.plan.planner import BY_REQUEST

pytestmark = pytest.mark.integration

POISON = {
    "model": "default_model",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 1,
    "stop": 123,
}


def post(ctl: Mlxctl, port: int, body: dict[str, object]) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **tier_key_headers(ctl, "fast")},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def poison(ctl: Mlxctl, port: int) -> None:
    """Send the poison, and check it really broke the server (every completion fails)."""
    post(ctl, port, POISON)
    status, body = post(ctl, port, {**POISON, "stop": ["\n"]})
    assert status == 404 and "generation thread died" in body, (status, body)


def write_stack(ctl: Mlxctl, model: Path) -> int:
    [port] = free_ports(1)
    spec = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(model)}, "port": port}
    ctl.write("stack.yaml", stack_yaml([spec]))
    return port


def crash_events(ctl: Mlxctl) -> list[dict[str, object]]:
    return [e for e in events(ctl) if e["kind"] == "crash" and e["target"] == "fast"]


def test_the_controller_replaces_a_poisoned_server_within_one_resync(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    interval = 3
    port = write_stack(mlxctl, tiny_model)
    mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", str(interval), log=tmp_path / "c")
    first = wait_for(lambda: ready_pid(mlxctl), 120, "the tier to be ready")
    time.sleep(interval + 1)  # it has been probed live once at least: a steady state

    poisoned_at = time.time()
    poison(mlxctl, port)
    healed = wait_for(lambda: ready_pid(mlxctl, other_than=first), 120, "a replacement")

    assert not pid_alive(first)
    [crash] = crash_events(mlxctl)
    assert str(crash["cause"]).startswith(BY_REQUEST), crash
    assert "generation thread died" in str(crash["cause"])
    # Noticed within one resync (plus the probe's own time), not after 3 failed probes.
    noticed = float(str(crash["ts"])) - poisoned_at
    replaced = float(str(mlxctl.inventory()["fast"]["ready_at"])) - poisoned_at
    print(f"poisoned -> crash event {noticed:.2f}s, -> replacement ready {replaced:.2f}s")
    assert noticed <= interval * 1.1 + 2.5, crash
    record = mlxctl.inventory()["fast"]
    assert record["pid"] == healed
    assert record["consecutive_crashes"] == 0 and record["restarts"] == 1
    tier = mlxctl.tier("fast")
    assert tier["health"] == "ready" and tier["restart_in"] is None
    # It serves again.
    assert post(mlxctl, port, {**POISON, "stop": ["\n"]})[0] == 200


def test_reconcile_once_replaces_a_poisoned_server(mlxctl: Mlxctl, tiny_model: Path) -> None:
    port = write_stack(mlxctl, tiny_model)
    up = mlxctl.run("reconcile", "--once", str(mlxctl.stacks))
    assert up.returncode == 0, up.stderr
    first = int(mlxctl.inventory()["fast"]["pid"])

    poison(mlxctl, port)
    diff = mlxctl.run("diff", str(mlxctl.stacks))
    assert diff.returncode == 1 and BY_REQUEST in diff.stdout, diff.stdout + diff.stderr

    again = mlxctl.run("reconcile", "--once", str(mlxctl.stacks), "-o", "json")
    assert again.returncode == 0, again.stdout + again.stderr
    record = mlxctl.inventory()["fast"]
    assert record["pid"] != first and not pid_alive(first)
    assert record["consecutive_crashes"] == 0
    [crash] = crash_events(mlxctl)
    assert str(crash["cause"]).startswith(BY_REQUEST)
    assert post(mlxctl, port, {**POISON, "stop": ["\n"]})[0] == 200
