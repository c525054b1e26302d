"""Decision tables for the controls: suspend, dependsOn, stack ownership, a reused PID,
an unresolvable tier and a file with no last valid version.

Same style as test_planner_jobs: an observation built by hand, the pure planner's
decision asserted row by row.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mlxctl.desired.state import DesiredState
from mlxctl.observe.state import ObservedService, ObservedState
from mlxctl.plan.actions import Plan, PlanOptions
from mlxctl.plan.planner import plan
from tests.unit.test_planner_jobs import NOW, READY, record, rows, seen, service


def decide(observed: list[ObservedService], desired: list[Any], **state: Any) -> Plan:
    obs = ObservedState(now=NOW, services={s.record.name: s for s in observed})
    wanted = DesiredState(tiers=tuple(desired), gateway=None, **state)
    return plan(wanted, obs, PlanOptions(allow_empty=True))


SUSPENDED = service(suspended=True)
READY_SEEN = seen(READY, health="ready")
SLOW_READY = seen(record("slow", ready_at=NOW - 1, port=8002), health="ready")
SLOW_STARTING = seen(record("slow", port=8002))


@pytest.mark.parametrize(
    ("observed", "desired", "state", "expected"),
    [
        # suspend: whatever the state, one "wait" and nothing applied
        ([], [SUSPENDED], {}, [("wait", "fast", "suspended")]),
        ([READY_SEEN], [SUSPENDED], {}, [("wait", "fast", "suspended")]),
        ([READY_SEEN], [service(args=2, suspended=True)], {}, [("wait", "fast", "suspended")]),
        ([seen(alive=False, exit_code=1)], [SUSPENDED], {}, [("wait", "fast", "suspended")]),
        # a stop under way is seen through (escalated after the grace), nothing new begun
        (
            [seen(record(stop_requested_at=NOW - 20, stop_cause="x"))],
            [SUSPENDED],
            {},
            [("kill", "fast", "")],
        ),
        # a suspended stack's removed tier is not stopped
        (
            [seen(replace(READY, stack="main"), health="ready")],
            [],
            {"suspended_stacks": frozenset({"main"})},
            [("wait", "fast", "suspended")],
        ),
        # dependsOn: start only once every dependency answered readiness
        ([], [service(depends_on=("slow",))], {}, [("wait", "fast", "dependency")]),
        (
            [SLOW_STARTING],
            [service(depends_on=("slow",)), service("slow")],
            {},
            [("wait", "fast", "dependency"), ("wait", "slow", "starting")],
        ),
        (
            [SLOW_READY],
            [service(depends_on=("slow",)), service("slow")],
            {},
            [("start", "fast", "")],
        ),
        # a dependency that became ready in this observation counts
        (
            [seen(record("slow", port=8002), health="ready")],
            [service(depends_on=("slow",)), service("slow")],
            {},
            [("start", "fast", ""), ("ready", "slow", "")],
        ),
        # a running tier is not stopped because its dependency went down
        (
            [READY_SEEN, seen(record("slow", ready_at=NOW - 1), alive=False, exit_code=1)],
            [service(depends_on=("slow",)), service("slow")],
            {},
            [("crash", "slow", ""), ("start", "slow", "")],
        ),
        # ownership: another stack's tier is never pruned by this selection
        (
            [seen(replace(READY, stack="other"), health="ready")],
            [],
            {"scope": frozenset({"main"})},
            [],
        ),
        (
            [seen(replace(READY, stack="main"), health="ready")],
            [],
            {"scope": frozenset({"main"})},
            [("stop", "fast", "")],
        ),
        # a directory (scope None) speaks for every stack
        ([seen(replace(READY, stack="other"), health="ready")], [], {}, [("stop", "fast", "")]),
        # a file with no last valid version: nothing is pruned
        (
            [READY_SEEN],
            [],
            {"hold_prune": "not pruned while b.yaml is invalid"},
            [("wait", "fast", "held")],
        ),
        # a tier whose model cannot be read: blocked, left as it runs, not pruned
        ([READY_SEEN], [], {"unresolved": {"fast": "config.json: bad"}}, []),
        # a PID reused by another process: started again, not a crash
        ([seen(alive=False, foreign=True)], [service()], {}, [("start", "fast", "")]),
    ],
)
def test_controls_decision_table(
    observed: list[ObservedService],
    desired: list[Any],
    state: dict[str, Any],
    expected: list[tuple[str, str, str]],
) -> None:
    assert sorted(rows(decide(observed, desired, **state))) == sorted(expected)


def test_suspended_says_what_a_resume_would_do() -> None:
    new = decide([], [SUSPENDED]).actions[0]
    assert new.cause == "suspended; on resume: start (new tier)"
    changed = decide([READY_SEEN], [service(args=2, suspended=True)]).actions[0]
    assert changed.cause == "suspended; on resume: restart (args changed: a 1 -> 2)"
    synced = decide([READY_SEEN], [SUSPENDED]).actions[0]
    assert synced.cause == "suspended; on resume: nothing (in sync)"


def test_a_reused_pid_is_not_counted_as_a_crash() -> None:
    start = decide([seen(alive=False, foreign=True)], [service()]).actions[0]
    assert start.crashes == 0
    assert "PID 100 now belongs to another process (not counted as a crash)" in start.cause


def test_an_unresolved_tier_is_blocked_with_why() -> None:
    the_plan = decide([], [service("slow")], unresolved={"fast": "a.yaml:3: model: bad json"})
    assert the_plan.blocked == {"fast": "a.yaml:3: model: bad json"}
    assert rows(the_plan) == [("start", "slow", "")]


def test_a_dependency_wait_names_what_it_waits_for() -> None:
    wait = decide([], [service(depends_on=("slow", "big"))]).actions[0]
    assert wait.cause == "waiting for slow, big to be ready (dependsOn)"


def test_an_empty_selection_is_not_refused_for_another_stacks_tiers() -> None:
    other = seen(replace(READY, stack="other"), health="ready")
    the_plan = plan(
        DesiredState(tiers=(), gateway=None, scope=frozenset({"main"})),
        ObservedState(now=NOW, services={"fast": other}),
        PlanOptions(),
    )
    assert the_plan.refused is None and the_plan.actions == ()
    mine = seen(replace(READY, stack="main"), health="ready")
    refused = plan(
        DesiredState(tiers=(), gateway=None, scope=frozenset({"main"})),
        ObservedState(now=NOW, services={"fast": mine}),
        PlanOptions(),
    )
    assert refused.refusal == "empty"
