"""Observed state: what is really running, as plain values the planner can read.

Gathering it is I/O (see :mod:`mlxctl.observe.gather`); the values here are what the
pure planner consumes. ``now`` is part of the observation so the planner never reads
a clock. Jobs in flight are observed like processes: a server that is starting (its
last readiness probe), a stop in progress (processes left), a model being prepared
(its step and bytes), so that ``diff``, ``status`` and the controller all see them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mlxctl.machine.record import ExitCause, Record

Health = Literal["ready", "unready", "unknown"]


@dataclass(frozen=True)
class ObservedService:
    """A service from the inventory and what its process and probe showed."""

    record: Record
    # The group leader runs (for a stopping service: any process of its group is left).
    alive: bool
    health: Health = "unknown"
    detail: str = ""
    # Consecutive failed liveness probes.
    probe_failures: int = 0
    exit_code: int | None = None
    # The server answered that it will never become ready (its model failed to load).
    fatal: bool = False
    # It runs but cannot generate, and a request caused it: replace it now, no crash counted.
    poisoned: bool = False
    # The PID now belongs to another process (ours is gone).
    foreign: bool = False
    # The last lines of its log, read when it died before being ready.
    log_tail: tuple[str, ...] = ()
    # An intent record (pid 0) whose process was found by its instance marker.
    adoptable: tuple[int, int, float, tuple[str, ...]] | None = None
    # Why it died (a death not recorded yet), classified from its exit status, its log
    # and the kernel (see mlxctl.observe.exit_cause).
    exit_cause: ExitCause | None = None

    @property
    def serves(self) -> bool:
        """Running, and ready (recorded, or answered just now) and not failing its
        probe: what the planner counts as serving and the gateway is told is ready."""
        rec = self.record
        return (
            self.alive
            and rec.spawned
            and not rec.stopping
            and self.health != "unready"
            and (rec.ready_at is not None or self.health == "ready")
        )


@dataclass(frozen=True)
class PrepareJob:
    """A model being prepared (converted, downloaded), or the last attempt that failed."""

    identity: str
    display: str
    started_at: float
    # The process running it is alive (False: it was interrupted; plan it again).
    running: bool
    step: str = ""
    done: int | None = None
    total: int | None = None
    finished_at: float | None = None
    error: str | None = None

    def describe(self) -> str:
        parts = [self.step or "preparing"]
        if self.done is not None and self.total:
            parts.append(f"{self.done / self.total:.0%} of {self.total / 1e6:.0f} MB")
        elif self.done is not None:
            parts.append(f"{self.done / 1e6:.0f} MB")
        return ", ".join(parts)


@dataclass(frozen=True)
class TierDemand:
    """A tier's demand as observed: what the gateway last reported (a report that went
    stale counts as no requests at all) and the ``load``/``unload`` commands given."""

    # Requests held for it (it is cold, loading or draining) and requests it is answering.
    waiting: int = 0
    in_flight: int = 0
    # When the oldest held request arrived, and when the last request ended (wall clock).
    waiting_since: float | None = None
    last_end: float | None = None
    # ``mlxctl load TIER`` asked (and the tier has not served since); ``mlxctl unload``.
    load_requested_at: float | None = None
    unload_requested_at: float | None = None
    # The gateway holds its new requests (it was told the tier drains), and since when.
    held_back: bool = False
    held_back_since: float | None = None

    @property
    def busy(self) -> bool:
        """Requests are held for it or in flight: it must not be stopped."""
        return self.waiting > 0 or self.in_flight > 0

    def last_used(self, record: Record) -> float:
        """When the tier ``record`` runs last served: the end of its last request, a load
        asked of it, or its start (its readiness). Its idle time counts from here: the
        planner's idle unload, ``status`` and ``ps`` read this one value."""
        return max(
            record.ready_at or record.started_at,
            self.last_end or 0.0,
            self.load_requested_at or 0.0,
        )


# A member's rank of a distributed tier, as its own controller sees it:
# ``running`` its process runs (``ready``: rank 0 serves, or the group does);
# ``stopping`` a stop is under way; ``idle`` no process (``can_start``: nothing on that
# machine holds a start back: its model is verified, its memory admitted, its backoff
# over); ``unknown`` its controller does not run this tier (yet).
RankState = Literal["running", "stopping", "idle", "unknown"]


@dataclass(frozen=True)
class PeerRank:
    """Another member's rank of a distributed tier, as the last answer of that member's
    gateway said (docs/multi-host.md, "One model across machines"). ``reachable`` False:
    no answer (``detail`` says why), and the other fields are not known."""

    host: str
    reachable: bool
    state: RankState = "unknown"
    # The generation its rank runs, or ran last (0: never started).
    generation: int = 0
    ready: bool = False
    can_start: bool = False
    # Its last run of ``generation`` ended in a failure (it crashed, or its group did),
    # not a planned stop.
    failed: bool = False
    # Why it cannot start now, or why it could not be reached.
    detail: str = ""
    # How its last run ended (its crash, or its group's failure), first line.
    error: str = ""


@dataclass(frozen=True)
class ObservedState:
    now: float
    services: Mapping[str, ObservedService] = field(default_factory=dict)
    # Identities (ModelRef.identity) of the models whose files are present.
    models_present: frozenset[str] = frozenset()
    # Models that are there but cannot be used (their config.json is not a readable JSON
    # object), by identity, with the one-line why: their tiers are blocked, not started.
    models_unusable: Mapping[str, str] = field(default_factory=dict)
    # Model prepares in flight or failed, by model identity.
    prepares: Mapping[str, PrepareJob] = field(default_factory=dict)
    # The text on disk of each file a desired service reads while running (path -> text,
    # None when missing): the gateway's routes file, which it reloads in place.
    files: Mapping[str, str | None] = field(default_factory=dict)
    # Ports desired services need that a process of someone else's holds (port -> who),
    # asked only for services none of whose own processes runs.
    ports_held: Mapping[int, str] = field(default_factory=dict)
    # Demand per tier (requests held and in flight, last request end, load/unload asked).
    demand: Mapping[str, TierDemand] = field(default_factory=dict)
    # A gateway reports demand to this controller (False: ``--once``, no controller, or
    # no gateway report yet): a cold on-demand tier is then started only by ``load``.
    demand_reported: bool = False
    # Each distributed tier's other members' ranks, by tier then host (absent: not
    # asked yet; a member is started only once every other one is heard from).
    groups: Mapping[str, Mapping[str, PeerRank]] = field(default_factory=dict)
