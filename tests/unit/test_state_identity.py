"""Issue 15 rows 4 and 5: one identity rule that fails closed.

A user's process (a ``sleep``) whose PID and command line a record names, with a
``NaN`` or a right start time, is never signalled; the servers of the state directory
a copy was made from are never touched through the copy.
"""

from __future__ import annotations

import json
import math
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest

from mlxctl.errors import MlxctlError
from mlxctl.machine.interfaces import INSTANCE_ENV, STATE_ENV, Identity
from mlxctl.machine.inventory import Inventory
from mlxctl.machine.processes import RealProcessControl


def _identity(proc: subprocess.Popen[bytes], create_time: float, instance: str) -> Identity:
    ps = psutil.Process(proc.pid)
    return Identity(proc.pid, proc.pid, create_time, tuple(ps.cmdline()), instance)


@pytest.mark.parametrize("when", ["nan", "inf", "right"])
def test_a_users_process_named_by_a_record_is_never_signalled(
    tmp_path: Path, stranger: subprocess.Popen[bytes], when: str
) -> None:
    real = psutil.Process(stranger.pid).create_time()
    create_time = {"nan": math.nan, "inf": math.inf, "right": real}[when]
    ident = _identity(stranger, create_time, uuid.uuid4().hex)
    pc = RealProcessControl(str(tmp_path))
    assert not pc.status(ident).alive
    assert not pc.terminate(ident).signalled
    assert not pc.kill(ident).signalled
    assert pc.remaining(ident) == 0
    assert stranger.poll() is None  # still running


def test_another_state_directorys_server_is_never_touched(tmp_path: Path) -> None:
    """A copy of a state directory holds the same records (PID, start time, command
    line, instance marker): only the state marker tells the original's servers apart."""
    original, copy = tmp_path / "state", tmp_path / "copy" / "state"
    instance = uuid.uuid4().hex
    env = {"PATH": "/usr/bin:/bin", INSTANCE_ENV: instance, STATE_ENV: str(original)}
    owner = RealProcessControl(str(original))
    spawned = owner.spawn(["sleep", "1000"], env, tmp_path / "srv.log")
    ident = Identity(spawned.pid, spawned.pgid, spawned.create_time, spawned.cmdline, instance)
    try:
        through_copy = RealProcessControl(str(copy))
        assert through_copy.status(ident).foreign
        assert not through_copy.terminate(ident).signalled
        assert through_copy.remaining(ident) == 0
        assert through_copy.find_instance(instance) is None
        assert owner.status(ident).alive  # and its own state directory still owns it
        assert owner.find_instance(instance) is not None
    finally:
        assert owner.stop(ident, grace=5).signalled


def _record(**changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "name": "a",
        "role": "tier",
        "pid": 4242,
        "pgid": 4242,
        "create_time": 1_700_000_000.0,
        "cmdline": ["sleep", "1000"],
        "instance": "f" * 32,
        "spec_hash": "h",
        "port": 8001,
        "log": "/tmp/a.log",
        "started_at": 1_700_000_000.0,
    }
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"create_time": "NaN"}, "create_time: must be a finite number"),
        ({"create_time": "Infinity"}, "create_time: must be a finite number"),
        ({"create_time": "1e400"}, "create_time: must be a finite number"),
        ({"create_time": "-5"}, "create_time"),
        ({"pid": "99999999999"}, "pid"),
        ({"pid": "-1"}, "pid"),
        ({"pgid": "1e400"}, "pgid"),
        ({"port": "70000"}, "port"),
        ({"cmdline": "[]"}, "cmdline"),
        ({"cmdline": "[1]"}, "cmdline.0"),
        ({"instance": '""'}, "instance"),
        ({"name": json.dumps("x" * 5000)}, "name"),
    ],
)
def test_a_record_out_of_range_makes_the_inventory_unusable(
    tmp_path: Path, changes: dict[str, str], says: str
) -> None:
    """Raw JSON values (``NaN`` is what ``json`` writes for a float NaN)."""
    fields = {k: json.dumps(v) for k, v in _record().items()} | changes
    body = ", ".join(f'"{k}": {v}' for k, v in fields.items())
    path = tmp_path / "inventory.json"
    path.write_text('{"version": 1, "services": {"a": {' + body + "}}}")
    with pytest.raises(MlxctlError, match="not a usable inventory") as caught:
        Inventory(path).load()
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_valid_record_and_an_intent_still_load(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    intent = _record(name="b", pid=0, pgid=0, create_time=0.0, started_at=5)
    path.write_text(json.dumps({"version": 1, "services": {"a": _record(), "b": intent}}))
    records = Inventory(path).load()
    assert records["a"].cmdline == ("sleep", "1000") and not records["b"].spawned


def test_down_through_a_copy_stops_nothing_on_the_fake_machine_either(tmp_path: Path) -> None:
    """The fakes hold to the same rule (so unit tests cannot pass where reality would
    not): the original's records, read through a control bound to a copy, stop nothing."""
    from mlxctl.reconcile.teardown import stop_recorded
    from mlxctl.testing.fakes import FakeProcs
    from tests.unit.world import World, tier, tiers_yaml

    world = World(tmp_path)
    world.write(tiers_yaml(tier("a", 8001)))
    assert world.apply().converged
    records = world.ctx.inventory.load()
    copy = FakeProcs(world.clock, procs=world.procs.procs, state=str(tmp_path / "copy" / "state"))
    stopped = stop_recorded(records, copy, grace=1.0, clock=world.clock)
    assert stopped == [] and len(world.procs.running()) == len(records)
    stopped = stop_recorded(records, world.procs, grace=1.0, clock=world.clock)
    assert {s.name for s in stopped} == set(records)
