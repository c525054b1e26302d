"""The controller's demand book: what the gateway last reported, and load/unload asked.

Demand is observed state, level-triggered like everything the planner reads: the
gateway sends its whole view (requests held and in flight per tier) on every change
and every few seconds, and the book keeps the latest of each gateway process (while
one gateway replaces another both report; their counts add up). A report older than
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
        # The latest report of each gateway process (two report while one replaces the
        # other), with when it arrived.
        self._reports: dict[int, tuple[DemandReport, float]] = {}
        self._last_end: dict[str, float] = {}
        self._load: dict[str, float] = {}
        self._unload: dict[str, float] = {}
        # When the gateways began holding each draining tier's new requests.
        self._held_since: dict[str, float] = {}

    def report(self, report: DemandReport) -> None:
        """Keep the gateway's latest view (stamped with the controller's clock)."""
        with self._lock:
            now = self.clock.time()
            self._reports[report.gateway_pid] = (report, now)
            for pid, (_, at) in list(self._reports.items()):
                if now - at > self.stale_after:
                    del self._reports[pid]  # that gateway is gone
            current = self._current()
            for name in set(self._held_since) | set(report.tiers):
                loads = [r.tiers[name] for r in current if name in r.tiers]
                if loads and all(t.held_back for t in loads):
                    self._held_since.setdefault(name, now)
                else:
                    self._held_since.pop(name, None)
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
        return bool(self._current())

    def _current(self) -> list[DemandReport]:
        now = self.clock.time()
        return [r for r, at in self._reports.values() if now - at <= self.stale_after]

    def observed(self) -> dict[str, TierDemand]:
        """Each tier's demand now, for the observed state."""
        with self._lock:
            reports = self._current()
            names = set(self._last_end) | set(self._load) | set(self._unload)
            for report in reports:
                names |= set(report.tiers)
            out: dict[str, TierDemand] = {}
            for name in sorted(names):
                demand = TierDemand(
                    last_end=self._last_end.get(name),
                    load_requested_at=self._load.get(name),
                    unload_requested_at=self._unload.get(name),
                )
                loads = [r.tiers[name] for r in reports if name in r.tiers]
                if loads:
                    # Summed over the gateways reporting (a handover); held back only when
                    # every one of them holds the tier's new requests.
                    since = [t.waiting_since for t in loads if t.waiting_since is not None]
                    demand = replace(
                        demand,
                        waiting=sum(t.waiting for t in loads),
                        in_flight=sum(t.in_flight for t in loads),
                        waiting_since=min(since, default=None),
                        held_back=all(t.held_back for t in loads),
                        held_back_since=self._held_since.get(name),
                    )
                out[name] = demand
            return out
