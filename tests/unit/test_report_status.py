"""Plan text, the JSON line stream and status rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxctl.plan.actions import Action, Plan
from mlxctl.status import report
from mlxctl.status.services import build_status, status_json
from tests.unit.world import World, tier, tiers_yaml


def test_plan_text_uses_terraform_symbols_and_a_summary() -> None:
    plan = Plan(
        actions=(
            Action("start", "new", "new tier"),
            Action("restart", "fast", "args changed: max-tokens 512 -> 4096"),
            Action("stop", "old", "removed from the stack"),
        ),
        blocked={"broken": "model /m is not present at /m"},
    )
    lines = report.plan_lines(plan)
    assert lines[0].split() == ["-", "old", "stop", "removed", "from", "the", "stack"]
    assert lines[1].split()[:3] == ["-/+", "fast", "restart"]
    assert lines[2].split()[:3] == ["+", "new", "start"]
    assert lines[3].split()[:3] == ["x", "broken", "blocked"]
    assert lines[-1] == "Plan: 1 to start, 1 to restart, 1 to stop, 1 blocked."
    assert report.plan_lines(Plan()) == ["No changes. The machine matches the stack."]


def test_json_stream_is_versioned_and_self_describing() -> None:
    plan = Plan(actions=(Action("start", "fast", "new tier"),))
    records = [
        report.version_record(),
        *report.plan_stream(plan),
        report.summary_record(plan, (), 1, None),
    ]
    assert [r["type"] for r in records] == ["version", "planned", "summary"]
    assert records[0]["schema"] == "mlxctl.plan/v1"
    assert records[1] == {
        "type": "planned",
        "action": "start",
        "target": "fast",
        "cause": "new tier",
    }
    assert records[2]["changes"] == 1 and records[2]["exit_code"] == 1
    assert records[2]["memory"] is None  # no budget was checked
    assert all(json.loads(report.dumps(r)) == r for r in records)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_status_rows_show_health_and_sync(world: World) -> None:
    from mlxctl.reconcile.passes import observe_state

    world.write(tiers_yaml(tier("fast", 8001), tier("slow", 8002)))
    assert world.apply().converged
    world.procs.crash(world.record("slow").pid)
    world.apply()  # crash #1: restarted at once
    world.procs.crash(world.record("slow").pid)
    world.apply()  # crash #2: backing off 10 s
    world.write(tiers_yaml(tier("fast", 8001, args="{a: 1}"), tier("slow", 8002)))
    desired = world.desired()
    rows = {r.name: r for r in build_status(desired, observe_state(world.ctx, desired))}
    assert (rows["fast"].health, rows["fast"].sync) == ("ready", "OutOfSync")
    assert (rows["slow"].health, rows["slow"].pid) == ("crash-looping", None)
    assert rows["slow"].restarts == 1 and "crash #2" in (rows["slow"].last_error or "")
    assert rows["slow"].restart_in == pytest.approx(10.0, abs=0.5)
    assert rows["fast"].restart_in is None
    assert (rows["gateway"].health, rows["gateway"].sync) == ("ready", "Synced")
    data = status_json(list(rows.values()))
    assert {"name", "pid", "port", "health", "sync"} <= set(data["tiers"][0])
    assert data["gateway"]["name"] == "gateway"
    text = report.status_text(list(rows.values()))
    assert text.splitlines()[0].split()[:4] == ["NAME", "RUNTIME", "HEALTH", "SYNC"]
    slow_line = next(line for line in text.splitlines() if line.startswith("slow"))
    assert "restart in 10s: SIGKILL: killed by SIGKILL" in slow_line


def test_status_without_a_usable_stack_reports_unknown_sync(world: World) -> None:
    from mlxctl.reconcile.passes import observe_state

    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    rows = build_status(None, observe_state(world.ctx, None))
    assert {(r.name, r.health, r.sync) for r in rows} == {
        ("fast", "ready", "Unknown"),
        ("gateway", "ready", "Unknown"),
    }
