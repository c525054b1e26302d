"""When the controller looks again on its own: backoff expiries, startup deadlines, retries."""

from __future__ import annotations

from mlxctl.apply.executor import Outcome
from mlxctl.desired.state import DesiredState
from mlxctl.machine.record import Record
from mlxctl.observe.state import ObservedState
from mlxctl.plan.actions import Action, Plan
from mlxctl.reconcile.controller import next_wake
from mlxctl.reconcile.passes import PassResult

PASS_STARTED = 1000.0


def record(name: str, *, died_at: float | None, not_before: float | None) -> Record:
    return Record(
        name=name, role="tier", pid=1, pgid=1, create_time=0.0, cmdline=("srv",),
        instance="i", spec_hash="v1:x", port=8001, log="/dev/null", started_at=900.0,
        died_at=died_at, not_before=not_before,
    )  # fmt: skip


def result(*actions: Action, outcomes: tuple[Outcome, ...] = ()) -> PassResult:
    return PassResult(
        DesiredState(tiers=(), gateway=None),
        ObservedState(now=PASS_STARTED),
        Plan(actions),
        outcomes,
    )


def test_a_start_that_failed_in_this_pass_with_no_backoff_is_retried_at_once() -> None:
    failed_now = record("fast", died_at=1003.0, not_before=1003.0)  # crash #1: backoff 0
    assert next_wake(result(), [failed_now], since=PASS_STARTED) == 1003.0


def test_an_old_expiry_does_not_spin_the_controller() -> None:
    # Backoff expired before this pass; the pass could not start the tier (model missing).
    stale = record("fast", died_at=800.0, not_before=850.0)
    assert next_wake(result(), [stale], since=PASS_STARTED) is None


def test_the_earliest_backoff_or_deadline_wins() -> None:
    backing_off = Action("wait", "a", "crash-loop backoff", not_before=1040.0)
    starting = Action("wait", "b", "starting", not_before=1300.0, reason="starting")
    crashed = record("c", died_at=1001.0, not_before=1021.0)
    running = record("d", died_at=None, not_before=1005.0)  # alive again: not a wait
    wake = next_wake(result(backing_off, starting), [crashed, running], since=PASS_STARTED)
    assert wake == 1021.0


def test_nothing_pending_means_wait_for_a_trigger_or_the_resync() -> None:
    ok = Outcome(Action("start", "a", "new tier", not_before=1500.0), ok=True)
    assert next_wake(result(outcomes=(ok,)), [], since=PASS_STARTED) is None
