"""Converging once: ``reconcile --once`` and ``down`` as passes in a loop until done.

The same controller loop as ``mlxctl reconcile`` (the same triggers: process exits,
readiness answers, finished stops and jobs), without file watching, and with an end:
every desired service ready (converged), a failure of something this run started
(a server that exited, answered that it can never be ready, or outlived its startup
timeout), or nothing left in flight that could change the answer (a crash-loop
backoff, a missing model, a memory wait). After a failure no more restarts are made,
and the run ends once every stop it began is complete, so a failed start never
leaves a process behind.

A :class:`Tracker` turns the passes into one outcome per action that began work (a
start is ok when the server is ready, a stop when its processes are gone), so a
script sees the same ``applied`` records as when a pass waited for everything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mlxctl.apply.executor import Outcome
from mlxctl.desired.state import DesiredState
from mlxctl.errors import ExitCode
from mlxctl.plan.actions import Action, Plan, PlanOptions
from mlxctl.reconcile.context import Context
from mlxctl.reconcile.controller import Controller
from mlxctl.reconcile.monitor import LIVE_TIMEOUT
from mlxctl.reconcile.passes import PassResult

# Wait reasons that mean work is in flight (something will trigger a pass).
# (``group``: a distributed tier's rank waits for members on their way: their answers
# trigger passes.)
IN_FLIGHT = frozenset({"starting", "stopping", "preparing", "spawning", "group"})
WORK = frozenset({"start", "restart", "stop", "prepare"})


@dataclass
class Tracker:
    """One outcome per target whose work this run began, decided when the work ends."""

    clock: Callable[[], float]
    pending: dict[str, tuple[Action, float]] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    failed: bool = False
    timed_out: bool = False
    failed_targets: set[str] = field(default_factory=set)

    def _finish(self, target: str, ok: bool, message: str, *, timed_out: bool = False) -> None:
        action, began = self.pending.pop(target)
        duration = self.clock() - began
        self.outcomes.append(Outcome(action, ok, message, duration, timed_out))
        if not ok:
            self.failed = True
            self.failed_targets.add(target)
            self.timed_out = self.timed_out or timed_out

    def see(self, result: PassResult, first: bool) -> None:
        for action in result.plan.actions:
            if first and action.starting:
                self.pending.setdefault(action.target, (action, self.clock()))
        for outcome in result.outcomes:
            action = outcome.action
            target = action.target
            if not outcome.ok:
                if target not in self.pending:
                    self.pending[target] = (action, self.clock())
                self._finish(target, False, outcome.message)
                continue
            if action.kind in WORK:
                pending = self.pending.get(target)
                if pending is not None and pending[0].kind == "prepare" and action.kind == "start":
                    self._finish(target, True, "prepared")
                self.pending.setdefault(target, (action, self.clock()))
            elif action.kind == "ready" and target in self.pending:
                self._finish(target, True, "ready")
            elif action.kind == "forget" and target in self.pending:
                self._finish(target, True, "stopped")
            elif action.kind == "crash":
                pending = self.pending.get(target)
                if pending is not None and pending[0].kind in ("start", "restart", "wait"):
                    self._finish(target, False, action.cause, timed_out=action.timed_out)
                else:  # a crash found on arrival: recorded, then healed
                    self.outcomes.append(Outcome(action, True, "recorded"))
            elif action.kind in ("rehash", "adopt"):
                self.outcomes.append(Outcome(action, True))
        for target, why in result.plan.blocked.items():
            pending = self.pending.get(target)
            if pending is not None and pending[0].kind == "prepare":
                self._finish(target, False, why)

    def unfinished(self, blocked: Mapping[str, str]) -> None:
        """End what is still pending, each with its own reason: a service blocked says
        why; one still under way when another's failure ended the run says that (and
        goes on after mlxctl exits), never the other service's reason."""
        for target in list(self.pending):
            if target in blocked:
                why = blocked[target]
            elif self.failed:
                action = self.pending[target][0]
                why = f"still {_doing(action.kind)} when the run ended on another failure"
            else:
                why = "not converged"
            self._finish(target, False, why)


