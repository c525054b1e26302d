"""Status: per service, desired versus running (sync) and what its process shows (health).

Sync and health are separate, as in Argo CD: a tier can be Synced and crash-looping,
or ready and OutOfSync (an edit not applied yet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from mlxctl.desired.state import DesiredService, DesiredState
from mlxctl.observe.state import ObservedService, ObservedState, TierDemand

HealthState = Literal[
    "ready",
    "starting",
    "degraded",
    "stopping",
    "preparing",
    "crash-looping",
    "crashed",
    "stopped",
    # An on-demand tier scaled to zero: healthy, nothing runs, the next request loads it.
    "unloaded",
    # Another machine's tier (a stack of several): its controller runs it; not run here.
    "elsewhere",
]
SyncState = Literal["Synced", "OutOfSync", "Unknown", "Suspended", "Elsewhere"]
STATUS_SCHEMA = "mlxctl.status/v1"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    role: str
    runtime: str
    pid: int | None
    port: int | None
    health: HealthState
    sync: SyncState
    uptime: float | None
    restarts: int
    last_error: str | None
    model: str | None
    detail: str
    # Seconds until a crash-looping service is restarted (its backoff expires).
    restart_in: float | None = None
    # A gateway being replaced (``gateway~PID``): the service it serves for until the
    # new one is ready.
    replaced_by: str | None = None
    # ``always`` or ``on-demand``; for a loaded tier, requests in flight (as the gateway
    # reported them to the controller) and, for an idle on-demand one, how long it has
    # been idle and when it unloads (None: unknown, or it never does).
    load: str = "always"
    in_flight: int | None = None
    idle_for: float | None = None
    unloads_in: float | None = None
    # Why it died, for a service that crashed (kind, word, detail, exit_code, signal,
    # by_us, out_of_memory, evidence; see mlxctl.observe.exit_cause).
    exit_cause: dict[str, Any] | None = None
    # Why its last restart happened: the death it followed (the same fields), kept once
    # the restart succeeded; null when its last start followed no classified crash.
    restarted_after: dict[str, Any] | None = None
    # The machine that serves it, in a stack of several (docs/multi-host.md).
    host: str | None = None
    # A distributed tier: this machine's rank and its group as this machine sees it
    # (``rank``, ``size``, ``backend``, ``generation``, ``state``: serving, forming,
    # stopping, failed or down; ``failed``: which rank failed and how; ``members``: each
    # rank's host, state and generation, the others' as their controllers last said).
    group: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.host is None:  # a stack of one machine: as before hosts existed
            del data["host"]
        return data

    @property
    def group_line(self) -> str:
        """``group serving, generation 3`` / ``group failed: rank 1 on b: SIGKILL ...``."""
        g = self.group
        if g is None:
            return ""
        if g["failed"] and g["state"] != "serving":
            return f"group {g['state']}: {g['failed']}"
        return f"group {g['state']}, generation {g['generation']}"


def health_of(seen: ObservedService | None, now: float) -> HealthState:
    if seen is None:
        return "stopped"
    rec = seen.record
    if rec.stopping and seen.alive:
        return "stopping"
    if not rec.spawned:
        return "starting" if seen.alive else "stopped"
    if seen.alive:
        if seen.health == "ready" or (seen.health == "unknown" and rec.ready_at is not None):
            return "ready"
        return "starting" if rec.ready_at is None else "degraded"
    if rec.not_before is not None and now < rec.not_before:
        return "crash-looping"
    return "crashed"


def build_status(desired: DesiredState | None, observed: ObservedState) -> list[ServiceStatus]:
    """One row per desired or recorded service: tiers first (stack order), then the gateway."""
    names: list[str] = [s.name for s in desired.tiers] if desired else []
    names += sorted(
        n for n, s in observed.services.items() if s.record.role == "tier" and n not in names
    )
    elsewhere = dict(desired.elsewhere) if desired else {}
    names += [n for n in elsewhere if n not in names]
    names.append("gateway")
    # A gateway being replaced (``gateway~PID``) serves until the new one is ready.
    names += sorted(n for n, s in observed.services.items() if s.record.handover_to)
    rows: list[ServiceStatus] = []
    for name in names:
        want = desired.get(name) if desired else None
        seen = observed.services.get(name)
        if name in elsewhere and seen is None:
            rows.append(_elsewhere(name, elsewhere[name]))
            continue
        if want is None and seen is None:
            continue
        rec = seen.record if seen else None
        health = health_of(seen, observed.now)
        detail = seen.detail if seen else ""
        job = (
            observed.prepares.get(want.model.identity)
            if want is not None and want.model is not None
            else None
        )
        if job is not None and job.running and (seen is None or not seen.alive):
            health, detail = "preparing", job.describe()
            elapsed = observed.now - job.started_at
            if job.done and elapsed > 0:
                detail += f", {job.done / elapsed / 1e6:.1f} MB/s"
        if desired is None:
            sync: SyncState = "Unknown"
        elif (want is not None and want.suspended) or (
            want is None and rec is not None and rec.stack in desired.suspended_stacks
        ):
            sync = "Suspended"  # left alone until resumed, whatever runs
        elif want is None:
            sync = "OutOfSync"  # running but no longer in the stack
        elif seen is None or not seen.alive:
            sync = "OutOfSync"
        else:
            sync = "Synced" if rec is not None and rec.spec_hash == want.spec_hash else "OutOfSync"
        alive = bool(seen and seen.alive)
        on_demand = want is not None and want.on_demand
        demand = observed.demand.get(name)
        cold = on_demand and not alive and health in ("stopped", "crashed")
        if cold and sync == "OutOfSync" and not (demand is not None and demand.busy):
            sync, health, detail = "Synced", "unloaded", "on demand: not loaded"
        idle_for = unloads_in = None
        if on_demand and want is not None and rec is not None and alive and health == "ready":
            if demand is not None and demand.busy:
                detail = f"{demand.in_flight} in flight, {demand.waiting} waiting"
            elif observed.demand_reported or (demand and demand.last_end):
                since = (demand or TierDemand()).last_used(rec)
                idle_for = max(0.0, observed.now - since)
                if want.idle_timeout is not None:
                    unloads_in = max(0.0, want.idle_timeout - idle_for)
        runtime = want.runtime if want else str(rec.launch.get("runtime", "")) if rec else ""
        model = (
            want.model.display
            if want and want.model
            else (str(rec.launch.get("model")) if rec and rec.launch.get("model") else None)
        )
        rows.append(
            ServiceStatus(
                name=name,
                role=want.role if want else (rec.role if rec else "tier"),
                runtime=runtime,
                pid=rec.pid if rec and alive else None,
                port=want.port if want else (rec.port if rec else None),
                health=health,
                sync=sync,
                uptime=(observed.now - rec.started_at) if rec and alive else None,
                restarts=rec.restarts if rec else 0,
                last_error=rec.last_error if rec else None,
                model=model,
                detail=detail,
                restart_in=(
                    rec.not_before - observed.now
                    if rec is not None and rec.not_before is not None and health == "crash-looping"
                    else None
                ),
                replaced_by=rec.handover_to or None if rec is not None else None,
                load=want.load if want is not None else "always",
                in_flight=demand.in_flight if demand is not None and alive else None,
                idle_for=idle_for,
                unloads_in=unloads_in,
                exit_cause=(
                    rec.exit_cause.to_json()
                    if rec is not None and rec.exit_cause is not None and not alive
                    else None
                ),
                restarted_after=(
                    rec.restarted_after.to_json()
                    if rec is not None and rec.restarted_after is not None
                    else None
                ),
                host=elsewhere.get(name) or (desired.host if desired else None),
                group=group_status(want, seen, observed) if want is not None else None,
            )
        )
        if name in elsewhere:  # moved to another machine, still running here
            rows[-1] = replace(
                rows[-1], detail=f"moved to host '{elsewhere[name]}': stopped here by a reconcile"
            )
    return rows


def _elsewhere(name: str, host: str) -> ServiceStatus:
    """The row of a tier another machine serves: named, left alone here."""
    return ServiceStatus(
        name=name,
        role="tier",
        runtime="",
        pid=None,
        port=None,
        health="elsewhere",
        sync="Elsewhere",
        uptime=None,
        restarts=0,
        last_error=None,
        model=None,
        detail=f"served by host '{host}'",
        host=host,
    )


GROUP_FAILED = "the group failed: "


def group_status(
    want: DesiredService, seen: ObservedService | None, observed: ObservedState
) -> dict[str, Any] | None:
    """A distributed tier's group as this machine sees it: its own rank, and the other
    members' as their controllers last reported them (docs/multi-host.md)."""
    group = want.group
    if group is None:
        return None
    rec = seen.record if seen is not None else None
    here = group.hosts[group.rank]
    alive = seen is not None and seen.alive
    state = ("stopping" if rec is not None and rec.stopping else "running") if alive else "idle"
    generation = rec.generation if rec is not None else 0
    members = [
        {
            "host": here,
            "rank": group.rank,
            "state": state,
            "generation": generation,
            "ready": alive and rec is not None and rec.ready_at is not None,
        }
    ]
    peers = observed.groups.get(want.name) or {}
    for host in group.others:
        peer = peers.get(host)
        members.append(
            {
                "host": host,
                "rank": group.rank_of(host),
                "state": (peer.state if peer.reachable else "unreachable") if peer else "unknown",
                "generation": peer.generation if peer else 0,
                "ready": bool(peer and peer.ready),
                "detail": (peer.detail or peer.error) if peer else "not heard from yet",
            }
        )
    failed = ""
    # Its last run's end, until the next generation serves (a new rank keeps it).
    ended = rec is not None and (rec.died_at is not None or rec.ready_at is None)
    if rec is not None and ended and rec.last_error:
        error = rec.last_error.splitlines()[0]
        if error.startswith(GROUP_FAILED):
            failed = error.removeprefix(GROUP_FAILED)
        else:
            failed = f"rank {group.rank} on {here}: {error}"
    running = [m for m in members if m["state"] == "running"]
    if len(running) == len(members) and all(
        m["ready"] and m["generation"] == generation for m in members
    ):
        summary = "serving"
    elif failed and not alive:
        summary = "failed"
    elif any(m["state"] == "stopping" for m in members):
        summary = "stopping"
    else:
        summary = "forming" if running else "down"
    return {
        "rank": group.rank,
        "size": group.size,
        "backend": group.backend,
        "generation": generation,
        "state": summary,
        "failed": failed,
        "members": members,
    }


def status_json(
    rows: list[ServiceStatus],
    invalid: Mapping[Path, Sequence[str]] | None = None,
    host: str | None = None,
) -> dict[str, Any]:
    """The public JSON shape: ``tiers`` (list), ``gateway`` (object or null) and
    ``invalid_files`` (file -> its problems; its last valid version is what is applied);
    in a stack of several machines, ``host``: this one's name."""
    tiers = [r.to_json() for r in rows if r.role == "tier"]
    gateways = [r.to_json() for r in rows if r.role == "gateway"]
    gateway = next((g for g in gateways if g["name"] == "gateway"), None)
    files = {str(path): list(problems) for path, problems in (invalid or {}).items()}
    answer = {
        "schema": STATUS_SCHEMA,
        "tiers": tiers,
        "gateway": gateway,
        # Gateways being replaced (``gateway~PID``): each serves until the new one is ready.
        "retiring": [g for g in gateways if g["name"] != "gateway"],
        "invalid_files": files,
    }
    if host is not None:
        answer["host"] = host
    return answer
