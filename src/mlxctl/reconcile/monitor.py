"""The health monitor: background probes, so that no pass ever waits for one.

One watcher thread per live server instance. While the server is starting it asks
the runtime's readiness check every ``ready_poll`` seconds (a check that blocks, such
as mlx-lm's completion while the model loads, simply returns when the model is
there), and triggers a pass the moment it succeeds or says the server can never be
ready: readiness lag stays near ``ready_poll``. Once ready it checks liveness every
``live_interval`` seconds and triggers a pass when ``threshold`` checks in a row have
failed. The planner reads the latest answers through :meth:`sample`, the
:class:`~mlxctl.observe.health.HealthSource` interface.

Both phases are tenacity ``Retrying`` loops (a watcher is a background thread, so a
blocking retry is right here): readiness is retried until it answers, liveness for as
long as the server is watched. They sleep on the watcher's stop event
(``tenacity.nap.sleep_using_event``), so that :meth:`HealthMonitor.stop`, or the
instance going away, ends a wait at once instead of after a whole interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tenacity import RetryCallState, Retrying, retry_if_result, sleep_using_event, wait_fixed

from mlxctl.machine.interfaces import Prober, ProbeResult
from mlxctl.machine.record import Record
from mlxctl.observe.health import HealthSample, probe_mode, probe_spec

if TYPE_CHECKING:
    from mlxctl.runtimes.base import ProbeSpec

READY_POLL = 0.1
READY_TIMEOUT = 30.0
LIVE_TIMEOUT = 5.0
BUSY_BUDGET = 600.0
GROUP_BUSY_BUDGET = 120.0
# After a server answered that it can never be ready, ask again this often (the
# planner replaces it meanwhile; a new instance gets a new watcher).
FATAL_RETRY = 1.0

Key = tuple[str, str]  # (service name, instance marker)


@dataclass
class MonitorSettings:
    ready_poll: float = READY_POLL
    ready_timeout: float = READY_TIMEOUT
    live_interval: float = 10.0
    live_timeout: float = LIVE_TIMEOUT
    threshold: int = 3
    # Seconds a ready server may answer nothing but "busy" to the liveness check (its
    # /health fine, its one generation never ending) before each such answer counts as a
    # failure: a generation pinned for 31.7 min by a hostile schema answered everyone
    # 503 while /health said healthy. As long as the gateway's read timeout, so a
    # legitimate request is never cut for it.
    busy_budget: float = BUSY_BUDGET
    # The same budget for a distributed tier's rank 0, shorter: when another rank hangs
    # (frozen, or its machine gone without closing its sockets), rank 0's /health still
    # answers 200 and every completion waits forever (MLX 0.32's ring, measured by
    # benchmarks/distributed_ring.py); only "busy" that never ends tells. A prefill
    # longer than this on a distributed tier is taken for a hang (docs/multi-host.md).
    group_busy_budget: float = GROUP_BUSY_BUDGET
    # How long :meth:`HealthMonitor.sample` waits for a newly watched *ready* server's
    # first liveness answer. 0 for the controller (a pass never waits: the answer
    # triggers a pass); ``reconcile --once`` waits, so that its first pass sees a server
    # that cannot generate instead of "no changes".
    first_answer_wait: float = 0.0


class HealthMonitor:
    def __init__(
        self,
        prober: Prober,
        on_change: Callable[[str], None],
        settings: MonitorSettings | None = None,
    ) -> None:
        self.prober = prober
        self.on_change = on_change
        self.settings = settings or MonitorSettings()
        self._samples: dict[Key, HealthSample] = {}
        self._watchers: dict[Key, threading.Event] = {}
        # Set once a watcher stored its first answer.
        self._answered: dict[Key, threading.Event] = {}
        self._lock = threading.Lock()

    # -- HealthSource ------------------------------------------------------------------

    def sample(self, records: Sequence[Record]) -> Mapping[str, HealthSample]:
        """The latest answers for ``records``; starts watching new ones, stops watching
        the ones that are gone (replaced, stopping, exited)."""
        new = self.watch(records)
        wait = self.settings.first_answer_wait
        if wait > 0:
            for record in new:
                if probe_mode(record) == "live":
                    self._answered[(record.name, record.instance)].wait(wait)
        with self._lock:
            found = {r.name: self._samples.get((r.name, r.instance)) for r in records}
        return {name: s for name, s in found.items() if s is not None}

    def watch(self, records: Sequence[Record]) -> list[Record]:
        """Watch ``records`` (and no others); returns the ones newly watched."""
        wanted = {(r.name, r.instance): r for r in records}
        with self._lock:
            for key in list(self._watchers):
                if key not in wanted:
                    self._watchers.pop(key).set()
                    self._samples.pop(key, None)
                    self._answered.pop(key, None)
            new = [r for key, r in wanted.items() if key not in self._watchers]
            for record in new:
                self._watchers[(record.name, record.instance)] = threading.Event()
                self._answered[(record.name, record.instance)] = threading.Event()
        for record in new:
            stop = self._watchers[(record.name, record.instance)]
            threading.Thread(
                target=self._watch_one,
                args=(record, stop),
                name=f"mlxctl-health-{record.name}",
                daemon=True,
            ).start()
        return new

    def stop(self) -> None:
        with self._lock:
            for event in self._watchers.values():
                event.set()
            self._watchers.clear()

    # -- one watcher ---------------------------------------------------------------------

    def _store(self, key: Key, sample: HealthSample, stop: threading.Event) -> None:
        with self._lock:
            if not stop.is_set():
                self._samples[key] = sample
            answered = self._answered.get(key)
        if answered is not None:
            answered.set()

    def _probe(
        self,
        spec: ProbeSpec,
        mode: Literal["ready", "live"],
        timeout: float,
        key: Key,
        stop: threading.Event,
        failures: int,
        busy_since: list[float | None] | None = None,
        budget: float = 0.0,
    ) -> tuple[ProbeResult, int] | None:
        """One probe, its answer stored with the failures in a row it makes (returned
        too); None when the watcher was stopped before or while it ran. Only a readiness
        answer can say "never" (fatal); a liveness failure is counted instead."""
        if stop.is_set():
            return None
        result = self.prober.probe(spec, mode, timeout)
        if stop.is_set():
            return None
        if busy_since is not None:
            result = self._within_budget(result, busy_since, budget)
        failures = 0 if result.ok else failures + 1
        fatal = result.fatal and mode == "ready"
        sample = HealthSample(result.ok, result.detail, fatal, failures, mode, result.poisoned)
        self._store(key, sample, stop)
        return result, failures

    def _within_budget(
        self, result: ProbeResult, busy_since: list[float | None], budget: float
    ) -> ProbeResult:
        """``result``, failed when the server has answered nothing but "busy" for longer
        than its liveness ``budget`` (``busy_since[0]``: when that began, kept here)."""
        if not result.busy:
            busy_since[0] = None
            return result
        now = time.monotonic()
        since = busy_since[0] if busy_since[0] is not None else now
        busy_since[0] = since
        busy = now - since
        if busy <= budget:
            return result
        detail = (f"answered nobody for {busy:.0f} s (liveness budget "
                  f"{budget:g} s): {result.detail}")  # fmt: skip
        return ProbeResult(False, detail)

    def _watch_one(self, record: Record, stop: threading.Event) -> None:
        key = (record.name, record.instance)
        if probe_mode(record) == "ready":
            if not self._until_ready(record, key, stop):
                return
            stop.wait(self.settings.live_interval)
        self._while_watched(record, key, stop)

    def _until_ready(self, record: Record, key: Key, stop: threading.Event) -> bool:
        """Retry the readiness probe every ``ready_poll`` seconds until the server is
        ready (True) or no longer watched (False); each answer is stored, and a pass
        triggered the moment it is ready or says it never will be."""
        spec, cfg = probe_spec(record), self.settings
        failures = 0

        def attempt() -> ProbeResult | None:
            nonlocal failures
            answer = self._probe(spec, "ready", cfg.ready_timeout, key, stop, failures)
            if answer is None:
                return None
            result, failures = answer
            if result.ok:
                self.on_change(f"{record.name} ready")
            elif result.fatal:
                self.on_change(f"{record.name} cannot become ready")
            return result

        def pause(state: RetryCallState) -> float:
            result = state.outcome.result() if state.outcome is not None else None
            return FATAL_RETRY if result is not None and result.fatal else cfg.ready_poll

        retrying = Retrying(
            retry=retry_if_result(lambda result: result is not None and not result.ok),
            wait=pause,
            sleep=sleep_using_event(stop),
        )
        return retrying(attempt) is not None

    def _while_watched(self, record: Record, key: Key, stop: threading.Event) -> None:
        """Retry the liveness probe every ``live_interval`` seconds while the server is
        watched, counting failures in a row; a pass is triggered at ``threshold`` of
        them, or at once when the server says it can no longer generate."""
        spec, cfg = probe_spec(record), self.settings
        failures = 0
        busy_since: list[float | None] = [None]
        budget = cfg.busy_budget if record.rank is None else cfg.group_busy_budget

        def attempt() -> bool:
            nonlocal failures
            answer = self._probe(
                spec, "live", cfg.live_timeout, key, stop, failures, busy_since, budget
            )
            if answer is None:
                return False
            result, failures = answer
            if result.poisoned:
                # One answer is enough: the server said it can no longer generate.
                self.on_change(f"{record.name} cannot generate")
            elif failures >= cfg.threshold:
                self.on_change(f"{record.name} liveness failed {failures} times")
            return True

        Retrying(
            retry=retry_if_result(bool),
            wait=wait_fixed(cfg.live_interval),
            sleep=sleep_using_event(stop),
        )(attempt)
