"""The planner: ``plan(desired, observed) -> Plan``. Pure: no I/O, no clock.

Every decision mlxctl makes is taken here, as data, with its cause, so that
``diff``, ``reconcile --dry-run``, ``reconcile`` and the controller share one engine
and every action can be explained. Time arrives as ``observed.now``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import mlxctl.plan.group as groups
from mlxctl.capacity.memory import BudgetCheck, check_budget, gib
from mlxctl.desired.state import HASH_VERSION, DesiredService, DesiredState
from mlxctl.machine.record import ExitCause, Record
from mlxctl.observe.state import ObservedService, ObservedState, PeerRank, TierDemand
from mlxctl.plan.actions import Action, ActionKind, Plan, PlanOptions, WaitReason
from mlxctl.plan.eviction import Resident, make_room

# How a replacement caused by a request (not a crash) begins its cause, in the plan,
# the event log and the record's ``last_error``.
BY_REQUEST = "caused by a request, not a crash"
# An out-of-memory death raises the tier's estimate by this factor for its next start.
OOM_RAISE_FACTOR = 1.5


def plan(
    desired: DesiredState, observed: ObservedState, options: PlanOptions | None = None
) -> Plan:
    """Decide what to do to make ``observed`` match ``desired``."""
    opts = options or PlanOptions()
    memory = memory_check(desired)
    raised = dict(desired.memory_raised)
    if memory is not None and not memory.fits:
        return Plan(refused=memory.message, refusal="budget", memory=memory, memory_raised=raised)
    refusal = _empty_refusal(desired, observed, opts)
    if refusal:
        return Plan(refused=refusal, refusal="empty", memory=memory)
    planner = _Planner(desired, observed, opts)
    for service in desired.services:
        if service.suspended:
            planner.suspended(service)
        else:
            planner.service(service)
    for name, why in desired.unresolved.items():
        planner.blocked[name] = why  # left as it runs; the other tiers converge
    for name, seen in sorted(observed.services.items()):
        if desired.get(name) is None and name not in desired.unresolved:
            planner.undesired(seen)
    unenforced = {t.name: t.unenforced for t in desired.tiers if t.unenforced and t.memory}
    return Plan(
        actions=tuple(planner.actions),
        blocked=planner.blocked,
        memory=memory,
        unenforced=unenforced if memory is not None else {},
        memory_raised=raised,
        host=desired.host,
        elsewhere=dict(desired.elsewhere),
    )


class _Planner:
    """One planning run: the decisions for each service, appended as actions."""

    def __init__(self, desired: DesiredState, observed: ObservedState, opts: PlanOptions) -> None:
        self.desired = desired
        self.observed = observed
        self.now = observed.now
        self.opts = opts
        self.actions: list[Action] = []
        self.blocked: dict[str, str] = {}
        self._prepared: set[str] = set()
        # Loaded on-demand tiers, idle: (last used, idle timeout).
        self.idle: dict[str, tuple[float, float]] = {}
        # Tiers this pass stops or drains to make room (not evicted twice).
        self.evicting: set[str] = set()

    def add(self, kind: ActionKind, target: str, cause: str, **extra: Any) -> None:
        self.actions.append(Action(kind, target, cause, **extra))

    # -- desired services ---------------------------------------------------------

    def service(self, service: DesiredService) -> None:
        seen = self.observed.services.get(service.name)
        if service.role == "tier" and self.load_policy(service, seen):
            return
        if seen is None:
            self.start(service, "start", "new gateway" if service.role == "gateway" else "new tier")
            return
        rec = seen.record
        if not rec.spawned:
            if self.unconfirmed(seen):
                return
            self.start(service, "start", "its last start was interrupted before the spawn")
            return
        if rec.stopping:
            if self.stopping(seen):
                return
            self.after_stop(service, seen)
            return
        changed = _launch_changed(service, seen)
        if not seen.alive:
            if changed:
                self.start(service, "start", f"{changed} (was not running)")
            elif seen.foreign and rec.died_at is None:
                # Gone while nobody watched (a reboot, a controller that was down): its PID
                # was reused, so its exit was never seen. Not a crash of the server.
                self.start(
                    service,
                    "start",
                    f"not running: PID {rec.pid} now belongs to another process "
                    "(not counted as a crash)",
                )
            elif rec.died_at is None:
                self.crashed(service, seen, stop=False)
            else:
                self.after_crash(service, rec)
            return
        if service.group is not None and self.group_ended(service, seen):
            return
        if changed:
            if _can_overlap(service, seen):
                cause = f"{changed} (the old one serves until the new one is ready)"
                self.add("restart", service.name, cause, overlap=True)
                return
            # The new launch's model first, while the old server keeps serving: a download
            # of minutes must not be minutes of downtime.
            if self.model_ready(service):
                if self.drained(service, changed):
                    self.add("restart", service.name, changed)
            else:
                self.add(
                    "wait",
                    service.name,
                    f"restart once its model is ready: {changed}",
                    reason="preparing",
                )
            return
        if rec.spec_hash != service.spec_hash:
            self.add("rehash", service.name, "hash recipe changed; launch unchanged")
        if not service.serves_http:
            self.rank_above_0(service, seen)
            return
        if service.role == "gateway" and self.observed.files:
            stale = [p for p, text in service.files if self.observed.files.get(p) != text]
            if stale:
                self.add("reconfigure", service.name, _routes_cause(service, self.observed, stale))
        if seen.health == "ready":
            if rec.ready_at is None:
                self.add("ready", service.name, seen.detail or "ready")
            return
        if rec.ready_at is None:
            self.starting(service, seen)
            return
        if seen.poisoned and service.group is not None:
            # Rank 0 cannot generate: the ring lost a rank (a request could do it too,
            # but the group cannot tell which): the group's failure, counted.
            cause = f"the group failed: rank 0 cannot generate: {seen.detail}"
            self.crashed(service, seen, stop=True, cause=cause)
            return
        if seen.poisoned:
            self.crashed(service, seen, stop=True, cause=seen.detail, by_request=True)
            return
        if seen.probe_failures >= self.opts.liveness_threshold:
            cause = f"liveness failed {seen.probe_failures} times: {seen.detail}"
            if service.group is not None:
                cause = f"the group failed (hung): rank 0 {cause}"
            self.crashed(service, seen, stop=True, cause=cause)

    # -- distributed tiers: one group of ranks over several machines -------------------

    def peers(self, service: DesiredService) -> Mapping[str, PeerRank]:
        return self.observed.groups.get(service.name) or {}

    def group_ended(self, service: DesiredService, seen: ObservedService) -> bool:
        """Stop this rank when its group has ended elsewhere (:func:`groups.broken`): a
        failure is a crash (counted: every member backs off alike), another member's
        planned restart restarts this rank too. True when it decided."""
        assert service.group is not None
        ended = groups.broken(service.group, seen.record, self.peers(service))
        if ended is None:
            return False
        if ended.failed:
            self.crashed(service, seen, stop=True, cause=f"the group failed: {ended.cause}")
        else:
            self.add("restart", service.name, f"the group restarts: {ended.cause}")
        return True

    def rank_above_0(self, service: DesiredService, seen: ObservedService) -> None:
        """A rank above 0 answers no HTTP: it is ready when rank 0 serves its generation
        (its own death is the process poller's to see, rank 0's liveness the group's)."""
        assert service.group is not None
        rec = seen.record
        if rec.ready_at is not None:
            return
        first = service.group.hosts[0]
        if groups.rank0_serves(service.group, rec, self.peers(service)):
            self.add("ready", service.name, f"rank 0 on {first} serves generation {rec.generation}")
            return
        detail = f"waiting for rank 0 on {first} to serve generation {rec.generation}"
        self.starting(service, dataclasses.replace(seen, detail=detail))

    # -- on-demand tiers, unload ------------------------------------------------------

    def demand(self, name: str) -> TierDemand:
        return self.observed.demand.get(name) or TierDemand()

    def wanted(self, service: DesiredService) -> str:
        """Why an on-demand tier must run now ("" when nothing asks for it)."""
        demand = self.demand(service.name)
        if demand.waiting:
            return f"on demand: {demand.waiting} request(s) waiting"
        if demand.load_requested_at is not None:
            return "loaded by request (mlxctl load)"
        return ""

    def load_policy(self, service: DesiredService, seen: ObservedService | None) -> bool:
        """``load: on-demand`` and ``mlxctl unload``: start a tier when requests want it,
        stop it when idle past its timeout or asked to; True when that decided it all
        (else the usual path runs: health, crashes, launch changes)."""
        name = service.name
        if name in self.evicting:
            return True  # this pass already stops or drains it to make room
        demand = self.demand(name)
        on_demand = service.on_demand
        why = self.wanted(service) if on_demand else ""
        if seen is None or not seen.record.spawned:
            if not on_demand or (seen is not None and self.unconfirmed(seen)):
                return False
            if seen is not None:  # an intent whose spawn never happened
                self.add("forget", name, "its start never happened")
            if why:
                self.start(service, "start", why)
            else:
                self.add("wait", name, "on demand: not loaded", reason="on-demand")
            return True
        rec = seen.record
        if rec.stopping:
            if self.stopping(seen):
                return True
            if not on_demand or rec.died_at is not None:
                return False  # stopped: the usual path starts it again (after any backoff)
            if why:
                self.start(service, "start", why)
            else:
                self.add("forget", name, f"{rec.stop_cause or 'stopped'}: not loaded")
                self.add("wait", name, "on demand: not loaded", reason="on-demand")
            return True
        if not seen.alive:
            if on_demand and not why and not demand.busy:
                code = f" with code {seen.exit_code}" if seen.exit_code is not None else ""
                cause = f"exited{code} while idle; on demand: the next request loads it again"
                self.add("forget", name, cause)
                self.add("wait", name, "on demand: not loaded", reason="on-demand")
                return True
            return False  # a crash: the usual path heals it (with backoff)
        if rec.ready_at is None:
            return False  # starting: the usual path waits for it
        asked = demand.unload_requested_at
        if asked is not None and asked >= rec.started_at:
            if on_demand:
                cause = "unloaded by request (mlxctl unload)"
            else:
                cause = "unloaded by request (mlxctl unload); an always tier: started again next"
            return self.unload(service, cause)
        if not on_demand or demand.busy:
            return False
        changed = _launch_changed(service, seen)
        if changed:
            # Nothing asks for it: stop it, and the next request loads the new launch.
            return self.unload(service, f"{changed}; on demand: the next request loads it")
        if service.idle_timeout is None:
            return False
        since = self.last_used(service, seen)
        idle = self.now - since
        if idle >= service.idle_timeout:
            return self.unload(service, f"scaled to zero: idle {_duration(idle)}")
        left = service.idle_timeout - idle
        self.add(
            "wait",
            name,
            f"idle {_duration(idle)}, unloads in {_duration(left)}",
            not_before=since + service.idle_timeout,
            reason="idle",
        )
        return False  # the usual path still watches its health

    def last_used(self, service: DesiredService, seen: ObservedService) -> float:
        """When the tier last served: the end of its last request, a load, or its start."""
        return self.demand(service.name).last_used(seen.record)

    def unload(self, service: DesiredService, cause: str) -> bool:
        """Stop a loaded tier without cutting a request: once the gateway says it holds
        the tier's new requests and none is in flight. With no gateway reporting, no
        request can be on its way."""
        demand = self.demand(service.name)
        if self.observed.demand_reported and (demand.in_flight or not demand.held_back):
            self.drain(service.name, cause, demand)
        else:
            self.add("stop", service.name, cause)
        return True

    def drained(self, service: DesiredService, cause: str) -> bool:
        """A planned restart cuts no request: the gateway holds the tier's new requests,
        the ones in flight finish, then the restart goes (True). The running ones get the
        stop's grace at most: past it, the restart goes anyway and says how many it cut."""
        demand = self.demand(service.name)
        if not self.observed.demand_reported or (demand.held_back and not demand.in_flight):
            return True
        since = demand.held_back_since
        if demand.held_back and since is not None and self.now - since >= self.opts.grace:
            return True
        self.drain(service.name, f"restart ({cause})", demand)
        return False

    def drain(self, name: str, cause: str, demand: TierDemand) -> None:
        if demand.in_flight:
            why = f"{cause}: draining ({demand.in_flight} request(s) in flight; new ones wait)"
        else:
            why = f"{cause}: draining (new requests wait)"
        self.add("wait", name, why, reason="draining")

    def suspended(self, service: DesiredService) -> None:
        """Left alone: nothing new is begun; the one "wait" says what a resume would do.

        A stop already under way is still seen through (SIGKILL after the grace), so
        suspending never leaves a half-stopped process behind."""
        seen = self.observed.services.get(service.name)
        if seen is not None and seen.record.stopping and self.stopping(seen):
            return
        resumed = _Planner(self.desired, self.observed, self.opts)
        resumed.service(dataclasses.replace(service, suspended=False))
        would = [f"{a.kind} ({a.cause.splitlines()[0]})" for a in resumed.actions if a.changes]
        would += [f"blocked ({why})" for why in resumed.blocked.values()]
        cause = "; ".join(would) if would else "nothing (in sync)"
        self.add("wait", service.name, f"suspended; on resume: {cause}", reason="suspended")

    def dependencies_ready(self, service: DesiredService) -> bool:
        """``dependsOn``: every named tier is running and has answered its readiness check."""
        waiting = []
        for dep in service.depends_on:
            seen = self.observed.services.get(dep)
            if seen is None or not seen.serves:
                waiting.append(dep)
        if waiting:
            self.add(
                "wait",
                service.name,
                f"waiting for {', '.join(waiting)} to be ready (dependsOn)",
                reason="dependency",
            )
        return not waiting

    def startup_timeout(self, service: DesiredService) -> float:
        return self.opts.startup_timeout or service.startup_timeout

    def starting(self, service: DesiredService, seen: ObservedService) -> None:
        rec = seen.record
        timeout = self.startup_timeout(service)
        if seen.fatal:
            # Never ready, so never broken by a request: a model that fails to load says
            # "generation thread died" too, and must back off like any crash loop.
            cause = f"cannot become ready ({seen.detail})"
            self.crashed(service, seen, stop=True, cause=cause)
            return
        deadline = rec.started_at + timeout
        if self.now >= deadline:
            detail = f": {seen.detail}" if seen.detail else ""
            cause = f"not ready before the startup timeout ({timeout:.0f}s){detail}"
            self.crashed(service, seen, stop=True, cause=cause, timed_out=True)
            return
        elapsed = _duration(self.now - rec.started_at)
        last = seen.detail or "not probed yet"
        self.add(
            "wait",
            service.name,
            f"starting for {elapsed}: {last}",
            not_before=deadline,
            reason="starting",
        )

    def after_stop(self, service: DesiredService, seen: ObservedService) -> None:
        """Its old process is gone: start the new launch (a crash's backoff still applies)."""
        rec = seen.record
        if rec.died_at is not None:
            self.after_crash(service, rec)
            return
        self.start(service, "start", rec.stop_cause or "restart")

    def after_crash(self, service: DesiredService, rec: Record) -> None:
        if (rec.last_error or "").startswith(BY_REQUEST):
            self.heal(service, "replacing a server a request broke (not a crash)", rec.exit_cause)
            return
        if rec.not_before is None or self.now >= rec.not_before:
            self.heal(service, f"restarting after crash #{rec.consecutive_crashes}", rec.exit_cause)
            return
        wait = rec.not_before - self.now
        self.add(
            "wait",
            service.name,
            f"crash-loop backoff: restart in {wait:.0f}s (crash #{rec.consecutive_crashes})",
            not_before=rec.not_before,
            reason="backoff",
        )

    def heal(self, service: DesiredService, cause: str, died: ExitCause | None) -> None:
        """Restart a crashed service (``died``: why it died, when classified: the start
        carries it, so the new record and its event say why this restart happened)."""
        if self.opts.heal and service.name not in self.opts.no_heal:
            why = f"{cause}: {died.summary()}" if died is not None else cause
            self.start(service, "start", why, restarted_after=died)
        else:
            self.add("wait", service.name, f"not restarted ({cause} is due)", reason="backoff")

    def crashed(
        self,
        service: DesiredService,
        seen: ObservedService,
        *,
        stop: bool,
        cause: str | None = None,
        timed_out: bool = False,
        by_request: bool = False,
    ) -> None:
        """Record a crash (and stop what is left); ``by_request``: a request broke the
        server, which says nothing about its launch, so it is replaced at once and the
        crash-loop count stays where it was (a client cannot push a tier into backoff)."""
        rec = seen.record
        uptime = self.now - rec.started_at
        if by_request:
            crashes, delay = rec.consecutive_crashes, 0.0
        else:
            crashes = self.opts.backoff.count_after_crash(rec.consecutive_crashes, uptime)
            delay = self.opts.backoff.delay(crashes)
        exit_cause = seen.exit_cause if cause is None else None
        if exit_cause is not None:
            cause = f"{exit_cause.word}: {exit_cause.detail} after {_duration(uptime)}"
        elif cause is None:
            code = f" with code {seen.exit_code}" if seen.exit_code is not None else ""
            when = " while starting" if rec.ready_at is None else ""
            cause = f"exited{code}{when} after {_duration(uptime)}"
        if by_request:
            full = f"{BY_REQUEST}: {cause}; replaced at once, crash count stays {crashes}"
        else:
            full = f"{cause}; crash #{crashes}"
        tail = [line for line in seen.log_tail if line.strip()]
        if tail:
            # The first line stands alone (status, events): it ends with the last log
            # line, never with a dangling label; the full tail follows.
            full += f"; last log line: {tail[-1].strip()}\n" + "\n".join(seen.log_tail)
        self.add(
            "crash",
            service.name,
            full,
            crashes=crashes,
            not_before=self.now + delay,
            stop_process=stop,
            timed_out=timed_out,
            by_request=by_request,
            exit_cause=exit_cause,
            raise_memory_to=self.raised_estimate(service, rec, exit_cause),
        )
        if stop:
            return  # restarted once the stop completes (see after_stop)
        if delay == 0:
            self.heal(service, f"restarting after crash #{crashes}", exit_cause)
        else:
            self.add(
                "wait",
                service.name,
                f"crash-loop backoff: restart in {delay:.0f}s (crash #{crashes})",
                not_before=self.now + delay,
                reason="backoff",
            )

    def raised_estimate(
        self, service: DesiredService, rec: Record, exit_cause: ExitCause | None
    ) -> int | None:
        """An out-of-memory death: the estimate the next admission of this tier uses
        (the one it ran with, times :data:`OOM_RAISE_FACTOR`); None otherwise."""
        if exit_cause is None or not exit_cause.out_of_memory or service.role != "tier":
            return None
        ran_with = rec.memory_bytes or (service.memory.total if service.memory else 0)
        if not ran_with:
            return None
        return int(ran_with * OOM_RAISE_FACTOR)

    def start(
        self,
        service: DesiredService,
        kind: ActionKind,
        cause: str,
        *,
        restarted_after: ExitCause | None = None,
    ) -> None:
        """Start ``service`` when the tiers it depends on are ready, its model is there and
        its memory is free; else say why not."""
        if not self.dependencies_ready(service):
            return
        if not self.model_ready(service) or not self.memory_free(service):
            return
        if service.serves_http and not self.port_free(service):
            return
        if service.group is not None:
            seen = self.observed.services.get(service.name)
            record = seen.record if seen is not None else None
            generation, why = groups.join(service.group, record, self.peers(service))
            if why:
                # Nothing here holds it back (its members read this wait as "can start").
                peers = self.peers(service)
                reason: WaitReason = "member" if groups.held(service.group, peers) else "group"
                self.add("wait", service.name, f"waiting for the group: {why}", reason=reason)
                return
            rank = f"rank {service.group.rank} of {service.group.size}"
            cause = f"{cause} ({rank}, generation {generation})"
            self.add(kind, service.name, cause, generation=generation)
            return
        self.add(kind, service.name, cause, restarted_after=restarted_after)

    def port_free(self, service: DesiredService) -> bool:
        """A declared port another program holds blocks the start (no attempt, so no
        failure per pass); it is looked at again at each pass, and started once free. An
        automatic port is never held here: it is reassigned when the desired state is
        resolved."""
        owner = self.observed.ports_held.get(service.port)
        if owner is None:
            return True
        why = f"port {service.port} is held by {owner}"
        self.blocked[service.name] = why
        self.add("wait", service.name, f"{why}; started once it is free", reason="port")
        return False

    def model_ready(self, service: DesiredService) -> bool:
        model = service.model
        if model is None or model.identity in self.observed.models_present:
            return True
        name = service.name
        unusable = self.observed.models_unusable.get(model.identity)
        if unusable is not None:
            # There, but a runtime would crash on it: blocked, the others converge.
            self.blocked[name] = f"model {model.display} cannot be used: {unusable}"
            return False
        job = self.observed.prepares.get(model.identity)
        if job is not None and job.running:
            self.add("wait", name, f"model {model.display}: {job.describe()}", reason="preparing")
            return False
        if job is not None and job.error and job.finished_at is not None:
            retry = job.finished_at + self.opts.prepare_retry
            if self.now < retry:
                self.blocked[name] = f"preparing {model.display} failed: {job.error}"
                self.add(
                    "wait",
                    name,
                    f"model prepare failed; retry in {retry - self.now:.0f}s",
                    not_before=retry,
                    reason="preparing",
                )
                return False
        if model.prepare is None:
            hint = f"; {model.hint}" if model.hint else ""
            self.blocked[name] = f"model {model.display} is not present at {model.directory}{hint}"
            return False
        if model.identity not in self._prepared:
            self._prepared.add(model.identity)
            again = " (the last attempt was interrupted)" if job is not None else ""
            self.add("prepare", name, f"model {model.display} is not prepared yet{again}")
        else:
            self.add("wait", name, f"model {model.display} is being prepared", reason="preparing")
        return False

    def memory_free(self, service: DesiredService) -> bool:
        """Admission in time: the memory in use now (processes still stopping included)
        plus this start's estimate must fit the budget, so a start never overlaps the stop
        that frees its memory. When it does not fit, idle on-demand tiers are evicted (and
        busy ones drained) as :func:`~mlxctl.plan.eviction.make_room` chooses."""
        budget = self.desired.budget_bytes
        if budget is None or service.memory is None:
            return True
        residents = [
            self.resident(seen)
            for name, seen in self.observed.services.items()
            if seen.alive and name != service.name and seen.record.role == "tier"
        ]
        need = service.memory.total
        room = make_room(
            need, budget, residents, now=self.now, min_residency=self.desired.min_residency
        )
        if room.fits_now:
            return True
        for name in room.evict:
            if name not in self.evicting:
                self.evicting.add(name)
                self.evict(name, service.name)
        for name in room.drain:
            if name not in self.evicting:
                self.evicting.add(name)
                self.actions = [a for a in self.actions if a.target != name or a.kind != "wait"]
                self.drain(name, f"evicted for {service.name}", self.demand(name))
        holders = (
            ", ".join(f"{n} {gib(b)} ({why})" for n, b, why in room.held_by if b)
            or "other services"
        )
        held = sum(b for _, b, _ in room.held_by)
        freeing = ", ".join((*room.evict, *room.drain))
        if freeing:
            cause = f"waiting for memory: {gib(need)} needed; making room: {freeing}"
        else:
            cause = (
                f"waiting for memory: {gib(need)} needed, {gib(held)} of {gib(budget)} held "
                f"by {holders}"
            )
        self.add("wait", service.name, cause, not_before=room.retry_at, reason="memory")
        return False

    def resident(self, seen: ObservedService) -> Resident:
        rec = seen.record
        wanted = self.desired.get(rec.name)
        demand = self.demand(rec.name)
        last_used = (
            self.last_used(wanted, seen) if wanted is not None else rec.ready_at or rec.started_at
        )
        return Resident(
            name=rec.name,
            bytes=rec.memory_bytes or 0,
            # Only a desired on-demand tier is evictable (a removed one stops anyway).
            on_demand=wanted is not None and wanted.on_demand and not rec.stopping,
            in_flight=demand.in_flight,
            last_used=last_used,
            loaded_at=rec.ready_at or rec.started_at,
            stopping=rec.stopping or rec.name in self.evicting,
        )

    def evict(self, name: str, starting: str) -> None:
        seen = self.observed.services[name]
        idle = _duration(self.now - self.resident(seen).last_used)
        cause = f"evicted for {starting}: least recently used, idle {idle}"
        # Drop what this pass planned for it already (an idle wait): it goes now.
        self.actions = [a for a in self.actions if a.target != name or a.kind != "wait"]
        self.unload(self.desired_tier(name), cause)

    def desired_tier(self, name: str) -> DesiredService:
        service = self.desired.get(name)
        assert service is not None  # only desired on-demand tiers are evicted
        return service

    # -- stops, intents, services no longer desired ------------------------------------

    def stopping(self, seen: ObservedService) -> bool:
        """Escalate or wait for a stop in progress; False once every process is gone."""
        if not seen.alive:
            return False
        rec = seen.record
        name = rec.name
        assert rec.stop_requested_at is not None
        if rec.kill_sent_at is None:
            deadline = rec.stop_requested_at + self.opts.grace
            if self.now >= deadline:
                self.add("kill", name, f"still running {self.opts.grace:.0f}s after SIGTERM")
            else:
                cause = f"stopping ({rec.stop_cause or 'stop'}): {seen.detail}"
                self.add("wait", name, cause, not_before=deadline, reason="stopping")
            return True
        deadline = rec.kill_sent_at + self.opts.kill_wait
        if self.now >= deadline:
            self.blocked[name] = f"{seen.detail} after SIGKILL; it will not be started twice"
        else:
            self.add(
                "wait", name, "killed; waiting for it to go", not_before=deadline, reason="stopping"
            )
        return True

    def unconfirmed(self, seen: ObservedService) -> bool:
        """An intent record: adopt its process, or wait a moment for its spawn; False when
        it never started."""
        rec = seen.record
        if seen.adoptable is not None:
            self.add(
                "adopt", rec.name, "spawned, but its PID was never recorded", adopt=seen.adoptable
            )
            return True
        if self.now - rec.started_at < self.opts.spawn_grace:
            self.add(
                "wait",
                rec.name,
                "spawning",
                reason="spawning",
                not_before=rec.started_at + self.opts.spawn_grace,
            )
            return True
        return False

    def undesired(self, seen: ObservedService) -> None:
        """A recorded service this machine no longer runs: removed from the stack, or
        moved to another machine (which starts it there); stopped here. A tier another
        machine serves that never ran here has no record, so nothing to stop."""
        rec = seen.record
        prune = self.opts.prune_cause
        moved = self.desired.elsewhere.get(rec.name) if rec.role == "tier" else None
        if moved is not None:
            prune = f"moved to host '{moved}'"
        if rec.stack and self.desired.scope is not None and rec.stack not in self.desired.scope:
            return  # another stack owns it: applying this selection never prunes it
        if not _prunable(self.desired, rec):
            cause = f"suspended; on resume: stop ({prune})"
            self.add("wait", rec.name, cause, reason="suspended")
            return
        if rec.handover_to and not rec.stopping and self.serving_until_successor(seen):
            return
        if self.desired.hold_prune and not rec.stopping:
            self.add("wait", rec.name, self.desired.hold_prune, reason="held")
            return
        if not rec.spawned:
            if not self.unconfirmed(seen):
                self.add("forget", rec.name, f"{prune} (its spawn never happened)")
            return
        if rec.stopping:
            if not self.stopping(seen):
                self.add("forget", rec.name, f"{rec.stop_cause or prune}: stopped")
            return
        if seen.alive:
            self.add("stop", rec.name, self.handed_over(rec) or prune)
        else:
            self.add("forget", rec.name, f"{prune} (already exited)")

    def serving_until_successor(self, seen: ObservedService) -> bool:
        """A retiring instance that has served keeps serving while the one replacing it is
        desired and not ready yet (it may be starting, or crash-looping: clients keep an
        answer either way, as a rolling update keeps its old pods). True: it waits."""
        rec = seen.record
        if not seen.alive or rec.ready_at is None or self.desired.get(rec.handover_to) is None:
            return False
        successor = self.observed.services.get(rec.handover_to)
        if successor is not None and successor.serves:
            return False
        state = "not started" if successor is None else _successor_state(successor)
        self.add(
            "wait",
            rec.name,
            f"serving until the new {rec.handover_to} is ready ({state})",
            reason="handover",
        )
        return True

    def handed_over(self, rec: Record) -> str:
        """The stop cause of a retiring instance whose successor serves ("" otherwise)."""
        successor = self.observed.services.get(rec.handover_to) if rec.handover_to else None
        if successor is None or not successor.serves:
            return ""
        return f"replaced: the new {rec.handover_to} (pid {successor.record.pid}) serves"


def _can_overlap(service: DesiredService, seen: ObservedService) -> bool:
    """Whether a changed launch may start beside the running one instead of after it.

    Only the gateway: it holds no model memory, and ours opens its port with
    ``SO_REUSEPORT`` once it can serve, so the new process shares the old one's port
    and the old one stops only when the new one answers (no window of refused
    connections). The old process must be one that serves (not still starting) and,
    on the same port, an ``mlxctl.gateway`` (the LiteLLM proxy of earlier versions
    binds without ``SO_REUSEPORT``, so the new one could not bind beside it).
    """
    rec = seen.record
    if service.role != "gateway" or rec.ready_at is None:
        return False
    return rec.port != service.port or "mlxctl.gateway" in rec.cmdline


def _successor_state(seen: ObservedService) -> str:
    rec = seen.record
    if rec.stopping:
        return "stopping"
    if not seen.alive:
        return "not running"
    if rec.ready_at is None:
        return f"starting, pid {rec.pid}" + (f": {seen.detail}" if seen.detail else "")
    return seen.detail or "not answering"


def memory_check(desired: DesiredState) -> BudgetCheck | None:
    """The ``always`` tiers' estimates plus the largest on-demand tier's against the
    budget (None when there is no budget)."""
    if desired.budget_bytes is None:
        return None
    always = [(t.name, t.memory) for t in desired.tiers if t.memory is not None and not t.on_demand]
    on_demand = [(t.name, t.memory) for t in desired.tiers if t.memory is not None and t.on_demand]
    check = check_budget(
        always,
        desired.budget_bytes,
        alternatives=desired.memory_alternatives,
        on_demand=on_demand,
    )
    unknown = [t.name for t in desired.tiers if t.memory is None]
    if unknown and check.fits:
        note = f"; not estimated (no model files yet): {', '.join(unknown)}"
        check = dataclasses.replace(check, message=check.message + note)
    return check


def _empty_refusal(desired: DesiredState, observed: ObservedState, opts: PlanOptions) -> str | None:
    """Why a plan that would stop every tier must not be applied, if it must not."""
    if opts.allow_empty or desired.hold_prune:
        return None  # held: nothing is stopped anyway (see _Planner.undesired)
    if desired.empty_files:
        names = ", ".join(str(p) for p in desired.empty_files)
        return (
            f"stack file {names} is empty: not applied (a save in progress?); delete the file "
            "to remove its tiers, or pass --allow-empty"
        )
    running = [
        n
        for n, s in observed.services.items()
        if s.alive and s.record.role == "tier" and _prunable(desired, s.record)
    ]
    # A machine whose tiers all moved to the others: the stack is not empty (the
    # refusal guards against a file emptied by mistake).
    if not desired.tiers and not desired.unresolved and not desired.elsewhere and running:
        return (
            f"the desired state is empty: refusing to stop {len(running)} running tier(s) "
            f"({', '.join(sorted(running))}) without --allow-empty"
        )
    return None


def _prunable(desired: DesiredState, rec: Record) -> bool:
    """Whether this desired state speaks for ``rec``: its stack is in scope and not suspended."""
    if not rec.stack:
        return True
    if desired.scope is not None and rec.stack not in desired.scope:
        return False
    return rec.stack not in desired.suspended_stacks


def _routes_cause(service: DesiredService, observed: ObservedState, stale: list[str]) -> str:
    """``routes changed: + big, - small`` (the gateway reloads its routes file in place)."""
    import json

    def names(text: str | None) -> set[str]:
        try:
            data = json.loads(text or "{}")
            return {n for r in data.get("routes", []) for n in (r["name"], *r.get("aliases", []))}
        except (ValueError, TypeError, KeyError, AttributeError):
            return set()

    files = dict(service.files)
    old = set().union(*(names(observed.files.get(p)) for p in stale))
    new = set().union(*(names(files[p]) for p in stale))
    delta = [f"+ {n}" for n in sorted(new - old)] + [f"- {n}" for n in sorted(old - new)]
    return "routes changed" + (f": {', '.join(delta)}" if delta else " (fallbacks, limits)")


def _launch_changed(service: DesiredService, seen: ObservedService) -> str:
    """Why the running launch differs from the desired one ("" when it does not)."""
    rec = seen.record
    same_recipe = rec.spec_hash.split(":", 1)[0] == HASH_VERSION
    if same_recipe and rec.spec_hash == service.spec_hash:
        return ""
    reasons = describe_changes(rec.launch, service.launch)
    if reasons:
        return reasons
    if same_recipe:
        return "launch environment changed (a secret's value, or mlxctl's python)"
    return ""


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Human causes like ``args changed: max-tokens 512 -> 4096``."""
    parts: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) or isinstance(b, Mapping):
            parts.append(f"{key} changed: {_dict_delta(a or {}, b or {})}")
        else:
            parts.append(f"{key} changed: {_show(a)} -> {_show(b)}")
    return "; ".join(parts)


def _dict_delta(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            out.append(f"+{key}={_show(new[key])}")
        elif key not in new:
            out.append(f"-{key}")
        elif old[key] != new[key]:
            out.append(f"{key} {_show(old[key])} -> {_show(new[key])}")
    return ", ".join(out)


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
