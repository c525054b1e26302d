"""Use cases through a running controller: converge now, down, up, load, unload, ps, demand.

The admin API (:mod:`mlxctl.admin`) calls these with the controller it serves for;
they act through it (its demand book, its suspension, its passes) rather than running
a loop of their own, since the controller already holds the state lock and owns the
machine. ``ps`` and :func:`converge_errors` are also what the CLI uses without a
controller. Values in, values out: nothing here prints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlxctl.apply.events import Event
from mlxctl.desired.state import DesiredState
from mlxctl.errors import ExitCode, MlxctlError, NotFoundError
from mlxctl.observe.state import ObservedState, TierDemand
from mlxctl.reconcile.context import Context
from mlxctl.reconcile.controller import NotConverged
from mlxctl.reconcile.converge import ConvergeResult
from mlxctl.reconcile.demand import DemandBook
from mlxctl.reconcile.passes import PassResult, observe_state
from mlxctl.reconcile.suspension import Suspended
from mlxctl.reconcile.teardown import stop_strays
from mlxctl.runtimes.gateway import DemandAnswer, DemandReport
from mlxctl.status.services import build_status

if TYPE_CHECKING:
    from mlxctl.runtimes.gateway import TierVerdict

Convergence = ConvergeResult | NotConverged
# Seconds a demand report that causes a pass waits for it, to be answered with its
# verdicts (the gateway waits 2 s for an answer; past this, the last pass's verdicts).
REPORT_PASS_WAIT = 1.0


class ControllerPort(Protocol):
    """What these use cases need of a running controller
    (:class:`~mlxctl.reconcile.controller.Controller` is one; tests pass a fake)."""

    ctx: Context
    targets: list[Path]
    last: PassResult | None
    suspended: Suspended | None
    passes: int

    def trigger(self, reason: str) -> None: ...

    def suspend(self, by: str = ...) -> None: ...

    def resume(self, by: str) -> bool: ...

    def desired_now(self) -> DesiredState: ...

    def converge(self, reason: str, *, timeout: float | None = None) -> Convergence: ...

    def pass_now(self, reason: str, *, timeout: float) -> PassResult | None: ...


# --------------------------------------------------------------------------- converge


def same_targets(ctl: ControllerPort, files: Sequence[Path]) -> None:
    """Refuse (exit 6, as when the state lock was held) to converge files other than the
    controller's own: it applies its files and would undo another selection at once."""
    if not files:
        return
    asked = {os.path.abspath(f) for f in files}
    own = {os.path.abspath(t) for t in ctl.targets}
    if asked != own:
        shown = ", ".join(sorted(own)) or "(nothing)"
        raise MlxctlError(
            f"a controller (pid {os.getpid()}) applies {shown}: edit those files, or stop "
            "it to apply other files once",
            exit_code=ExitCode.LOCKED,
        )


def converge_now(
    ctl: ControllerPort, files: Sequence[Path] = (), *, by: str, timeout: float | None = None
) -> Convergence:
    """``reconcile --once`` and ``up`` through the controller: resume it if suspended, run
    a pass now, and wait until the stack converges, fails or is stuck."""
    same_targets(ctl, files)
    ctl.resume(by)
    return ctl.converge(by, timeout=timeout)


@dataclass(frozen=True)
class DownResult:
    result: Convergence
    # Processes carrying this state directory's marker but no record, stopped after.
    notes: tuple[str, ...] = ()


def down(ctl: ControllerPort, *, timeout: float | None = None) -> DownResult:
    """Suspend the controller (persisted: its restart keeps it suspended), wait until every
    server is stopped, then stop any stray of this state directory, as ``down`` does."""
    ctl.suspend("mlxctl down")
    result = ctl.converge("mlxctl down", timeout=timeout)
    ctx = ctl.ctx
    try:
        records = ctx.inventory.load()
    except MlxctlError:
        records = {}
    grace = 10.0
    strays = stop_strays(str(ctx.paths.state), records, ctx.procs, grace=grace, clock=ctx.clock)
    return DownResult(result, tuple(s.line() for s in strays))


def converge_errors(result: ConvergeResult) -> list[str]:
    """Why a converge run did not converge, one line per service (the CLI prints each as
    ``error: ...``)."""
    lines = []
    failed = {o.action.target for o in result.failed}
    for outcome in result.failed:
        first = outcome.message.splitlines()[0] if outcome.message else outcome.action.kind
        lines.append(f"{outcome.action.target}: {first}")
    for name, why in result.last.plan.blocked.items():
        if name not in failed:
            lines.append(f"{name}: {why}")
    if not result.failed and not result.last.plan.blocked:
        waits = [a for a in result.last.plan.actions if a.kind == "wait"]
        lines += [f"{a.target}: {a.cause.splitlines()[0]}" for a in waits]
        if not waits:
            lines.append("not converged (see mlxctl status)")
    return lines


