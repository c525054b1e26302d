"""Hostile state files, property-tested: whatever the inventory, a job file or
``ports.json`` holds (wrong types, NaN and infinities, huge numbers, random bytes, a
record pointing at a user's process), a pass and ``down``'s fallback either work or
refuse in one line (an unusable inventory, exit 4); nothing else escapes, each answers
quickly, and a user's process whose PID, start time and command line a record copies
is never signalled (it does not carry this state directory's marker).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxctl.errors import MlxctlError
from mlxctl.reconcile.teardown import stop_recorded
from mlxctl.testing.fakes import FakeProcess
from tests.unit.world import World, tier, tiers_yaml

TIME_BOUND = 5.0
SENTINEL = 9999

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**29, 70000, -1, 0, 1, SENTINEL, 2**22 + 1]),
    st.floats(),  # NaN and both infinities included
    st.text(max_size=30),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
RECORD_FIELDS = ["pid", "pgid", "create_time", "cmdline", "instance", "port", "name", "role"]
JOB_FIELDS = ["identity", "owner_pid", "owner_created", "started_at", "done", "error"]


def _fresh_world() -> tuple[World, dict[str, Any]]:
    world = World(Path(tempfile.mkdtemp(prefix="mlxctl-fuzz-")))
    world.write(tiers_yaml(tier("a", 8001), gateway="{enabled: false}"))
    assert world.apply().converged
    record = world.record("a")
    # A user's process: the same command line and start time as our server, no marker.
    world.procs.procs[SENTINEL] = FakeProcess(
        SENTINEL, record.cmdline, {}, Path("/dev/null"), record.create_time
    )
    return world, json.loads(world.ctx.paths.inventory.read_text())


def _write(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content))  # NaN/Infinity written as json does


def _exercise(world: World) -> None:
    started = time.monotonic()
    for _ in range(2):
        try:
            world.step()
        except MlxctlError as exc:
            assert "\n" not in str(exc) and "not a usable inventory" in str(exc), exc
        world.clock.advance(1)
    try:
        records = world.ctx.inventory.load()
    except MlxctlError:
        records = {}
    stop_recorded(records, world.procs, grace=0, kill_wait=0, clock=world.clock)
    assert time.monotonic() - started < TIME_BOUND
    assert SENTINEL not in world.procs.signalled and SENTINEL not in world.procs.killed
    assert world.procs.procs[SENTINEL].alive


settings_ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@settings_
@given(field=st.sampled_from(RECORD_FIELDS), value=VALUES, at_sentinel=st.booleans())
def test_a_hostile_inventory_record(field: str, value: Any, at_sentinel: bool) -> None:
    world, inventory = _fresh_world()
    record = inventory["services"]["a"]
    if at_sentinel:
        record["pid"] = record["pgid"] = SENTINEL
    record[field] = value
    _write(world.ctx.paths.inventory, inventory)
    _exercise(world)


@settings_
@given(field=st.sampled_from(JOB_FIELDS), value=VALUES)
def test_a_hostile_job_file(field: str, value: Any) -> None:
    world, _ = _fresh_world()
    job = {
        "identity": "m",
        "display": "m",
        "started_at": 1.0,
        "owner_pid": 1,
        "owner_created": 1.0,
    }
    job[field] = value
    _write(world.ctx.paths.jobs / "0000000000000001.json", job)
    _exercise(world)
    assert len([e for e in _events(world) if e["kind"] == "state"]) <= 1


@settings_
@given(content=st.dictionaries(st.text(max_size=8), VALUES, max_size=4) | VALUES | st.binary())
def test_a_hostile_ports_file(content: Any) -> None:
    world, _ = _fresh_world()
    _write(world.ctx.paths.ports, content)
    _exercise(world)
    assert world.record("a").port == 8001


def _events(world: World) -> list[dict[str, Any]]:
    lines = world.ctx.paths.events.read_text().splitlines()
    return [json.loads(line) for line in lines]
