"""Issue 15 rows 7 and 9 for the state directory's own files: job files, ``ports.json``,
last-good copies and the event log are read bounded and parsed into validated models;
a bad one is skipped or repaired with one event, never a traceback, a hang or a hot
loop; a pass that raises backs off instead of looping, and healing goes on."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlxctl.apply.events import read_events
from mlxctl.errors import MlxctlError
from mlxctl.machine.clock import SystemClock
from mlxctl.observe.jobfiles import JobFiles
from mlxctl.plan.actions import PlanOptions
from mlxctl.plan.backoff import MAX_FAILURE_BACKOFF, failure_backoff
from mlxctl.reconcile.context import read_ports
from mlxctl.reconcile.controller import Controller
from mlxctl.spec.last_good import LastGood
from tests.unit.world import World, tier, tiers_yaml

GOOD_JOB = {
    "identity": "hf:org/m@" + "a" * 40,
    "display": "org/m",
    "started_at": 1_700_000_000.0,
    "step": "downloading",
    "owner_pid": 1,
    "owner_created": 1.0,
}

BAD_JOBS = {
    "infinite owner": '{"identity": "x", "display": "x", "started_at": 1.0, '
    '"owner_pid": 1e400, "owner_created": 1.0}',
    "identity a list": json.dumps({**GOOD_JOB, "identity": [1]}),
    "owner pid too big": json.dumps({**GOOD_JOB, "owner_pid": 10**29}),
    "NaN start": json.dumps({**GOOD_JOB, "started_at": float("nan")}),
    "not an object": "[1, 2]",
    "random bytes": b"\xff\xfe\x00garbage",
}


def finishes(work: Callable[[], object], seconds: float = 3.0) -> list[object]:
    """Run ``work`` in a daemon thread; its result, or an assertion error if it hangs."""
    out: list[object] = []
    runner = threading.Thread(target=lambda: out.append(work()), daemon=True)
    runner.start()
    runner.join(seconds)
    assert not runner.is_alive(), "hung"
    return out


def events_of(world: World) -> list[dict[str, object]]:
    path = world.ctx.paths.events
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def state_events(world: World) -> list[dict[str, object]]:
    return [e for e in events_of(world) if e["kind"] == "state"]


@pytest.mark.parametrize("content", list(BAD_JOBS.values()), ids=list(BAD_JOBS))
def test_a_bad_job_file_is_set_aside_with_one_event(tmp_path: Path, content: str | bytes) -> None:
    world = World(tmp_path)
    world.write(tiers_yaml(tier("a", 8001)))
    jobs = world.ctx.paths.jobs
    jobs.mkdir(parents=True)
    bad = jobs / "0123456789abcdef.json"
    bad.write_bytes(content.encode() if isinstance(content, str) else content)
    (jobs / "fedcba9876543210.json").write_text(json.dumps(GOOD_JOB))

    for _ in range(3):  # passes go on, and heal
        world.step()
        world.clock.advance(1)
    assert world.record("a").spawned
    [event] = state_events(world)
    assert event["target"] == str(bad) and "not a usable job file" in str(event["message"])
    assert not bad.exists() and bad.with_name(bad.name + ".bad").exists()
    assert list(world.ctx.prepares()) == [GOOD_JOB["identity"]]


def test_a_fifo_job_file_never_hangs(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    os.mkfifo(jobs / "0123456789abcdef.json")
    assert finishes(JobFiles(jobs).read_all) == [{}]
    os.mkfifo(jobs / "0123456789abcdee.json")
    reported: list[str] = []
    assert finishes(JobFiles(jobs, lambda p, why: reported.append(why)).read_all) == [{}]
    assert len(reported) == 1 and "FIFO" in reported[0]


@pytest.mark.parametrize("bad", [70000, -1, 10**29, 0, True, "8001", 1.5])
def test_a_port_that_is_no_port_is_dropped_and_the_file_repaired(
    tmp_path: Path, bad: object
) -> None:
    world = World(tmp_path)
    world.write(tiers_yaml(tier("a", 8005), "- name: b\n  runtime: mlx-lm\n  model: {path: /m}\n"))
    paths = world.ctx.paths
    paths.state.mkdir(parents=True, exist_ok=True)
    paths.ports.write_text(json.dumps({"b": bad, "c": 8100}))
    assert read_ports(paths) == {"c": 8100}
    for _ in range(3):
        world.step()
        world.clock.advance(1)
    assert world.record("b").spawned and 1 <= world.record("b").port <= 65535
    saved = json.loads(paths.ports.read_text())
    assert saved == {"a": 8005, "b": world.record("b").port, "c": 8100}
    [event] = state_events(world)
    assert event["target"] == str(paths.ports) and "not a port" in str(event["message"])


def test_a_ports_file_damaged_after_the_pass_read_it_is_reported_when_repaired(
    tmp_path: Path,
) -> None:
    """The pass reads ``ports.json`` when it resolves and again when it saves; a file
    damaged in between is repaired by the save, and that repair is an event too."""
    from mlxctl.reconcile.context import save_ports

    paths = World(tmp_path).ctx.paths
    paths.state.mkdir(parents=True)
    assert read_ports(paths) == {}
    paths.ports.write_text('{"x": 70000}')
    reported: list[str] = []
    save_ports(paths, {"a": 8001}, lambda _path, why: reported.append(why))
    assert json.loads(paths.ports.read_text()) == {"a": 8001}
    assert len(reported) == 1 and "not a port" in reported[0]


def test_a_ports_file_that_is_a_fifo_is_replaced(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.write(tiers_yaml("- name: b\n  runtime: mlx-lm\n  model: {path: /m}\n"))
    world.ctx.paths.state.mkdir(parents=True)
    os.mkfifo(world.ctx.paths.ports)
    finishes(world.step)
    assert json.loads(world.ctx.paths.ports.read_text()) == {"b": world.record("b").port}
    assert len(state_events(world)) == 1


def test_a_last_good_copy_that_is_a_fifo_is_no_copy(tmp_path: Path) -> None:
    store = LastGood(tmp_path / "last-good")
    stack = tmp_path / "stack.yaml"
    store.save(stack, "text")
    copy = next((tmp_path / "last-good").iterdir())
    copy.unlink()
    os.mkfifo(copy)
    assert finishes(lambda: store.read(stack)) == [None]


def test_event_lines_that_are_not_events_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = {"v": 1, "ts": 5.0, "kind": "start", "target": "a", "cause": "c", "result": "ok"}
    lines = [
        json.dumps(good),
        json.dumps({"v": 1}),
        json.dumps({**good, "ts": "soon"}),
        '{"ts": NaN, "kind": "x", "target": "y"}',
        json.dumps({**good, "kind": [1]}),
        "[]",
    ]
    path.write_text("\n".join(lines) + "\n")
    [event] = read_events(path)
    assert event.kind == "start" and event.ts == 5.0


def test_failure_backoff_doubles_and_is_bounded() -> None:
    delays = [failure_backoff(n, 12.0) for n in range(1, 12)]
    assert delays[:4] == [2.0, 4.0, 8.0, 16.0]
    assert max(delays) == MAX_FAILURE_BACKOFF and delays == sorted(delays)
    assert failure_backoff(10**6, 12.0) == MAX_FAILURE_BACKOFF


def run_controller_for(
    seconds: float,
    world: World,
    desired: Callable[[], object],
    *,
    interval: float,
    log: Callable[[str], None] = lambda _line: None,
) -> None:
    """The controller loop for real (its waits are real queue timeouts), ``seconds`` long,
    then stopped; how often it ran is what these tests count."""
    ctl = Controller(
        world.ctx,
        [],
        PlanOptions(),
        interval=interval,
        poll_interval=0.05,
        log=log,
        desired=desired,  # type: ignore[arg-type]
    )
    runner = threading.Thread(target=ctl.run, daemon=True)
    runner.start()
    time.sleep(seconds)
    ctl.stop()
    runner.join(5)
    assert not runner.is_alive()


def test_a_pass_that_keeps_raising_backs_off_instead_of_looping_hot(tmp_path: Path) -> None:
    """A periodic resync that failed used to leave the resync due, so the next one ran at
    once, for ever (hundreds of passes a second). Real time, a short interval."""
    world = World(tmp_path)
    world.ctx.clock = SystemClock()
    calls: list[float] = []

    def broken() -> object:
        calls.append(time.monotonic())
        raise OverflowError("cannot convert float infinity to integer")

    lines: list[str] = []
    run_controller_for(1.5, world, broken, interval=0.12, log=lines.append)
    # Backoff 0.02, 0.04 ... 0.64 s: about eight tries in 1.5 s, never hundreds.
    assert 3 <= len(calls) <= 15, len(calls)
    failed = [e for e in events_of(world) if e["result"] == "failed"]
    assert len(failed) == 1  # one event for one failure, not one per attempt
    assert sum("reconcile failed" in line for line in lines) == 1


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_an_event_log_that_is_a_fifo_or_a_symlink_is_never_written_through(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlxctl.apply.events import Event, EventLog

    outside = tmp_path / "users-file"
    outside.write_text("mine\n")
    path = tmp_path / "state" / "events.jsonl"
    path.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(outside)
    log = EventLog(path)
    finishes(lambda: [log.emit(Event(5.0, "start", "a", "c", "ok")) for _ in range(3)])
    assert outside.read_text() == "mine\n"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(warnings) == 1 and str(path) in warnings[0]


def test_a_stack_refused_after_a_deadline_was_set_does_not_loop_hot(tmp_path: Path) -> None:
    """A pass set a wake (a failed start retried after its delay); the next passes find
    the stack refused and ask for nothing. The spent wake stayed due and the loop ran
    ~70 000 passes a second. Real time, a short interval."""
    world = World(tmp_path)
    world.ctx.clock = SystemClock()
    world.write(tiers_yaml(tier("fast", 8001)))

    def cannot_spawn(*_: object, **__: object) -> object:
        raise OSError(8, "Exec format error")

    world.procs.spawn = cannot_spawn  # type: ignore[assignment,method-assign]
    calls: list[float] = []

    def desired() -> object:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return world.desired()
        raise MlxctlError("the hub cannot be reached")

    run_controller_for(1.0, world, desired, interval=0.6)
    # The first pass, its retry wake, then resyncs every ~0.6 s: a handful, not thousands.
    assert 2 <= len(calls) <= 10, len(calls)
