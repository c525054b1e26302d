"""Health as observed state: the latest readiness or liveness answer of each server.

A pass must never wait for a probe (a loading model can hold a request for minutes;
a hung server holds it until the timeout), so the planner reads health from a
:class:`HealthSource`. The controller's source is a monitor that probes in the
background and triggers a pass when an answer changes what the planner would do
(:mod:`mlxctl.reconcile.monitor`); one-shot commands (``diff``, ``status``) use
:class:`ProbeNow`, which probes every live server once, in parallel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from mlxctl.machine.interfaces import Prober
from mlxctl.machine.record import Record
from mlxctl.runtimes.base import ProbeMode, ProbeSpec
from mlxctl.runtimes.registry import runtime

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class HealthSample:
    ok: bool
    detail: str = ""
    # The server answered that it will never become ready.
    fatal: bool = False
    # Consecutive failed probes of this kind (liveness failures count toward a replace).
    failures: int = 0
    mode: ProbeMode = "ready"
    # It runs but can no longer generate, and a request did that (see ProbeResult).
    poisoned: bool = False


class HealthSource(Protocol):
    def sample(self, records: Sequence[Record]) -> Mapping[str, HealthSample]:
        """The latest health of each of ``records`` (live ones); absent: not probed yet."""


def probe_kind(record: Record) -> str:
    """The runtime recorded at launch decides the probe."""
    if record.role == "gateway":
        return "litellm"
    return str(record.launch.get("runtime", "mlx-lm"))


def probe_spec(record: Record) -> ProbeSpec:
    kind = probe_kind(record)
    model = "" if record.role == "gateway" else runtime(kind).served_model_name(record.name)
    # A guarded tier's key file (runtimes.tier_guard), recorded with its launch.
    key_file = str(record.launch.get("keyFile") or "") if record.role != "gateway" else ""
    return ProbeSpec(kind=kind, port=record.port, model=model, pid=record.pid, key_file=key_file)


def probe_mode(record: Record) -> ProbeMode:
    """Readiness until the service has been ready once, then the cheap liveness check."""
    return "live" if record.ready_at is not None else "ready"


class ProbeNow:
    """Probes every given record once, in parallel, when asked."""

    def __init__(
        self,
        prober: Prober,
        timeout: float = PROBE_TIMEOUT,
        failures: Mapping[str, int] | None = None,
    ) -> None:
        self.prober = prober
        self.timeout = timeout
        # Failures seen before (kept by a caller that probes repeatedly, e.g. tests).
        self.failures = dict(failures or {})

    def sample(self, records: Sequence[Record]) -> Mapping[str, HealthSample]:
        def one(record: Record) -> tuple[str, HealthSample]:
            mode = probe_mode(record)
            result = self.prober.probe(probe_spec(record), mode, self.timeout)
            failures = 0 if result.ok else self.failures.get(record.name, 0) + 1
            self.failures[record.name] = failures
            sample = HealthSample(
                result.ok, result.detail, result.fatal, failures, mode, result.poisoned
            )
            return record.name, sample

        items = list(records)
        if len(items) <= 1:
            return dict(one(r) for r in items)
        with ThreadPoolExecutor(max_workers=min(len(items), 8)) as pool:
            return dict(pool.map(one, items))