# --------------------------------------------------------------------------- load, unload


@dataclass(frozen=True)
class TierState:
    """Where a tier stands for ``load``: ``ready``, ``cold``, ``loading``, ``draining`` or
    ``unavailable`` (the verdict vocabulary the gateway gets), with why."""

    tier: str
    state: str
    detail: str = ""
    retry_after: float | None = None
    note: str = ""
    startup_timeout: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _tier(ctl: ControllerPort, name: str) -> DesiredState:
    desired = ctl.last.desired if ctl.last is not None else ctl.desired_now()
    if not any(t.name == name for t in desired.tiers):
        if ctl.suspended is not None:
            raise MlxctlError(
                f"the controller is suspended ({ctl.suspended.by}): `mlxctl up` resumes it",
                exit_code=ExitCode.USAGE,
            )
        known = ", ".join(t.name for t in desired.tiers) or "none"
        raise NotFoundError(f"no tier named {name} in the stack (tiers: {known})")
    return desired


def tier_state(ctl: ControllerPort, name: str) -> TierState:
    """The tier's state after the controller's last pass (the readiness it observed, else
    the verdict the gateway would get, else what its status row says)."""
    desired = _tier(ctl, name)
    service = desired.get(name)
    timeout = service.startup_timeout if service is not None else None
    last = ctl.last
    if last is None:
        first = "the controller's first pass is running"
        return TierState(name, "loading", first, startup_timeout=timeout)
    seen = last.observed.services.get(name)
    ready = seen is not None and seen.alive and seen.record.ready_at is not None
    if ready and seen is not None and seen.health != "unready":
        return TierState(name, "ready", f"pid {seen.record.pid}", startup_timeout=timeout)
    if name in last.plan.blocked:
        return TierState(name, "unavailable", last.plan.blocked[name], startup_timeout=timeout)
    verdict = _verdicts(last).get(name)
    if verdict is not None:
        return TierState(
            name, verdict.state, verdict.detail, verdict.retry_after, startup_timeout=timeout
        )
    row = next((r for r in build_status(last.desired, last.observed) if r.name == name), None)
    health = row.health if row is not None else "stopped"
    state = {
        "starting": "loading",
        "preparing": "loading",
        "degraded": "loading",
        "stopping": "draining",
        "crash-looping": "unavailable",
        "crashed": "unavailable",
        "stopped": "cold",
        "ready": "loading",
    }[health]
    detail = (row.last_error or row.detail or health) if row is not None else health
    retry = row.restart_in if row is not None else None
    return TierState(name, state, detail, retry, startup_timeout=timeout)


def _verdicts(last: PassResult) -> Mapping[str, TierVerdict]:
    from mlxctl.plan.verdicts import verdicts

    return verdicts(last.desired, last.observed, last.plan)


def load(ctl: ControllerPort, name: str) -> TierState:
    """Record the wish to load ``name`` and run a pass now; the caller polls
    :func:`tier_state` until it serves or fails."""
    _tier(ctl, name)
    book = _book(ctl)
    book.request_load(name)
    ctl.trigger(f"mlxctl load {name}")
    return tier_state(ctl, name)


def unload(ctl: ControllerPort, name: str) -> TierState:
    """Record the wish to unload ``name`` and run a pass now. An ``always`` tier is
    stopped and started again by the planner: the answer's note says so."""
    desired = _tier(ctl, name)
    book = _book(ctl)
    book.request_unload(name)
    ctl.trigger(f"mlxctl unload {name}")
    service = desired.get(name)
    note = ""
    if service is not None and not service.on_demand:
        note = (
            f"{name} is `load: always`: the next pass starts it again (make it "
            "`load: on-demand`, or `suspend: true` it, to keep it stopped)"
        )
    state = tier_state(ctl, name)
    return TierState(name, state.state, state.detail, state.retry_after, note)


def _book(ctl: ControllerPort) -> DemandBook:
    book = ctl.ctx.demand
    if book is None:  # a controller always has one; a converge run never serves the API
        raise MlxctlError("this controller keeps no demand book")
    return book


# --------------------------------------------------------------------------- demand


