"""Observed state: what is really running, as plain values the planner can read.

Gathering it is I/O (see :mod:`mlxctl.observe.gather`); the values here are what the pure
planner consumes. ``now`` is part of the observation so the planner never reads a
clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mlxctl.machine.record import Record

Health = Literal["ready", "unready", "unknown"]


@dataclass(frozen=True)
class ObservedService:
    """A service from the inventory and what its process and probe showed."""

    record: Record
    alive: bool
    health: Health = "unknown"
    detail: str = ""
    # Consecutive failed liveness probes (kept by the controller across passes).
    probe_failures: int = 0
    exit_code: int | None = None


@dataclass(frozen=True)
class ObservedState:
    now: float
    services: Mapping[str, ObservedService] = field(default_factory=dict)
    # Identities (ModelRef.identity) of the models whose files are present.
    models_present: frozenset[str] = frozenset()
    # The text on disk of each file a desired service reads while running (path -> text,
    # None when missing): the gateway's routes file, which it reloads in place.
    files: Mapping[str, str | None] = field(default_factory=dict)
