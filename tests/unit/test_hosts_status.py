"""Issue 20: what ``diff``, ``reconcile``, ``status``, ``render`` and ``models pull`` make
of another machine's tiers on the fake machine (docs/multi-host.md): named with their
host and left alone; a tier moved to another machine is stopped here; one that never
ran here is never pruned; each machine pulls only its own tiers' models."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxctl.app import stacks
from mlxctl.reconcile.passes import load_stack
from mlxctl.status import report
from mlxctl.status.services import status_json
from tests.unit.test_hosts import STACK, world_on


def test_each_machine_starts_its_own_tiers_and_names_the_others_in_the_plan(
    tmp_path: Path,
) -> None:
    studio = world_on(tmp_path, "studio")
    plan = studio.plan()
    assert {(a.kind, a.target) for a in plan.actions if a.changes} == {
        ("start", "big"),
        ("start", "gateway"),
    }
    lines = report.plan_lines(plan)
    assert any(line.split()[:4] == ["@", "fast", "elsewhere", "on"] for line in lines), lines
    assert "This machine is host 'studio'." in lines
    records = report.plan_stream(plan)
    assert {"type": "elsewhere", "target": "fast", "host": "laptop"} in records
    assert report.summary_record(plan, (), 1, None)["host"] == "studio"
    result = studio.apply()
    assert result.converged
    assert set(studio.ctx.inventory.load()) == {"big", "gateway"}


def test_a_tier_moved_to_another_machine_is_stopped_here(tmp_path: Path) -> None:
    studio = world_on(tmp_path, "studio")
    assert studio.apply().converged
    # big moves to the laptop (its port too, since fast holds 8001 there).
    moved = STACK.replace("      host: studio\n", "      host: laptop\n", 1).replace(
        "      port: 8001\n", "      port: 8002\n", 1
    )
    studio.write(moved.replace("MODELS", str(studio.models)))
    plan = studio.plan()
    stops = [(a.kind, a.target, a.cause) for a in plan.actions if a.kind == "stop"]
    assert stops == [("stop", "big", "moved to host 'laptop'")]
    # Every tier is elsewhere now: not an empty stack, so no --allow-empty refusal; the
    # gateway still runs, routing to the laptop.
    assert plan.refused is None
    result = studio.apply()
    assert result.converged and set(studio.ctx.inventory.load()) == {"gateway"}
    assert studio.desired().elsewhere == {"big": "laptop", "fast": "laptop"}
    # On the laptop, big is new: started there.
    laptop = world_on(tmp_path, "laptop", moved)
    starts = {a.target for a in laptop.plan().actions if a.kind == "start"}
    assert starts == {"big", "fast", "gateway"}


def test_a_tier_that_never_ran_here_is_never_pruned_here(tmp_path: Path) -> None:
    laptop = world_on(tmp_path, "laptop")
    assert laptop.apply().converged
    again = laptop.plan()
    assert not again.has_changes
    assert not [a for a in again.actions if a.target == "big"]
    assert report.summary_line(again) == "No changes. The machine matches the stack."


def test_status_names_the_host_of_every_tier_and_leaves_the_others_alone(tmp_path: Path) -> None:
    studio = world_on(tmp_path, "studio")
    assert studio.apply().converged
    result = stacks.status(studio.ctx, [studio.stacks])
    by_name = {r.name: r for r in result.rows}
    assert (by_name["big"].host, by_name["big"].health) == ("studio", "ready")
    fast = by_name["fast"]
    assert (fast.host, fast.health, fast.sync, fast.pid) == ("laptop", "elsewhere", "Elsewhere",
                                                             None)  # fmt: skip
    assert by_name["gateway"].host == "studio"
    text = report.status_text(result.rows)
    header, *rows = text.splitlines()
    assert header.split()[:3] == ["NAME", "HOST", "RUNTIME"]
    fast_line = next(r for r in rows if r.startswith("fast"))
    assert fast_line.split() == [
        "fast", "laptop", "-", "elsewhere", "Elsewhere", "-", "-", "-", "0",
        "served", "by", "host", "'laptop'",
    ]  # fmt: skip
    data = status_json(result.rows, result.invalid, result.host)
    assert data["host"] == "studio"
    assert {t["name"]: t["host"] for t in data["tiers"]} == {"big": "studio", "fast": "laptop"}


@pytest.mark.parametrize("host", ["studio", "laptop"])
def test_render_writes_the_hosts_and_its_output_validates(tmp_path: Path, host: str) -> None:
    world = world_on(tmp_path, host)
    stack = load_stack([world.stacks])
    docs = stacks.render(world.ctx.paths, stack)
    spec = docs[0]["spec"]
    assert [h["name"] for h in spec["hosts"]] == ["studio", "laptop"]
    assert spec["hosts"][1]["gatewayPort"] == 4100
    assert {t["name"]: t["host"] for t in spec["tiers"]} == {"big": "studio", "fast": "laptop"}
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    (rendered / "all.yaml").write_text(stacks.render_yaml(world.ctx.paths, stack, docs))
    again = load_stack([rendered])
    assert [t.host for t in again.tiers] == ["studio", "laptop"]


def test_models_pull_produces_only_this_machines_tiers(tmp_path: Path) -> None:
    from mlxctl.app.models import pull_stack
    from mlxctl.errors import SpecError

    world = world_on(tmp_path, "laptop")
    for name in ("big", "fast"):  # a path model is present once it has its config
        (world.models / name / "config.json").write_text("{}")
    stack = load_stack([world.stacks])
    pulled = pull_stack(stack, world.ctx.paths, environ={"MLXCTL_HOST": "laptop"})
    assert [(p.tier, p.already_present) for p in pulled] == [("fast", True)]
    with pytest.raises(SpecError, match="this machine is 'nas'"):
        pull_stack(stack, world.ctx.paths, environ={"MLXCTL_HOST": "nas"})