def report_demand(ctl: ControllerPort, report: DemandReport) -> DemandAnswer:
    """Keep the gateway's report; run a pass now when it changes what the planner decides
    by (requests begin or stop waiting for a tier, its last request ends, the gateway
    starts holding a draining tier's requests); answer with the last pass's verdicts, or
    with the verdicts of the pass it caused when requests began waiting."""
    book = _book(ctl)
    before = {name: _decides(d) for name, d in book.observed().items()}
    book.report(report)
    after = {name: _decides(d) for name, d in book.observed().items()}
    changed = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
    fresh = None
    if changed:
        reason = f"demand changed for {', '.join(changed)}"
        if any(after[n][0] and not before.get(n, (False,))[0] for n in changed if n in after):
            # Requests begin waiting: the pass's verdicts are what the gateway waits for
            # (a load begun, another tier to drain), answered now, not a report later.
            fresh = ctl.pass_now(reason, timeout=REPORT_PASS_WAIT)
        else:
            ctl.trigger(reason)
    last = fresh or ctl.last
    if last is None:
        return DemandAnswer()
    return DemandAnswer(tiers=dict(_verdicts(last)))


def _decides(demand: TierDemand) -> tuple[bool, bool, bool]:
    """What of a tier's demand the planner's decisions turn on."""
    return (demand.waiting > 0, demand.in_flight > 0, demand.held_back)


# --------------------------------------------------------------------------- ranks


def ranks(ctl: ControllerPort) -> dict[str, Any]:
    """This machine's ranks of distributed tiers as the last pass saw and planned them:
    what the other members' controllers read through this machine's gateway
    (``GET /mlxctl/ranks``) to start and fail each group together."""
    from mlxctl.observe.peers import rank_report
    from mlxctl.plan.group import own_rank

    last = ctl.last
    if last is None or last.desired.host is None:
        return {"host": last.desired.host if last else "", "tiers": {}}
    host = last.desired.host
    mine = {s.name: s.group.rank for s in last.desired.tiers if s.group is not None}
    views = {name: own_rank(host, name, last.observed, last.plan) for name in mine}
    return rank_report(host, views, mine)


# --------------------------------------------------------------------------- ps


@dataclass(frozen=True)
class PsRow:
    """One loaded tier: what ``mlxctl ps`` shows."""

    tier: str
    pid: int
    rss: int | None
    estimate: int | None
    load: str
    # None without a controller (demand is the controller's knowledge).
    in_flight: int | None = None
    waiting: int | None = None
    idle_for: float | None = None
    unloads_in: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rss_of(pid: int) -> int | None:
    """Resident memory of the server and its children (``mlx.launch`` ranks), or None."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return int(total)
    except psutil.Error:
        return None


def ps(
    desired: DesiredState | None,
    observed: ObservedState,
    demand: Mapping[str, TierDemand] | None,
    *,
    rss: Any = rss_of,
) -> list[PsRow]:
    """What is loaded now: every live tier with its memory and, given the controller's
    demand, its requests in flight, idle time and when its idle timeout unloads it."""
    rows = []
    for name, seen in sorted(observed.services.items()):
        if seen.record.role != "tier" or not seen.alive or seen.record.pid <= 0:
            continue
        want = desired.get(name) if desired is not None else None
        estimate = want.memory.total if want is not None and want.memory is not None else None
        row = PsRow(
            name,
            seen.record.pid,
            rss(seen.record.pid),
            estimate,
            want.load if want is not None else "?",
        )
        if demand is not None:
            d = demand.get(name, TierDemand())
            idle = None if d.busy else max(observed.now - d.last_used(seen.record), 0.0)
            unloads = None
            if want is not None and want.on_demand and want.idle_timeout is not None:
                unloads = max(want.idle_timeout - idle, 0.0) if idle is not None else None
            row = PsRow(
                row.tier, row.pid, row.rss, row.estimate, row.load,
                d.in_flight, d.waiting, idle, unloads,
            )  # fmt: skip
        rows.append(row)
    return rows


def ps_through(ctl: ControllerPort) -> list[PsRow]:
    """``ps`` with the controller's view: its desired state, a fresh observation (health
    from its monitor) and its demand book."""
    desired = ctl.last.desired if ctl.last is not None else ctl.desired_now()
    observed = observe_state(ctl.ctx, desired)
    book = ctl.ctx.demand
    return ps(desired, observed, book.observed() if book is not None else {})


def ps_direct(ctx: Context, desired: DesiredState | None) -> list[PsRow]:
    """``ps`` without a controller: what runs, without demand (nobody counts requests)."""
    return ps(desired, observe_state(ctx, desired), None)


# --------------------------------------------------------------------------- info


def info(ctl: ControllerPort) -> dict[str, Any]:
    """Who answers: the controller's PID, files, passes and suspension."""
    suspended = ctl.suspended
    return {
        "pid": os.getpid(),
        "targets": [str(t) for t in ctl.targets],
        "passes": ctl.passes,
        "suspended": None if suspended is None else {"by": suspended.by, "since": suspended.since},
    }


def note_event(ctx: Context, kind: str, target: str, cause: str, message: str = "") -> None:
    """One event for a command the controller carried out for a client (the log says who
    asked what)."""
    ctx.event_log().emit(Event(ctx.clock.time(), kind, target, cause, "ok", message))
