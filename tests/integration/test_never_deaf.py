"""The controller is never deaf: crashes and edits are acted on while another tier loads.

Before passes became non-blocking, a pass waited inside the executor until every start
was ready, so a ``kill -9`` or a save while a slow tier loaded waited for that tier
(29.3 s and 11.8 s measured). Here the slow tier is a real vllm-mlx server, frozen with
SIGSTOP while it starts so that it stays "loading" for as long as the test needs
(loading takes 3-15 s on this CPU, depending on the load: too short to rely on), and the
fast one a real mlx_lm.server; the event log's timestamps prove the order.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
from tests.integration.conftest import (
    Mlxctl,
    events,
    free_ports,
    pid_alive,
    ready_pid,
    stack_yaml,
    wait_for,
)


def tiers(model: Path, ports: list[int], *, max_tokens: int = 64, slow: bool = True) -> str:
    specs: list[dict[str, Any]] = [
        {
            "name": "fast",
            "runtime": "mlx-lm",
            "model": {"path": str(model)},
            "port": ports[0],
            "args": {"max-tokens": max_tokens},
        }
    ]
    if slow:
        specs.append(
            {"name": "slow", "runtime": "vllm-mlx", "model": {"path": str(model)}, "port": ports[1]}
        )
    return stack_yaml(specs)


def event_ts(ctl: Mlxctl, target: str, kind: str, result: str, after: float = 0.0) -> float | None:
    for event in events(ctl):
        same = (event["target"], event["kind"], event["result"]) == (target, kind, result)
        if same and float(event["ts"]) >= after:
            return float(event["ts"])
    return None


def slow_starting(ctl: Mlxctl) -> bool:
    record = ctl.inventory().get("slow")
    return bool(record and record["pid"] > 0 and record.get("ready_at") is None)


def test_crash_and_edit_are_handled_while_another_tier_loads(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    ports = free_ports(2)
    stack = mlxctl.write("stack.yaml", tiers(tiny_model, ports, slow=False))
    mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", "3600", log=tmp_path / "ctl.log")
    fast = wait_for(lambda: ready_pid(mlxctl), 120, "the fast tier to be ready")

    # A slow tier is added (and held "loading"); meanwhile the fast one is killed.
    stack.write_text(tiers(tiny_model, ports))
    wait_for(lambda: slow_starting(mlxctl), 60, "the slow tier to be starting")
    slow = int(mlxctl.inventory()["slow"]["pid"])
    os.kill(slow, signal.SIGSTOP)
    killed_at = time.time()
    os.kill(fast, signal.SIGKILL)
    healed = wait_for(lambda: ready_pid(mlxctl, other_than=fast), 60, "the fast tier healed")
    replaced = event_ts(mlxctl, "fast", "start", "started", after=killed_at)
    assert replaced is not None and replaced - killed_at < 1.0

    # Still while it loads, an edit to the fast tier is applied.
    assert slow_starting(mlxctl)
    saved_at = time.time()
    stack.write_text(tiers(tiny_model, ports, max_tokens=128))
    wait_for(lambda: ready_pid(mlxctl, other_than=healed), 60, "the edit to be applied")
    restarted = event_ts(mlxctl, "fast", "restart", "ok", after=saved_at)
    # The watcher debounces saves for 0.4 s; the restart follows at once.
    assert restarted is not None and restarted - saved_at < 1.0
    assert mlxctl.inventory()["fast"]["launch"]["args"] == {"max-tokens": 128}

    # Both happened before the slow tier was ready, which it then becomes.
    assert slow_starting(mlxctl) and mlxctl.inventory()["slow"]["pid"] == slow
    os.kill(slow, signal.SIGCONT)
    wait_for(lambda: ready_pid(mlxctl, name="slow"), 180, "the slow tier to be ready")
    slow_ready = event_ts(mlxctl, "slow", "ready", "ok")
    assert slow_ready is not None and slow_ready > restarted > replaced


def test_a_controller_killed_while_a_server_starts_is_followed_by_one_that_adopts_it(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    ports = free_ports(2)
    mlxctl.write("stack.yaml", tiers(tiny_model, ports))
    first = mlxctl.start("reconcile", str(mlxctl.stacks), log=tmp_path / "first.log")
    wait_for(lambda: slow_starting(mlxctl), 60, "the slow tier to be starting")
    starting = mlxctl.inventory()["slow"]["pid"]
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert pid_alive(starting)

    mlxctl.start("reconcile", str(mlxctl.stacks), log=tmp_path / "second.log")
    ready = wait_for(lambda: ready_pid(mlxctl, name="slow"), 180, "the slow tier to be ready")
    # The second controller waited for the server the first one started.
    assert ready == starting
    serving = ["--port", str(ports[1])]
    ours = [
        p
        for p in psutil.process_iter(["cmdline"])
        if _contains(p.info["cmdline"] or [], serving) and _leader(p.pid)
    ]
    assert [p.pid for p in ours] == [starting]  # one server for the tier, no orphan


def _contains(cmdline: list[str], part: list[str]) -> bool:
    return any(cmdline[i : i + len(part)] == part for i in range(len(cmdline)))


def _leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
