"""The controller's demand book: what the gateway last reported, and load/unload asked.

Demand is observed state, level-triggered like everything the planner reads: the
gateway sends its whole view (requests held and in flight per tier) on every change
and every few seconds, and the book keeps the latest. A report older than
``stale_after`` counts as no requests at all (that gateway is gone or wedged: its
requests were cut anyway), so a dead gateway can never keep a tier loaded; the last
request end it reported is kept, so idle time survives a gateway restart.

``mlxctl load`` and ``unload`` are recorded here too, as wishes the planner reads:
the controller clears a load wish once the tier has served since (see
:meth:`DemandBook.loaded`). Thread-safe: the admin server's threads write, the
controller's loop reads.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from mlxctl.observe.state import TierDemand
from mlxctl.runtimes.gateway import DemandReport

if TYPE_CHECKING:
    from mlxctl.machine.interfaces import Clock

# Seconds after which a gateway's last report no longer counts: it reports every
# couple of seconds (REPORT_EVERY in the gateway), so two missed reports and more.
STALE_AFTER = 10.0


class DemandBook:
    def __init__(self, clock: Clock, *, stale_after: float = STALE_AFTER) -> None:
        self.clock = clock
        self.stale_after = stale_after
        self._lock = threading.Lock()
        self._report: DemandReport | None = None
        self._received_at = 0.0
        self._last_end: dict[str, float] = {}
        self._load: dict[str, float] = {}
        self._unload: dict[str, float] = {}

    def report(self, report: DemandReport) -> None:
        """Keep the gateway's latest view (stamped with the controller's clock)."""
        with self._lock:
            self._report = report
            self._received_at = self.clock.time()
            for name, load in report.tiers.items():
                if load.last_end is not None:
                    self._last_end[name] = max(self._last_end.get(name, 0.0), load.last_end)

    def request_load(self, tier: str) -> None:
        with self._lock:
            self._load[tier] = self.clock.time()
            self._unload.pop(tier, None)

    def request_unload(self, tier: str) -> None:
        with self._lock:
            self._unload[tier] = self.clock.time()
            self._load.pop(tier, None)

    def loaded(self, tier: str, ready_at: float) -> None:
        """The tier served from ``ready_at``: a load wish made before that is fulfilled."""
        with self._lock:
            asked = self._load.get(tier)
            if asked is not None and asked <= ready_at:
                del self._load[tier]
                # The load counts as a use: the idle time starts from it.
                self._last_end[tier] = max(self._last_end.get(tier, 0.0), ready_at)

    @property
    def reported(self) -> bool:
        """A gateway's report is current (so a cold tier can be asked for)."""
        with self._lock:
            return self._fresh()

    def _fresh(self) -> bool:
        return (
            self._report is not None and self.clock.time() - self._received_at <= self.stale_after
        )

    def observed(self) -> dict[str, TierDemand]:
        """Each tier's demand now, for the observed state."""
        with self._lock:
            loads = self._report.tiers if self._report is not None and self._fresh() else {}
            names = set(loads) | set(self._last_end) | set(self._load) | set(self._unload)
            out: dict[str, TierDemand] = {}
            for name in sorted(names):
                demand = TierDemand(
                    last_end=self._last_end.get(name),
                    load_requested_at=self._load.get(name),
                    unload_requested_at=self._unload.get(name),
                )
                load = loads.get(name)
                if load is not None:
                    demand = replace(
                        demand,
                        waiting=load.waiting,
                        in_flight=load.in_flight,
                        waiting_since=load.waiting_since,
                        held_back=load.held_back,
                    )
                out[name] = demand
            return out
