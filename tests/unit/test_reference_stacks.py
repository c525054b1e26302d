"""Every shipped stack goes through the real engine: validated, resolved, admitted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlxctl.capacity.memory import GIB
from mlxctl.plan.planner import plan
from mlxctl.reconcile.passes import load_stack, observe_state, resolve
from tests.unit.world import World

STACKS = sorted((Path(__file__).parents[2] / "stacks").glob("*.yaml"))


@pytest.mark.parametrize("path", STACKS, ids=[p.name for p in STACKS])
def test_shipped_stack_resolves_and_fits_its_machine(path: Path, tmp_path: Path) -> None:
    size = re.search(r"mac-(\d+)gb", path.name)
    world = World(tmp_path)
    world.ctx.model_resolver = None  # the real one: catalog ids, the HF cache layout
    world.ctx.memory_bytes = lambda: (int(size.group(1)) if size else 16) * GIB
    desired = resolve(world.ctx, load_stack([path]))
    assert desired.budget_bytes is not None
    assert all(t.memory is not None for t in desired.tiers)
    the_plan = plan(desired, observe_state(world.ctx, desired))
    assert the_plan.refused is None
    assert {a.target for a in the_plan.actions} >= {t.name for t in desired.tiers} - set(
        the_plan.blocked
    )


def test_a_reference_stack_is_refused_on_a_smaller_machine(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.ctx.model_resolver = None
    world.ctx.memory_bytes = lambda: 16 * GIB
    desired = resolve(world.ctx, load_stack([STACKS[0].parent / "mac-64gb.yaml"]))
    refused = plan(desired, observe_state(world.ctx, desired)).refused
    assert refused is not None and "over the memory budget of 12.0 GiB" in refused


EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate(path: Path) -> None:
    stack = load_stack([path])
    assert stack.tiers
