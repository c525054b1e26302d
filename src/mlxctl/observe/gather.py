"""Observation: turn the inventory and the machine into an :class:`ObservedState`.

Each recorded process is checked by identity (a reused PID counts as gone), each
live one is probed (readiness until it has been ready once, then the cheap liveness
check), in parallel, and the desired models are looked for on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlxctl.desired.state import DesiredState
from mlxctl.machine.interfaces import Clock, ModelStore, Prober, ProcessControl
from mlxctl.machine.record import Record
from mlxctl.observe.state import ObservedService, ObservedState
from mlxctl.runtimes.base import ProbeSpec
from mlxctl.runtimes.registry import runtime

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class ObserveOptions:
    probe: bool = True
    probe_timeout: float = PROBE_TIMEOUT


def observe(
    records: Mapping[str, Record],
    desired: DesiredState | None,
    *,
    procs: ProcessControl,
    prober: Prober,
    clock: Clock,
    store: ModelStore,
    probe_failures: Mapping[str, int] | None = None,
    options: ObserveOptions | None = None,
) -> ObservedState:
    opts = options or ObserveOptions()
    failures = probe_failures or {}

    def one(record: Record) -> ObservedService:
        status = procs.status(record.identity())
        if not status.alive:
            detail = "PID now belongs to another process" if status.foreign else "not running"
            return ObservedService(record, alive=False, detail=detail, exit_code=status.exit_code)
        if not opts.probe:
            return ObservedService(record, alive=True)
        spec = ProbeSpec(kind=_kind(record), port=record.port, model=_model(record))
        mode: Literal["ready", "live"] = "live" if record.ready_at is not None else "ready"
        result = prober.probe(spec, mode, opts.probe_timeout)
        return ObservedService(
            record,
            alive=True,
            health="ready" if result.ok else "unready",
            detail=result.detail,
            probe_failures=0 if result.ok else failures.get(record.name, 0) + 1,
        )

    items = list(records.values())
    if len(items) > 1:
        with ThreadPoolExecutor(max_workers=min(len(items), 8)) as pool:
            services = list(pool.map(one, items))
    else:
        services = [one(r) for r in items]
    present: set[str] = set()
    if desired is not None:
        for service in desired.tiers:
            if service.model is not None and store.present(service.model):
                present.add(service.model.identity)
    return ObservedState(
        now=clock.time(),
        services={s.record.name: s for s in services},
        models_present=frozenset(present),
        files=_files_on_disk(desired),
    )


def _files_on_disk(desired: DesiredState | None) -> dict[str, str | None]:
    """The current text of the files the gateway reloads (None when missing or unreadable)."""
    out: dict[str, str | None] = {}
    if desired is not None and desired.gateway is not None:
        for path, _ in desired.gateway.files:
            try:
                out[path] = Path(path).read_text(encoding="utf-8")
            except OSError:
                out[path] = None
    return out


def _kind(record: Record) -> str:
    """The runtime recorded at launch decides the probe."""
    if record.role == "gateway":
        return "litellm"
    return str(record.launch.get("runtime", "mlx-lm"))


def _model(record: Record) -> str:
    if record.role == "gateway":
        return ""
    return runtime(_kind(record)).served_model_name(record.name)
