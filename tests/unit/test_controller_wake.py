"""When a pass asks to run again on its own: backoff expiries, startup deadlines, retries."""

from __future__ import annotations

from pathlib import Path

from mlxctl.apply.executor import Outcome
from mlxctl.desired.state import DesiredState
from mlxctl.machine.record import Record
from mlxctl.observe.state import ObservedState
from mlxctl.plan.actions import Action, Plan, PlanOptions
from mlxctl.reconcile.passes import PassResult, next_wake, run_pass
from tests.unit.world import World, tier, tiers_yaml

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


# -- what a pass asks for (the loop only honours it) ------------------------------------


def test_a_pass_that_applied_something_asks_to_run_again_at_once(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001)))
    first = w.step()
    assert first.requeue and any(o.ok for o in first.outcomes)
    converged = w.apply()
    assert converged.converged
    idle = w.step()
    assert (idle.requeue, idle.requeue_after) == (False, None)


def test_a_crash_backoff_is_the_time_the_pass_asks_to_wait(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001)))
    assert w.apply().converged
    w.procs.crash(w.record("fast").pid)
    w.step()  # crash #1: recorded and restarted at once
    w.step()
    w.procs.crash(w.record("fast").pid)
    backing_off = w.step()  # crash #2: a backoff
    not_before = w.record("fast").not_before
    assert not_before is not None and not_before > w.clock.now
    assert backing_off.requeue_after == not_before - w.clock.now
    w.clock.advance(1.0)
    assert w.step().requeue_after == not_before - w.clock.now  # the same expiry, nearer


def test_a_failed_action_with_no_deadline_is_retried_after_the_given_delay(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001)))

    def cannot_exec(*_args: object, **_kwargs: object) -> None:
        raise OSError(8, "Exec format error")

    w.procs.spawn = cannot_exec  # type: ignore[assignment,method-assign]
    failed = run_pass(w.ctx, w.desired(), options=PlanOptions(), retry_failed_after=2.0)
    assert failed.failed and not failed.requeue
    assert failed.requeue_after == 2.0
    # Without a retry delay (reconcile --once's run stops healing anyway) only a trigger.
    assert run_pass(w.ctx, w.desired(), options=PlanOptions()).requeue_after is None


def test_a_dry_run_never_asks_to_run_again(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001)))
    dry = run_pass(w.ctx, w.desired(), options=PlanOptions(), dry_run=True)
    assert dry.plan.has_changes and (dry.requeue, dry.requeue_after) == (False, None)
