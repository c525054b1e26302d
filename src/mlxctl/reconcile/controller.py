"""The controller: ``mlxctl reconcile`` keeps the machine matched as files change and servers die.

Level-triggered: file events, process exits, readiness answers, finished jobs and the
periodic resync only enqueue "reconcile now" with a reason
(:mod:`mlxctl.reconcile.triggers` holds the sources); each pass re-reads everything and
plans from scratch, so a missed or merged event can never leave a wrong state. A pass
never waits (it starts work and returns) so the controller is never deaf: an edit or a
crash is acted on within a poll interval whatever else is starting, stopping or being
prepared. A pass says itself when it wants to run again
(:attr:`~mlxctl.reconcile.passes.PassResult.requeue_after`: a backoff expiry, a startup
or stop deadline; ``requeue``: at once, to observe what it just applied), and the loop
honours it. A pass that raises is retried with a bounded exponential backoff
(:func:`failure_backoff`).

- Files: the stack directories are watched (a save is one debounced batch; mlxctl's
  own writes trigger nothing). An invalid or empty file is reported and changes nothing.
- Processes: every recorded process's identity is checked every ``poll_interval``
  (0.25 s), so a crash is noticed, logged and acted on within a second, and so is the
  end of a stop.
- Health: the monitor (:mod:`mlxctl.reconcile.monitor`) probes in the background:
  readiness while starting (a pass runs the moment a server answers), liveness
  every ``interval``; ``liveness_threshold`` failures in a row replace a hung server.
- Jobs: a model prepare that ends triggers a pass.

When the controller stops (SIGINT/SIGTERM) the servers keep running, as workloads
outlive a stopped Kubernetes controller: ``mlxctl down`` stops them. The same loop,
with no file watching and an exit condition, is ``reconcile --once`` and ``down``
(:mod:`mlxctl.reconcile.converge`).

While it runs, the controller is also what the daily commands talk to (its admin API,
:mod:`mlxctl.admin`): it holds the demand book (``ctx.demand``, what the gateway and
``load``/``unload`` ask), can be suspended (``down``: its desired state is nothing,
persisted across its restarts, :mod:`mlxctl.reconcile.suspension`) and resumed, and
lets a caller wait for the passes that follow a request (:meth:`Controller.converge`:
``reconcile --once`` through a running controller, with the same exit codes).
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlxctl.apply.events import Event
from mlxctl.desired.state import DesiredState
from mlxctl.errors import ExitCode, MlxctlError
from mlxctl.plan.actions import Plan, PlanOptions
from mlxctl.plan.backoff import failure_backoff
from mlxctl.reconcile import suspension
from mlxctl.reconcile.context import Context
from mlxctl.reconcile.demand import DemandBook
from mlxctl.reconcile.monitor import HealthMonitor, MonitorSettings
from mlxctl.reconcile.passes import (
    PassResult,
    load_stack_keeping_last_good,
    resolve,
    run_pass,
)
from mlxctl.reconcile.peers import PeerWatcher
from mlxctl.reconcile.triggers import POLL_INTERVAL, Trigger, controller_triggers
from mlxctl.status import report

if TYPE_CHECKING:
    from mlxctl.reconcile.converge import ConvergeResult

DesiredSource = Callable[[], DesiredState]
Until = Callable[["Controller", PassResult], bool]
# While suspended: nothing desired, converged as ``down`` does (no heal, pruning allowed).
SUSPENDED_OPTIONS = PlanOptions(allow_empty=True, prune_cause="mlxctl down", heal=False)


@dataclass(frozen=True)
class PassSeen:
    """What one turn of the loop gave, for those waiting on passes (:meth:`Controller.converge`).

    ``number`` is the pass's (passes are numbered as they begin). ``result`` is None when
    no plan was made: the stack was refused or the pass raised (``problem`` says why,
    ``exit_code`` as ``reconcile --once`` would exit), or the controller stopped.
    """

    number: int
    result: PassResult | None
    problem: str = ""
    exit_code: ExitCode = ExitCode.OK
    stopped: bool = False


@dataclass(frozen=True)
class NotConverged:
    """A wait for convergence that ended without a converge result (why, and the exit code)."""

    message: str
    exit_code: ExitCode


PassListener = Callable[[PassSeen], None]


class Controller:
    def __init__(
        self,
        ctx: Context,
        targets: Sequence[Path],
        options: PlanOptions,
        *,
        interval: float = 10.0,
        poll_interval: float = POLL_INTERVAL,
        log: Callable[[str], None] = print,
        watch: bool = True,
        desired: DesiredSource | None = None,
        triggers: Sequence[Trigger] | None = None,
    ) -> None:
        self.ctx = ctx
        self.targets = list(targets)
        # What wakes the loop besides health answers and jobs (see reconcile.triggers).
        self.triggers = list(
            controller_triggers(ctx, targets, poll_interval=poll_interval, watch=watch)
            if triggers is None
            else triggers
        )
        self.options = options
        self.interval = interval
        self.poll_interval = poll_interval
        self.log = log
        self.watch = watch
        self._desired = desired or (
            lambda: resolve(
                self.ctx, load_stack_keeping_last_good(self.ctx, self.targets, save=True)
            )
        )
        # What was last reported about invalid files, so each is said once, not per pass.
        self._reported_invalid: dict[Path, tuple[str, ...]] = {}
        self._reported_refusal = ""
        # Passes that raised in a row, and the failure last reported (said once).
        self._failures = 0
        self._reported_failure = ""
        # Why each service is blocked, as last said: a change is one event, not each pass.
        self._reported_blocked: dict[str, str] = {}
        self._queue: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._wake_at: float | None = None
        self.passes = 0
        self.last: PassResult | None = None
        self.monitor = HealthMonitor(
            ctx.prober,
            self.trigger,
            MonitorSettings(live_interval=interval, threshold=options.liveness_threshold),
        )
        ctx.health = self.monitor
        # Distributed tiers: the other members' ranks, asked of their gateways.
        self.peers = PeerWatcher(self.trigger, ctx.environ)
        ctx.peers = self.peers
        ctx.on_job_change = self.trigger
        self._custom_desired = desired is not None
        # Only the long-running controller is suspended by `down` and observes demand: a
        # converge run (`--once`, `down`) is told exactly what to converge to.
        self.suspended: suspension.Suspended | None = None
        if watch:
            self.suspended = suspension.read(ctx.paths)
            if ctx.demand is None:
                ctx.demand = DemandBook(ctx.clock)
        self._listeners: list[PassListener] = []
        self._listeners_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._queue.put("stop")

    def trigger(self, reason: str) -> None:
        self._queue.put(reason)

    # -- suspension (``down``) and resumption (``up``, ``reconcile --once``) ----------

    def suspend(self, by: str = "mlxctl down") -> None:
        """Desire nothing from the next pass on, and until resumed, across restarts: the
        marker is written first (a full disk raises, and nothing changed)."""
        marker = suspension.Suspended(since=self.ctx.clock.time(), by=by)
        suspension.write(self.ctx.paths, marker)
        self.suspended = marker
        self.log(f"controller: suspended by {by}: every server stops; nothing starts or heals")
        self.trigger(f"suspended by {by}")

    def resume(self, by: str) -> bool:
        """Apply the stack files again; True when the controller was suspended."""
        was = self.suspended is not None
        suspension.clear(self.ctx.paths)
        self.suspended = None
        if was:
            self.log(f"controller: resumed by {by}")
        self.trigger(f"resumed by {by}" if was else by)
        return was

    def desired_now(self) -> DesiredState:
        """What the controller would apply now, read without side effects (no last-good
        save): nothing while suspended."""
        if self.suspended is not None:
            return DesiredState(tiers=(), gateway=None)
        if self._custom_desired:
            return self._desired()
        return resolve(self.ctx, load_stack_keeping_last_good(self.ctx, self.targets, save=False))

    # -- waiting on passes ----------------------------------------------------------

    def subscribe(self, listener: PassListener) -> Callable[[], None]:
        """Call ``listener`` after every pass (on the loop's thread: keep it quick);
        returns the function that unsubscribes it."""
        with self._listeners_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _publish(self, seen: PassSeen) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(seen)

    def pass_now(self, reason: str, *, timeout: float) -> PassResult | None:
        """Run a pass now and wait, up to ``timeout`` seconds, for the first one that began
        after this call: its result (None when it made no plan, or none ended in time).
        Called from another thread than the loop's (a demand report that changes what
        the planner decides is answered with the verdicts of the pass it caused)."""
        seen: queue.Queue[PassSeen] = queue.Queue()
        unsubscribe = self.subscribe(seen.put)
        after = self.passes
        try:
            self.trigger(reason)
            deadline = self.ctx.clock.monotonic() + timeout
            while (wait := deadline - self.ctx.clock.monotonic()) > 0:
                try:
                    item = seen.get(timeout=wait)
                except queue.Empty:
                    return None
                if item.stopped:
                    return None
                if item.number > after:
                    return item.result
            return None
        finally:
            unsubscribe()

    def converge(
        self, reason: str, *, timeout: float | None = None
    ) -> ConvergeResult | NotConverged:
        """Run a pass now and follow the passes after it until done, judged as
        ``reconcile --once`` judges its own (:class:`~mlxctl.reconcile.converge.OnceRun`):
        converged, a failure of something started, or nothing in flight. The controller
        keeps healing meanwhile; only the verdict is ``--once``'s. Only passes that
        began after this call count, so a change made just before it (a resume, a
        suspension, a load wish) is seen. Called from another thread than the loop's."""
        from mlxctl.reconcile.converge import OnceRun

        seen: queue.Queue[PassSeen] = queue.Queue()
        unsubscribe = self.subscribe(seen.put)
        after = self.passes
        try:
            self.trigger(reason)
            run = OnceRun(self.ctx.clock.time, self.options)
            deadline = None if timeout is None else self.ctx.clock.monotonic() + timeout
            while True:
                wait = None if deadline is None else deadline - self.ctx.clock.monotonic()
                if wait is not None and wait <= 0:
                    if run.first is None:
                        return NotConverged(
                            f"the controller ran no pass within {timeout:.0f}s",
                            ExitCode.HEALTH_TIMEOUT,
                        )
                    return run.result()
                try:
                    item = seen.get(timeout=wait)
                except queue.Empty:
                    continue
                if item.stopped:
                    return NotConverged(
                        "the controller stopped before the stack converged", ExitCode.APPLY_FAILED
                    )
                if item.number <= after:
                    continue
                if item.result is None:
                    return NotConverged(item.problem, item.exit_code)
                if run.done(item.result):
                    return run.result()
        finally:
            unsubscribe()

    def run(self, until: Until | None = None) -> PassResult | None:
        """Pass after pass until stopped, or until ``until`` says the work is done."""
        for source in self.triggers:
            threading.Thread(
                target=source.run, args=(self.trigger, self._stop), name=source.name, daemon=True
            ).start()
        if self.watch:
            self.log(
                f"controller: watching {', '.join(str(t) for t in self.targets) or '(nothing)'}; "
                f"resync every {self.interval:.0f}s"
            )
            if self.suspended is not None:
                self.log(
                    f"controller: suspended by {self.suspended.by} (it starts and heals "
                    "nothing): `mlxctl up` or `mlxctl reconcile --once` resumes it"
                )
        self.trigger("controller started" if self.watch else "start")
        next_resync = self.ctx.clock.monotonic() + self.interval
        try:
            while not self._stop.is_set():
                timeout = next_resync - self.ctx.clock.monotonic()
                if self._wake_at is not None:
                    timeout = min(timeout, self._wake_at - self.ctx.clock.time())
                try:
                    reason = self._queue.get(timeout=max(timeout, 0.0))
                except queue.Empty:
                    if self._wake_at is not None and self.ctx.clock.time() >= self._wake_at:
                        reason = "deadline"
                    else:
                        reason = "periodic resync"
                if self._wake_at is not None and self.ctx.clock.time() >= self._wake_at:
                    # A wake is spent once due: the pass asks again if it still wants one.
                    # Kept, a pass that asks nothing (a stack refused) left it due for
                    # ever, and the loop ran tens of thousands of passes a second.
                    self._wake_at = None
                reasons = [reason, *self._drain()]
                if self._stop.is_set():
                    break
                try:
                    result = self.run_pass(", ".join(dict.fromkeys(reasons)))
                except Exception as exc:  # a daemon survives a failed pass; the next one retries
                    if not self.watch:
                        raise
                    delay = self._pass_failed(exc)
                    code = exc.exit_code if isinstance(exc, MlxctlError) else ExitCode.APPLY_FAILED
                    self._publish(PassSeen(self.passes, None, self._reported_failure, code))
                    # Not even the resync retries sooner: a failed resync that left it due
                    # made the controller loop hot (hundreds of passes a second).
                    next_resync = max(next_resync, self.ctx.clock.monotonic() + delay)
                    continue
                self._failures = 0
                self._reported_failure = ""
                if result is not None and until is not None and until(self, result):
                    return result
                if "periodic resync" in reasons:
                    jitter = random.uniform(-0.1, 0.1) * self.interval
                    next_resync = self.ctx.clock.monotonic() + self.interval + jitter
        finally:
            self._stop.set()
            self.monitor.stop()
            self.peers.stop()
            self._publish(PassSeen(self.passes, None, stopped=True))
            if self.watch:
                self.log("controller: stopped (servers keep running; `mlxctl down` stops them)")
        return self.last

    def _pass_failed(self, exc: Exception) -> float:
        """Back off after a pass that raised (exponentially, bounded), saying it once per
        distinct failure rather than once per attempt; returns the delay."""
        self._failures += 1
        delay = failure_backoff(self._failures, self.interval)
        why = str(exc) if isinstance(exc, MlxctlError) else repr(exc)
        if why != self._reported_failure:
            self._reported_failure = why
            self.log(f"reconcile failed: {why}; retrying with backoff (now {delay:.1f}s)")
            self.ctx.event_log().emit(
                Event(self.ctx.clock.time(), "reconcile", "stack", "pass", "failed", why)
            )
        self._wake_at = self.ctx.clock.time() + delay
        return delay

    def _drain(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    # -- one pass -------------------------------------------------------------

    def run_pass(self, reason: str) -> PassResult | None:
        self.passes += 1
        number = self.passes
        options = self.options
        try:
            if self.suspended is not None:
                desired, options = DesiredState(tiers=(), gateway=None), SUSPENDED_OPTIONS
            else:
                desired = self._desired()
        except MlxctlError as exc:
            if not self.watch:
                raise
            self._publish(PassSeen(number, None, str(exc), exc.exit_code))
            if str(exc) != self._reported_refusal:
                self._reported_refusal = str(exc)
                self.log(f"reconcile ({reason}): stack not applied, nothing changed:")
                for line in str(exc).splitlines():
                    self.log(f"  {line}")
                self.ctx.event_log().emit(
                    Event(self.ctx.clock.time(), "reconcile", "stack", reason, "refused", str(exc))
                )
            return None
        self._reported_refusal = ""
        self._report_invalid(desired)
        result = run_pass(
            self.ctx,
            desired,
            options=options,
            on_plan=lambda p: self._show_plan(reason, p),
            retry_failed_after=self.interval / 6,
        )
        self.last = result
        self._report_blocked(result.plan.blocked)
        self._fulfil_loads(result)
        # The pass says when it wants to run again; a trigger may run it sooner.
        after = result.requeue_after
        self._wake_at = None if after is None else self.ctx.clock.time() + after
        if result.requeue:
            self.trigger("follow-up")
        self._publish(PassSeen(number, result))
        return result

    def _fulfil_loads(self, result: PassResult) -> None:
        """Tell the demand book which tiers serve (clears the load wishes they fulfil)."""
        book = self.ctx.demand
        if book is None:
            return
        for name, seen in result.observed.services.items():
            ready_at = seen.record.ready_at
            if seen.record.role == "tier" and seen.alive and ready_at is not None:
                book.loaded(name, ready_at)

    def _report_invalid(self, desired: DesiredState) -> None:
        """Say once (log and event) that a file turned invalid, or valid again; meanwhile
        its last valid version is applied and healing goes on."""
        now = self.ctx.clock.time()
        for path, problems in desired.invalid_files.items():
            if self._reported_invalid.get(path) == problems:
                continue
            self._reported_invalid[path] = problems
            self.log(f"invalid: {path} (its last valid version is applied; healing goes on):")
            for line in problems:
                self.log(f"  {line}")
            self.ctx.event_log().emit(
                Event(now, "reconcile", str(path), "invalid file", "refused", "\n".join(problems))
            )
        for path in [p for p in self._reported_invalid if p not in desired.invalid_files]:
            del self._reported_invalid[path]
            self.log(f"valid again: {path}")
            self.ctx.event_log().emit(Event(now, "reconcile", str(path), "valid again", "ok"))

    def _report_blocked(self, blocked: Mapping[str, str]) -> None:
        """One event when a service becomes blocked (a port another program holds, a
        model that is missing) or its reason changes, and one when it is no longer."""
        now = self.ctx.clock.time()
        for name, why in blocked.items():
            if self._reported_blocked.get(name) != why:
                self._reported_blocked[name] = why
                self.ctx.event_log().emit(Event(now, "blocked", name, "blocked", "refused", why))
        for name in [n for n in self._reported_blocked if n not in blocked]:
            del self._reported_blocked[name]
            self.ctx.event_log().emit(Event(now, "blocked", name, "no longer blocked", "ok"))

    def _show_plan(self, reason: str, plan: Plan) -> None:
        if not self.watch:
            return
        if plan.refused or plan.has_changes or plan.blocked:
            self.log(f"reconcile ({reason}):")
            for line in report.plan_lines(plan):
                self.log(f"  {line}")
