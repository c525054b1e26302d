"""The use cases take their context from the caller and run under its lock."""

from __future__ import annotations

from pathlib import Path

from mlxctl.plan.actions import PlanOptions
from tests.unit.world import World, tier, tiers_yaml


def test_the_use_cases_run_under_a_lock_their_caller_holds(tmp_path: Path) -> None:
    """A controller holds the state lock for its whole life; the use cases it will call
    for the admin API must not try to take it again (LockHeldError, exit 6)."""
    from mlxctl.app import stacks
    from mlxctl.reconcile.state_lock import StateLock

    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001)))
    stack = stacks.load([w.stacks])
    with StateLock(w.ctx.paths.lock, command="test controller"):
        assert [a.kind for a in stacks.plan_once(w.ctx, stack, PlanOptions()).plan.actions]
        assert stacks.diff(w.ctx, stack).plan.has_changes
        assert [row.name for row in stacks.status(w.ctx, [w.stacks]).rows] == ["fast", "gateway"]
        assert stacks.down(w.ctx).exit_code == 0