def _doing(kind: str) -> str:
    return {"prepare": "preparing its model", "stop": "stopping"}.get(kind, "starting")


@dataclass(frozen=True)
class ConvergeResult:
    first: PassResult
    last: PassResult
    outcomes: tuple[Outcome, ...]
    converged: bool
    exit_code: ExitCode

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)


def in_flight(plan: Plan, result: PassResult) -> bool:
    """Whether something is under way that will trigger another pass."""
    if any(a.kind == "wait" and a.reason in IN_FLIGHT for a in plan.actions):
        return True
    # Anything applied is looked at again at once (the controller requeues the pass).
    return any(o.ok for o in result.outcomes)


def stops_in_flight(plan: Plan, result: PassResult) -> bool:
    if any(a.kind == "kill" or (a.kind == "wait" and a.reason == "stopping") for a in plan.actions):
        return True
    return any(
        o.action.kind in ("stop", "restart", "kill") or o.action.stop_process
        for o in result.outcomes
    )


class OnceRun:
    """The end condition of one converge run, fed one pass at a time.

    Shared by :func:`converge` (driven by the controller's triggers) and by unit tests
    (driven pass by pass on fakes), so both decide "done" the same way.
    """

    def __init__(self, clock: Callable[[], float], options: PlanOptions) -> None:
        self.options = options
        self.tracker = Tracker(clock)
        self.first: PassResult | None = None
        self.last: PassResult | None = None
        self.converged = False

    def done(self, result: PassResult) -> bool:
        is_first = self.first is None
        if is_first:
            self.first = result
        self.last = result
        if result.plan.refused:
            return True
        self.tracker.see(result, first=is_first)
        # What this run started is not restarted by it: a start that fails is reported.
        started = {t for t, (a, _) in self.tracker.pending.items() if a.kind != "prepare"}
        self.options = dataclasses.replace(
            self.options, no_heal=self.options.no_heal | started | self.tracker.failed_targets
        )
        if self.tracker.failed:
            # No more restarts: end once every stop this run began is complete.
            self.options = dataclasses.replace(self.options, heal=False)
            return not stops_in_flight(result.plan, result)
        if result.converged:
            self.converged = True
            return True
        return not in_flight(result.plan, result)

    def result(self) -> ConvergeResult:
        assert self.first is not None and self.last is not None
        last = self.last
        if not self.converged and not last.plan.refused:
            self.tracker.unfinished(last.plan.blocked)
        ok = self.converged and not self.tracker.failed
        if last.plan.refused:
            code = self.first.refusal_code()
        elif ok:
            code = ExitCode.OK
        elif self.tracker.timed_out:
            code = ExitCode.HEALTH_TIMEOUT
        else:
            code = ExitCode.APPLY_FAILED
        return ConvergeResult(self.first, last, tuple(self.tracker.outcomes), ok, code)


def converge(
    ctx: Context,
    desired: DesiredState,
    options: PlanOptions,
    *,
    on_plan: Callable[[Plan], None] | None = None,
    on_pass: Callable[[PassResult], None] | None = None,
    poll_interval: float = 0.25,
) -> ConvergeResult:
    """Run passes until converged, failed or stuck; see the module docstring."""
    run = OnceRun(ctx.clock.time, options)
    controller = Controller(
        ctx, [], options, watch=False, desired=lambda: desired, poll_interval=poll_interval
    )
    # A run that ends when nothing changes must see each running server's liveness
    # before it decides (a server that cannot generate is replaced, not "converged").
    # `down` (nothing desired) stops them all anyway: it never waits for a probe.
    if desired.services:
        controller.monitor.settings.first_answer_wait = LIVE_TIMEOUT

    def until(ctl: Controller, result: PassResult) -> bool:
        if run.first is None and on_plan is not None:
            on_plan(result.plan)
        finished = run.done(result)
        ctl.options = run.options
        if on_pass is not None:
            on_pass(result)
        return finished

    controller.run(until)
    return run.result()
