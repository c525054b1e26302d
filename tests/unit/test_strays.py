"""A process carrying this state directory's marker that no record names is stopped by
``down`` (its record was deleted, or it outlived its group's leader and its record)."""

from __future__ import annotations

from pathlib import Path

from mlxctl.machine.interfaces import STATE_ENV
from mlxctl.reconcile.teardown import stop_strays
from tests.unit.world import World, tier, tiers_yaml


def test_every_child_carries_its_state_directory(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.write(tiers_yaml(tier("a", 8001)))
    assert world.apply().converged
    proc = world.procs.procs[world.record("a").pid]
    assert proc.env[STATE_ENV] == str(world.ctx.paths.state)


def test_marked_processes_without_a_record_are_stopped_and_recorded_ones_are_not(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.write(tiers_yaml(tier("a", 8001), tier("b", 8002)))
    assert world.apply().converged
    records = world.ctx.inventory.load()
    lost = {"a": records.pop("a")}  # a's record is gone; b's and the gateway's remain
    state = str(world.ctx.paths.state)

    stopped = stop_strays(state, records, world.procs, grace=1.0, clock=world.clock)
    assert [s.name for s in stopped] == [f"a (no record; group {lost['a'].pid})"]
    assert not world.procs.procs[lost["a"].pid].alive
    assert all(world.procs.procs[r.pid].alive for r in records.values())
    # Another state directory's processes are never touched.
    assert stop_strays("/elsewhere", {}, world.procs, grace=1.0, clock=world.clock) == []
