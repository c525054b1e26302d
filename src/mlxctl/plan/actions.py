"""The planner's output as data: actions with their causes, in the order they apply.

``diff`` prints a :class:`Plan`, the executor applies it, the JSON stream carries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mlxctl.capacity.memory import BudgetCheck
from mlxctl.plan.backoff import DEFAULT_BACKOFF, BackoffPolicy

ActionKind = Literal[
    "prepare",  # obtain a model mlxctl can produce itself
    "start",  # start a service that is not running
    "restart",  # stop a running service and start it with the new spec
    "stop",  # stop a running service and forget it
    "forget",  # drop the record of a process that already exited
    "crash",  # record a crash (stopping the process when it hangs); backoff follows
    "wait",  # nothing to do yet: a service is starting or backing off
    "rehash",  # the hash recipe changed but the launch did not: update the record only
    "reconfigure",  # rewrite a running service's files (gateway routes): it reloads them
]
# The order in which an executor applies action kinds: stops free memory before starts.
PHASES: tuple[ActionKind, ...] = (
    "stop",
    "forget",
    "crash",
    "rehash",
    "reconfigure",
    "prepare",
    "restart",
    "start",
    "wait",
)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str
    cause: str
    # For "crash": the new consecutive count and when a restart may happen.
    crashes: int = 0
    not_before: float | None = None
    stop_process: bool = False
    # For "wait": the service is starting (wait for readiness), not backing off.
    starting: bool = False

    @property
    def changes(self) -> bool:
        """Whether applying this action changes what runs."""
        return self.kind not in ("wait", "rehash")


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
