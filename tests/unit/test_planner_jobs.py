"""Decision tables for the planner's job states: observed job state x desired change -> actions.

Each row builds an observation by hand (a record, what its process and probe show, a
prepare in flight) and asserts exactly what the pure planner decides, so every state a
job can be in has a row, and a change in behaviour shows up as a changed row.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mlxctl.capacity.memory import MemoryEstimate
from mlxctl.desired.state import DesiredService, DesiredState, ModelRef
from mlxctl.machine.record import Record
from mlxctl.observe.state import ObservedService, ObservedState, PrepareJob
from mlxctl.plan.actions import Plan, PlanOptions
from mlxctl.plan.planner import plan
from mlxctl.runtimes.base import ProbeSpec

NOW = 10_000.0
GIB = 1024**3
MODEL = ModelRef("pypi-gguf", "pypi-gguf:abc", Path("/m/demo"), "demo", prepare="pypi-gguf")


def service(name: str = "fast", *, args: int = 1, **extra: Any) -> DesiredService:
    return DesiredService(
        name=name,
        role="tier",
        runtime="mlx-lm",
        port=8001 if name == "fast" else 8002,
        argv=("srv", str(args)),
        env=(),
        files=(),
        model=extra.pop("model", None),
        launch={"runtime": "mlx-lm", "args": {"a": args}},
        spec_hash=f"v1:{name}{args}",
        probe=ProbeSpec("mlx-lm", 8001),
        startup_timeout=300.0,
        source="stack.yaml:1",
        **extra,
    )


def record(name: str = "fast", **changes: Any) -> Record:
    base = Record(
        name=name, role="tier", pid=100, pgid=100, create_time=1.0, cmdline=("srv", "1"),
        instance="i-" + name, spec_hash=f"v1:{name}1", port=8001, log="/dev/null",
        started_at=NOW - 5, launch={"runtime": "mlx-lm", "args": {"a": 1}},
    )  # fmt: skip
    return replace(base, **changes)


def seen(rec: Record | None = None, **changes: Any) -> ObservedService:
    return replace(ObservedService(rec or record(), alive=True), **changes)


def decide(
    observed: list[ObservedService],
    desired: list[DesiredService],
    *,
    prepares: dict[str, PrepareJob] | None = None,
    present: frozenset[str] = frozenset({MODEL.identity}),
    budget: int | None = None,
    **opts: Any,
) -> Plan:
    state = ObservedState(
        now=NOW,
        services={s.record.name: s for s in observed},
        models_present=present,
        prepares=prepares or {},
    )
    wanted = DesiredState(tiers=tuple(desired), gateway=None, budget_bytes=budget)
    return plan(wanted, state, PlanOptions(**{"allow_empty": True, **opts}))


def rows(the_plan: Plan) -> list[tuple[str, str, str]]:
    return [(a.kind, a.target, a.reason) for a in the_plan.actions]


READY = record(ready_at=NOW - 1)
STOPPING = record(stop_requested_at=NOW - 2, stop_cause="args changed: a 1 -> 2")
KILLED = record(stop_requested_at=NOW - 20, kill_sent_at=NOW - 1, stop_cause="x")
CRASH_STOP = record(
    stop_requested_at=NOW - 1, stop_cause="liveness failed", died_at=NOW - 1, not_before=NOW + 9
)
INTENT = record(pid=0, pgid=0, create_time=0.0, started_at=NOW - 1)


@pytest.mark.parametrize(
    ("observed", "desired", "expected"),
    [
        # starting: wait for readiness, record it, or give up
        ([seen()], [service()], [("wait", "fast", "starting")]),
        ([seen(health="ready", detail="ok")], [service()], [("ready", "fast", "")]),
        ([seen(fatal=True, health="unready")], [service()], [("crash", "fast", "")]),
        ([seen(record(started_at=NOW - 301))], [service()], [("crash", "fast", "")]),
        ([seen()], [service(args=2)], [("restart", "fast", "")]),
        # a starting server that died: a crash with its log, restarted at once (crash #1)
        (
            [seen(alive=False, exit_code=1, log_tail=("boom",))],
            [service()],
            [("crash", "fast", ""), ("start", "fast", "")],
        ),
        # ready and running: nothing; changed: a restart begins (a stop)
        ([seen(READY, health="ready")], [service()], []),
        ([seen(READY, health="ready")], [service(args=2)], [("restart", "fast", "")]),
        ([seen(READY, health="ready")], [], [("stop", "fast", "")]),
        # stopping: wait for it, whatever the desired state says; escalate after the grace
        ([seen(STOPPING)], [service(args=2)], [("wait", "fast", "stopping")]),
        ([seen(STOPPING)], [service()], [("wait", "fast", "stopping")]),
        ([seen(STOPPING)], [], [("wait", "fast", "stopping")]),
        (
            [seen(replace(STOPPING, stop_requested_at=NOW - 10))],
            [service(args=2)],
            [("kill", "fast", "")],
        ),
        ([seen(KILLED)], [service(args=2)], [("wait", "fast", "stopping")]),
        # a stop that completed: start the new launch, or forget a removed service
        ([seen(STOPPING, alive=False)], [service(args=2)], [("start", "fast", "")]),
        ([seen(STOPPING, alive=False)], [], [("forget", "fast", "")]),
        # a crash's stop that completed: the backoff still holds, then a restart
        ([seen(CRASH_STOP, alive=False)], [service()], [("wait", "fast", "backoff")]),
        (
            [seen(replace(CRASH_STOP, not_before=NOW - 1), alive=False)],
            [service()],
            [("start", "fast", "")],
        ),
        # an intent record: adopt its process, wait for the spawn, or start again
        ([seen(INTENT, adoptable=(7, 7, 2.0, ("srv",)))], [service()], [("adopt", "fast", "")]),
        ([seen(INTENT, alive=False)], [service()], [("wait", "fast", "spawning")]),
        (
            [seen(replace(INTENT, started_at=NOW - 6), alive=False)],
            [service()],
            [("start", "fast", "")],
        ),
        ([seen(replace(INTENT, started_at=NOW - 6), alive=False)], [], [("forget", "fast", "")]),
    ],
)
def test_job_states(
    observed: list[ObservedService],
    desired: list[DesiredService],
    expected: list[tuple[str, str, str]],
) -> None:
    assert rows(decide(observed, desired)) == expected


def test_a_stop_that_survives_sigkill_blocks_the_service() -> None:
    the_plan = decide([seen(replace(KILLED, kill_sent_at=NOW - 6))], [service(args=2)])
    assert rows(the_plan) == [] and "SIGKILL" in the_plan.blocked["fast"]


def test_a_crash_while_starting_carries_the_log_tail() -> None:
    the_plan = decide([seen(alive=False, exit_code=1, log_tail=("boom",))], [service()])
    crash = the_plan.actions[0]
    assert crash.cause == (
        "exited with code 1 while starting after 5s; crash #1; last log line: boom\nboom"
    )


def test_timeout_and_fatal_crashes_stop_the_process_and_say_why() -> None:
    timed_out = decide([seen(record(started_at=NOW - 301), detail="loading")], [service()])
    assert timed_out.actions[0].timed_out and timed_out.actions[0].stop_process
    assert "startup timeout (300s): loading" in timed_out.actions[0].cause
    fatal = decide([seen(fatal=True, detail="404")], [service()])
    assert fatal.actions[0].stop_process and "cannot become ready (404)" in fatal.actions[0].cause


@pytest.mark.parametrize(
    ("job", "expected", "blocked"),
    [
        (None, [("prepare", "fast", "")], False),
        (
            PrepareJob(MODEL.identity, "demo", NOW - 3, running=True, step="converting"),
            [("wait", "fast", "preparing")],
            False,
        ),
        (
            PrepareJob(MODEL.identity, "demo", NOW - 9, running=False, finished_at=NOW - 5,
                       error="boom"),
            [("wait", "fast", "preparing")],
            True,
        ),
        (
            PrepareJob(MODEL.identity, "demo", NOW - 90, running=False, finished_at=NOW - 61,
                       error="boom"),
            [("prepare", "fast", "")],
            False,
        ),
        # interrupted (its owner died): planned again
        (PrepareJob(MODEL.identity, "demo", NOW - 9, running=False), [("prepare", "fast", "")],
         False),
    ],
)  # fmt: skip
def test_prepare_states(job: PrepareJob | None, expected: list[Any], blocked: bool) -> None:
    prepares = {MODEL.identity: job} if job else {}
    the_plan = decide([], [service(model=MODEL)], prepares=prepares, present=frozenset())
    assert rows(the_plan) == expected
    assert ("fast" in the_plan.blocked) == blocked


def test_one_prepare_per_model_the_other_tiers_wait() -> None:
    the_plan = decide([], [service(model=MODEL), service("slow", model=MODEL)], present=frozenset())
    assert rows(the_plan) == [("prepare", "fast", ""), ("wait", "slow", "preparing")]


def test_a_start_waits_for_the_memory_a_stop_still_holds() -> None:
    est = MemoryEstimate(weights=6 * GIB, kv_cache=0, overhead=0, total=6 * GIB)
    old = seen(record("old", stop_requested_at=NOW - 1, memory_bytes=6 * GIB, port=8003))
    new = service("slow", memory=est)
    the_plan = decide([old], [new], budget=10 * GIB)
    assert rows(the_plan) == [("wait", "slow", "memory"), ("wait", "old", "stopping")]
    assert "held by old" in the_plan.actions[0].cause
    gone = decide([replace(old, alive=False)], [new], budget=10 * GIB)
    assert rows(gone) == [("start", "slow", ""), ("forget", "old", "")]


@pytest.mark.parametrize("opts", [{"heal": False}, {"no_heal": frozenset({"fast"})}])
def test_once_runs_do_not_restart_what_they_stop_healing(opts: dict[str, Any]) -> None:
    the_plan = decide([seen(READY, alive=False, exit_code=-9)], [service()], **opts)
    assert rows(the_plan) == [("crash", "fast", ""), ("wait", "fast", "backoff")]


def test_a_changed_model_is_prepared_while_the_old_server_keeps_serving() -> None:
    ready = seen(READY, health="ready")
    pulling = decide([ready], [service(args=2, model=MODEL)], present=frozenset())
    assert rows(pulling) == [("prepare", "fast", ""), ("wait", "fast", "preparing")]
    assert pulling.actions[1].cause.startswith("restart once its model is ready: ")
    there = decide([ready], [service(args=2, model=MODEL)])
    assert rows(there) == [("restart", "fast", "")]


def test_a_server_that_never_became_ready_is_a_crash_even_if_it_says_poisoned() -> None:
    """A model that fails to load answers "generation thread died" like a poisoned
    server; counted as a crash, it backs off instead of restarting every 2 s."""
    first = decide([seen(fatal=True, poisoned=True, detail="generation thread died")], [service()])
    [crash] = first.actions
    assert crash.kind == "crash" and not crash.by_request and crash.crashes == 1
    again = record(consecutive_crashes=1)
    second = decide([seen(again, fatal=True, poisoned=True)], [service()])
    assert second.actions[0].crashes == 2 and second.actions[0].not_before == NOW + 10
