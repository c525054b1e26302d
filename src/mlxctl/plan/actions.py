"""The planner's output as data: actions with their causes, in the order they apply.

``diff`` prints a :class:`Plan`, the executor applies it, the JSON stream carries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mlxctl.capacity.memory import BudgetCheck
from mlxctl.machine.record import ExitCause
from mlxctl.plan.backoff import DEFAULT_BACKOFF, BackoffPolicy

ActionKind = Literal[
    "prepare",  # begin preparing a model mlxctl can produce itself (a job)
    "start",  # record the intent, then spawn a service that is not running
    "restart",  # begin stopping a running service whose launch changed; it starts once gone
    # (``overlap``: the new one starts at once beside the old one, which stops later)
    "stop",  # begin stopping a service no longer desired; it is forgotten once gone
    "kill",  # SIGKILL a stopping service whose grace period ran out
    "forget",  # drop the record of a service that is gone and not desired
    "crash",  # record a crash (and begin stopping the process if it hangs); backoff follows
    "adopt",  # complete a record written before a spawn with the process found by its marker
    "ready",  # record that a starting service answered its readiness check
    "wait",  # nothing to do yet: starting, stopping, preparing, backing off, memory
    "rehash",  # the hash recipe changed but the launch did not: update the record only
    "reconfigure",  # rewrite a running service's files (gateway routes): it reloads them
]
# The order in which an executor applies action kinds within one pass: what was seen
# is recorded first (a readiness answer: a gateway's replacement is ready before the
# old one is stopped, and the event log says so in that order), then stops begin; a
# start never shares a pass with the stop it depends on (the planner plans it only
# once the old process is gone, and holds starts that need memory a stop frees).
PHASES: tuple[ActionKind, ...] = (
    "ready",
    "stop",
    "kill",
    "forget",
    "crash",
    "adopt",
    "rehash",
    "reconfigure",
    "prepare",
    "restart",
    "start",
    "wait",
)
# Kinds that change nothing that runs (bookkeeping and waiting).
QUIET: frozenset[ActionKind] = frozenset({"wait", "rehash", "ready", "adopt"})
WaitReason = Literal[
    "starting",
    "stopping",
    "preparing",
    "backoff",
    "memory",
    "spawning",
    # ``dependsOn``: a tier it depends on is not ready yet.
    "dependency",
    # ``suspend: true``: left alone; the cause says what a resume would do.
    "suspended",
    # Not pruned: a stack file is invalid with no last valid version.
    "held",
    # A retiring instance serves until the one that replaces it is ready.
    "handover",
    # The service's declared port is held by a process that is not one of ours.
    "port",
    # An on-demand tier that is not loaded and not asked for ("on demand: not loaded").
    "on-demand",
    # A loaded on-demand tier, idle: ``not_before`` is when it unloads.
    "idle",
    # Its new requests are held (the gateway holds them) until the ones in flight end;
    # then it stops (an eviction, an unload, its idle timeout).
    "draining",
    # A distributed tier's rank could start: it waits for its group's other members,
    # which are on their way (their answer, their start, their older ranks stopping).
    "group",
    # The same, held by another member on its own account (it does not answer, or its
    # model, memory or backoff holds it): not work in flight for ``reconcile --once``.
    "member",
    "",
]
# Waits that are the steady state, not work left: ``reconcile --once`` is converged
# with them, ``status`` shows the tier Synced.
SETTLED: frozenset[WaitReason] = frozenset({"suspended", "on-demand", "idle"})


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str
    cause: str
    # For "crash": the new consecutive count and when a restart may happen.
    crashes: int = 0
    not_before: float | None = None
    stop_process: bool = False
    # For "crash": the service did not become ready before its startup timeout.
    timed_out: bool = False
    # For "crash": a request broke a running server (it cannot generate); it is replaced
    # at once and the crash-loop count does not grow.
    by_request: bool = False
    # For "restart": start the new process now, beside the old one, which keeps serving
    # until the new one is ready (the gateway: both listen on one port, SO_REUSEPORT).
    overlap: bool = False
    # For "crash": why it died (None: it hung, or did not become ready in time).
    exit_cause: ExitCause | None = None
    # For "start": the death this restart follows (its class), kept in the new record
    # and shown by ``status`` and the start's event.
    restarted_after: ExitCause | None = None
    # For "crash": it ran out of memory; the tier's estimate is raised to this (bytes).
    raise_memory_to: int | None = None
    # For "wait": what is awaited.
    reason: WaitReason = ""
    # For "start" of a distributed tier's rank: the group generation it starts as.
    generation: int = 0
    # For "ready": when it became ready (readiness detail in ``cause``).
    # For "adopt": the process found (pid, pgid, create_time, cmdline).
    adopt: tuple[int, int, float, tuple[str, ...]] | None = None

    @property
    def changes(self) -> bool:
        """Whether applying this action changes what runs."""
        return self.kind not in QUIET

    @property
    def starting(self) -> bool:
        return self.kind == "wait" and self.reason == "starting"


RefusalKind = Literal["budget", "empty"]


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    # Services that cannot be converged, with why (a missing model, ...).
    blocked: Mapping[str, str] = field(default_factory=dict)
    # When set, the whole plan is refused and nothing may be applied.
    refused: str | None = None
    refusal: RefusalKind | None = None
    # The summed memory estimate against the budget (None without a budget).
    memory: BudgetCheck | None = None
    # Per tier, the limits its estimate assumes that its server is not told (no flag in
    # its runtime, or not written): the estimate is not what the server enforces.
    unenforced: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Per tier, why its estimate is higher than the formula's (an out-of-memory death).
    memory_raised: Mapping[str, str] = field(default_factory=dict)
    # In a stack of several machines: this machine's name, and the tiers other machines
    # serve (name -> host), left alone here (docs/multi-host.md).
    host: str | None = None
    elsewhere: Mapping[str, str] = field(default_factory=dict)

    @property
    def has_changes(self) -> bool:
        return bool(self.refused is None and any(a.changes for a in self.actions))

    def for_target(self, name: str) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.target == name)

    def ordered(self) -> tuple[Action, ...]:
        return tuple(sorted(self.actions, key=lambda a: PHASES.index(a.kind)))


@dataclass(frozen=True)
class PlanOptions:
    allow_empty: bool = False
    # The cause given for stopping services that are no longer desired.
    prune_cause: str = "removed from the stack"
    liveness_threshold: int = 3
    backoff: BackoffPolicy = DEFAULT_BACKOFF
    # Restart crashed services (``reconcile --once`` stops healing after a failure of its own).
    heal: bool = True
    # Services not to restart after a crash (``reconcile --once``: those it started itself).
    no_heal: frozenset[str] = frozenset()
    # Overrides every service's startup timeout (``--timeout``).
    startup_timeout: float | None = None
    # Seconds between SIGTERM and SIGKILL, and how long SIGKILL may take to be confirmed.
    grace: float = 10.0
    kill_wait: float = 5.0
    # Seconds before a failed model prepare is tried again.
    prepare_retry: float = 60.0
    # How long an intent record may wait for its spawn to be confirmed (another mlxctl
    # process may be between the two writes) before it counts as never started.
    spawn_grace: float = 5.0
