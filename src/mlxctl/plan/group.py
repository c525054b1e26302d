"""A distributed tier's group, decided on each member from what every member says: pure.

There is no cluster protocol: each member's controller runs its own rank and reads the
other members' rank states (their controllers' own views, relayed by their gateways:
:class:`~mlxctl.observe.state.PeerRank`). From that alone each one decides the same
way (docs/multi-host.md, "One model across machines"):

- **Start together.** A rank starts only when nothing on its own machine holds it back
  (its model verified, its memory admitted, its backoff over) and every other member
  is idle and says the same, or already runs a newer generation, which it then joins.
  A group starts as generation ``max(last generations) + 1``, the same number on every
  member, so a rank left over from an older generation is never mixed with a new one:
  while any member's older rank still runs or stops, nobody starts.
- **Fail together.** A rank's exit or hang is the group's failure: a member whose rank
  runs generation ``g`` stops it when another member's rank of ``g`` has ended, when
  another member runs a newer generation, or when a member it waits for can no longer
  join. The stop is a crash (counted, so the group backs off as one: every member
  counts the same crashes); a member's planned restart (its launch changed) restarts
  the others without counting one.

An unreachable member decides nothing by itself: its gateway may be down while its
rank runs. A rank that is really gone breaks the ring, which the ranks on this side
show at once (rank 0 cannot generate; a rank above 0 exits).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from mlxctl.desired.state import Group
from mlxctl.machine.record import Record
from mlxctl.observe.state import ObservedState, PeerRank
from mlxctl.plan.actions import Plan

CRASH_COUNT = re.compile(r"; crash #\d+$")
# The planner's waits of a rank that could start but for the other members.
GROUP_WAITS = frozenset({"group", "member"})


@dataclass(frozen=True)
class Broken:
    """Why a running rank must stop: ``failed`` a failure of the group (counted, with
    backoff), else another member's planned restart (not counted)."""

    cause: str
    failed: bool


def who(group: Group, host: str) -> str:
    return f"rank {group.rank_of(host)} on {host}"


def broken(group: Group, record: Record, peers: Mapping[str, PeerRank]) -> Broken | None:
    """Whether the group of the rank ``record`` runs has ended (None: it stands, or
    the others are still joining)."""
    mine = record.generation
    for host in group.others:
        peer = peers.get(host)
        if peer is None or not peer.reachable or peer.state == "unknown":
            continue
        name = who(group, host)
        if peer.generation > mine:
            return Broken(f"{name} runs generation {peer.generation}, this rank {mine}", True)
        if peer.generation == mine:
            if peer.state == "running":
                continue
            if peer.failed:
                # Its own crash count is its own: this member counts its crash itself.
                why = CRASH_COUNT.sub("", peer.error)
                return Broken(f"{name}: {why}" if why else f"{name} failed", True)
            return Broken(f"{name} stopped" + (f": {peer.detail}" if peer.detail else ""), False)
        # It has not joined this generation yet.
        if peer.state != "idle":
            return Broken(f"{name} still runs generation {peer.generation}", True)
        if not peer.can_start:
            return Broken(f"{name} cannot join: {peer.detail or 'not ready to start'}", True)
    return None


def join(group: Group, record: Record | None, peers: Mapping[str, PeerRank]) -> tuple[int, str]:
    """``(generation, "")``: start this rank as that generation now; ``(0, why)``: wait."""
    last = record.generation if record is not None else 0
    waiting: list[str] = []
    running: set[int] = set()
    for host in group.others:
        peer = peers.get(host)
        name = who(group, host)
        if peer is None:
            waiting.append(f"{name}: not heard from yet")
        elif not peer.reachable:
            waiting.append(f"{name}: {peer.detail or 'not reachable'}")
        elif peer.state == "unknown":
            waiting.append(f"{name}: its controller does not run this tier")
        elif peer.state == "stopping":
            waiting.append(f"{name}: stopping generation {peer.generation}")
        elif peer.state == "running":
            if peer.generation > last:
                running.add(peer.generation)
            else:
                waiting.append(f"{name}: still runs generation {peer.generation}")
        elif not peer.can_start:
            waiting.append(f"{name}: {peer.detail or 'not ready to start'}")
    if len(running) > 1:
        waiting.append(f"members run generations {', '.join(map(str, sorted(running)))}")
    if waiting:
        return 0, "; ".join(waiting)
    if running:
        return max(running), ""
    known = [p.generation for p in peers.values() if p.reachable]
    return max([last, *known]) + 1, ""


def held(group: Group, peers: Mapping[str, PeerRank]) -> bool:
    """Whether another member holds the group back on its own account: it does not
    answer, runs no rank of the tier, or cannot start (its model, its memory, its
    backoff). Nothing then wakes this member but that member's news: ``reconcile
    --once`` ends instead of waiting (a member heard from yet, starting, running or
    stopping, is work in flight)."""
    for host in group.others:
        peer = peers.get(host)
        if peer is None:
            continue
        if not peer.reachable or peer.state == "unknown":
            return True
        if peer.state == "idle" and not peer.can_start:
            return True
    return False


def rank0_serves(group: Group, record: Record, peers: Mapping[str, PeerRank]) -> bool:
    """A rank above 0 is ready when rank 0 serves its generation."""
    first = peers.get(group.hosts[0])
    return (
        first is not None
        and first.reachable
        and first.state == "running"
        and first.ready
        and first.generation == record.generation
    )


def own_rank(host: str, name: str, observed: ObservedState, plan: Plan) -> PeerRank:
    """This machine's rank of tier ``name`` as the other members read it, from the last
    pass: what runs (or was just started) and whether a start waits only for them."""
    seen = observed.services.get(name)
    record = seen.record if seen is not None else None
    actions = plan.for_target(name)
    started = next((a for a in actions if a.kind == "start"), None)
    # A crash this pass recorded (the rank died, or its group failed and it stops).
    crash = next((a for a in actions if a.kind == "crash"), None)
    error = (record.last_error or "").splitlines()[0] if record and record.last_error else ""
    if crash is not None:
        error = crash.cause.splitlines()[0]
    generation = record.generation if record is not None else 0
    failed = crash is not None or (record is not None and record.died_at is not None)
    stops = any(a.kind in ("stop", "restart") for a in actions)
    stops = stops or (crash is not None and crash.stop_process)
    if started is not None:
        return PeerRank(host, True, "running", started.generation, error=error)
    if seen is not None and seen.alive and record is not None:
        if record.stopping or stops:
            return PeerRank(host, True, "stopping", generation, failed=failed, error=error)
        # Ready as recorded, or as this pass recorded it (its "ready" action).
        became = any(a.kind == "ready" for a in actions)
        ready = (record.ready_at is not None or became) and seen.health != "unready"
        return PeerRank(host, True, "running", generation, ready=ready, error=error)
    waits = [a for a in actions if a.kind == "wait"]
    can_start = any(a.reason in GROUP_WAITS for a in waits)
    holding = [a.cause for a in waits if a.reason not in GROUP_WAITS]
    detail = holding[0] if holding else plan.blocked.get(name, "")
    if not can_start and not detail:
        detail = "not planned to start"
    return PeerRank(
        host,
        True,
        "idle",
        generation,
        can_start=can_start,
        failed=failed,
        detail="" if can_start else detail,
        error=error,
    )
