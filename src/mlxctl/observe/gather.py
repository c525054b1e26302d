"""Observation: turn the inventory and the machine into an :class:`ObservedState`.

Each recorded process is checked by identity (a reused PID counts as gone); a
stopping service counts as alive while any process of its group is left; an intent
record (written before its spawn) is looked up by its instance marker. Health comes
from a :class:`~mlxctl.observe.health.HealthSource` (never a blocking probe here),
prepares in flight from the job files, and the desired models are looked for on
disk. Everything here is quick: a pass takes milliseconds whatever is in flight.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mlxctl.desired.state import DesiredState
from mlxctl.files import read_text_bounded
from mlxctl.machine.interfaces import Clock, ModelStore, ProcessControl
from mlxctl.machine.logfiles import tail
from mlxctl.machine.record import Record
from mlxctl.observe.exit_cause import classify
from mlxctl.observe.health import HealthSource
from mlxctl.observe.state import (
    ObservedService,
    ObservedState,
    PeerRank,
    PrepareJob,
    TierDemand,
)

LOG_TAIL_LINES = 15


def observe(
    records: Mapping[str, Record],
    desired: DesiredState | None,
    *,
    procs: ProcessControl,
    health: HealthSource,
    clock: Clock,
    store: ModelStore,
    prepares: Mapping[str, PrepareJob] | None = None,
    demand: Mapping[str, TierDemand] | None = None,
    demand_reported: bool = False,
    groups: Mapping[str, Mapping[str, PeerRank]] | None = None,
) -> ObservedState:
    services: dict[str, ObservedService] = {}
    live: list[Record] = []
    for record in records.values():
        seen = _process(record, procs)
        services[record.name] = seen
        # A retiring instance is not probed: its port answers for its successor too, and
        # nothing is decided from its health (it stops once the successor is ready). Nor
        # is a distributed tier's rank above 0: it answers no HTTP (its group's rank 0
        # does, on its own machine).
        if (
            seen.alive
            and record.spawned
            and not record.stopping
            and not record.handover_to
            and not record.rank
        ):
            live.append(record)
    for name, sample in health.sample(live).items():
        seen = services[name]
        services[name] = ObservedService(
            seen.record,
            alive=True,
            health="ready" if sample.ok else "unready",
            detail=sample.detail,
            probe_failures=0 if sample.ok else sample.failures,
            fatal=sample.fatal,
            poisoned=sample.poisoned,
        )
    present: set[str] = set()
    unusable: dict[str, str] = {}
    if desired is not None:
        for service in desired.tiers:
            model = service.model
            if model is None or model.identity in present or not store.present(model):
                continue
            problem = config_problem(model.directory)
            if problem is None:
                present.add(model.identity)
            else:
                unusable[model.identity] = problem
    return ObservedState(
        now=clock.time(),
        services=services,
        models_present=frozenset(present),
        models_unusable=unusable,
        prepares=dict(prepares or {}),
        files=_files_on_disk(desired),
        ports_held=_ports_held(desired, services, procs),
        demand=dict(demand or {}),
        demand_reported=demand_reported,
        groups=dict(groups or {}),
    )


# The gateway's routes file is mlxctl's own and small; a bigger one is not ours.
MAX_GATEWAY_FILE_BYTES = 8 * 1024 * 1024


def config_problem(directory: Path) -> str | None:
    """Why a present model's ``config.json`` cannot be used, in one line naming it; None
    when it can, or when there is none (whether a model is there is the store's say).

    A runtime started on an unreadable config (a just-pulled file that is not JSON)
    crashes while starting; the planner blocks that tier with this line instead and
    the others converge. Read bounded, like every file mlxctl reads.
    """
    from mlxctl.capacity.model_dir import read_model_config
    from mlxctl.errors import SpecError

    if not os.path.lexists(directory / "config.json"):
        return None
    try:
        read_model_config(directory)
    except SpecError as exc:
        return str(exc)
    return None


def _ports_held(
    desired: DesiredState | None, services: Mapping[str, ObservedService], procs: ProcessControl
) -> dict[int, str]:
    """Who else listens on a port a desired service needs: a port one of our live
    processes holds (the service itself, a retiring instance, one still stopping, an
    intent being spawned) is no conflict; any other listener is."""
    if desired is None:
        return {}
    ours = {s.record.port for s in services.values() if s.alive or not s.record.spawned}
    held: dict[int, str] = {}
    for service in desired.services:
        if not service.serves_http or service.port in ours or service.port in held:
            continue
        owner = procs.port_owner(service.port)
        if owner is not None:
            held[service.port] = owner
    return held


def _files_on_disk(desired: DesiredState | None) -> dict[str, str | None]:
    """The current text of the files the gateway reloads (None when missing, unreadable,
    not a regular file or over :data:`MAX_GATEWAY_FILE_BYTES`)."""
    out: dict[str, str | None] = {}
    if desired is not None and desired.gateway is not None:
        for path, _ in desired.gateway.files:
            try:
                out[path] = read_text_bounded(path, MAX_GATEWAY_FILE_BYTES)
            except (OSError, UnicodeDecodeError):
                out[path] = None
    return out


def _process(record: Record, procs: ProcessControl) -> ObservedService:
    if not record.spawned:
        found = procs.find_instance(record.instance)
        if found is None:
            return ObservedService(record, alive=False, detail="its spawn was never confirmed")
        adopt = (found.pid, found.pgid, found.create_time, found.cmdline)
        return ObservedService(record, alive=True, detail="found by its marker", adoptable=adopt)
    ident = record.identity()
    if record.stopping:
        left = procs.remaining(ident)
        detail = f"stopping: {left} process(es) left" if left else "stopped"
        return ObservedService(record, alive=left > 0, detail=detail)
    status = procs.status(ident)
    if status.alive:
        return ObservedService(record, alive=True)
    detail = "PID now belongs to another process" if status.foreign else "not running"
    log_tail: tuple[str, ...] = ()
    cause = None
    if record.died_at is None and not status.foreign:
        # A death not recorded yet: why it died, from its log and the kernel.
        log_tail = tuple(tail(Path(record.log), LOG_TAIL_LINES))
        cause = classify(
            exit_code=status.exit_code,
            stopped_by_us=status.stopped or record.kill_sent_at is not None,
            ready=record.ready_at is not None,
            port=record.port,
            log_tail=log_tail,
            oom=procs.oom_evidence(
                record.pid, record.cgroup, record.oom_kills_at_start, record.started_at
            ),
            platform=sys.platform,
        )
        if record.ready_at is not None:
            log_tail = ()  # the cause carries its error line; the tail is for starts
    return ObservedService(
        record,
        alive=False,
        detail=detail,
        exit_code=status.exit_code,
        foreign=status.foreign,
        log_tail=log_tail,
        exit_cause=cause,
    )
