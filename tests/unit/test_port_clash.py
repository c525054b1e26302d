"""Issue 15 row 12: a port another program holds.

Decision-table rows for the pure planner (a declared port held -> blocked, no start;
held by our own process -> no conflict), then the whole pass on the fake machine: an
automatic port remembered in ``ports.json`` and taken since is reassigned and the
gateway's routes follow; a declared one blocks the tier, with one event when that
state begins and one when it ends, however many passes run meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from mlxctl.desired.state import DesiredState
from mlxctl.machine.clock import SystemClock
from mlxctl.observe.state import ObservedState
from mlxctl.plan.actions import PlanOptions
from mlxctl.plan.planner import plan
from mlxctl.reconcile.controller import Controller
from tests.unit.test_planner_jobs import NOW, record, seen, service
from tests.unit.world import World, tier, tiers_yaml

STRANGER = "pid 4242 (nginx)"


def decide(held: dict[int, str], *observed: object) -> tuple[list[tuple[str, str]], dict[str, str]]:
    state = ObservedState(
        now=NOW,
        services={s.record.name: s for s in observed},  # type: ignore[attr-defined]
        ports_held=held,
    )
    wanted = DesiredState(tiers=(service("fast"),), gateway=None)
    the_plan = plan(wanted, state, PlanOptions(allow_empty=True))
    return [(a.kind, a.reason) for a in the_plan.actions], dict(the_plan.blocked)


def test_row_new_tier_declared_port_free_starts() -> None:
    assert decide({}) == ([("start", "")], {})


def test_row_new_tier_declared_port_held_by_another_program_is_blocked_not_started() -> None:
    actions, blocked = decide({8001: STRANGER})
    assert actions == [("wait", "port")]
    assert blocked == {"fast": f"port 8001 is held by {STRANGER}"}


def test_row_crashed_tier_whose_port_was_taken_is_blocked_not_restarted() -> None:
    dead = seen(record(died_at=NOW - 100, not_before=NOW - 50, consecutive_crashes=1), alive=False)
    actions, blocked = decide({8001: STRANGER}, dead)
    assert ("start", "") not in actions and ("wait", "port") in actions
    assert blocked == {"fast": f"port 8001 is held by {STRANGER}"}


def test_row_running_tier_is_left_alone_whatever_the_port_says() -> None:
    ready = seen(record(ready_at=NOW - 1), health="ready")
    assert decide({}, ready) == ([], {})


def stack_with_gateway(b_port: str = "") -> str:
    b = f"- name: b\n  runtime: mlx-lm\n  model: {{path: /m}}\n{b_port}"
    return tiers_yaml(tier("a", 8005), b, gateway="{port: 4000}")


def test_an_automatic_port_taken_by_another_program_is_reassigned_and_routes_follow(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.write(stack_with_gateway())
    world.ctx.paths.state.mkdir(parents=True)
    world.ctx.paths.ports.write_text(json.dumps({"b": 8001}))  # from an earlier run
    world.procs.busy_ports[8001] = STRANGER
    result = world.apply()
    assert result.exit_code == 0, result.last.plan.blocked
    moved = world.record("b").port
    assert moved not in (8001, 8005, 4000)
    assert json.loads(world.ctx.paths.ports.read_text())["b"] == moved
    gateway = world.desired().gateway
    assert gateway is not None
    ((_, text),) = gateway.files
    ports = {r["name"]: r["port"] for r in json.loads(text)["routes"]}
    assert ports == {"a": 8005, "b": moved}


def test_a_tier_keeps_its_automatic_port_while_its_own_server_holds_it(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.write(stack_with_gateway())
    assert world.apply().exit_code == 0
    port = world.record("b").port
    # Its own server listens there now (the fake answers port_owner for it).
    assert world.procs.port_owner(port) is not None
    world.step()
    assert world.record("b").port == port
    kept = world.desired().get("b")
    assert kept is not None and kept.port == port


def test_a_declared_port_held_blocks_with_one_event_per_change(tmp_path: Path) -> None:
    """The controller, for real time and a short resync: no start is attempted while the
    port is held (so no failure per pass), one event when it became blocked, one when the
    port was freed, and then the tier starts."""
    world = World(tmp_path)
    world.ctx.clock = SystemClock()
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.procs.busy_ports[8001] = STRANGER
    ctl = Controller(
        world.ctx, [world.stacks], PlanOptions(), interval=0.1, poll_interval=0.05, log=print
    )
    runner = threading.Thread(target=ctl.run, daemon=True)
    runner.start()
    try:
        time.sleep(1.0)  # about ten resyncs
        assert world.procs.procs == {}
        del world.procs.busy_ports[8001]
        deadline = time.monotonic() + 5
        while not world.procs.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert world.procs.running()
    finally:
        ctl.stop()
        runner.join(5)
    lines = world.ctx.paths.events.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    blocked = [(e["cause"], e.get("message", "")) for e in events if e["kind"] == "blocked"]
    assert blocked == [
        ("blocked", f"port 8001 is held by {STRANGER}"),
        ("no longer blocked", ""),
    ]
    assert not [e for e in events if e["result"] == "failed"]
