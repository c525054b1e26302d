"""The composition root: the one place the real effects are chosen and wired together.

A :class:`Context` holds the directories, the environment and the effect
implementations a pass uses; tests build one with in-memory fakes instead.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ConfigDict, TypeAdapter, ValidationError

from mlxctl.apply.events import Event, EventLog, Listener
from mlxctl.apply.jobs import PrepareJobs, Spawn, in_thread
from mlxctl.apply.ledger import Ledger
from mlxctl.desired.resolve import ModelResolver
from mlxctl.errors import MlxctlError, StorageError
from mlxctl.files import read_text_bounded
from mlxctl.machine.clock import SystemClock
from mlxctl.machine.interfaces import Clock, ModelStore, Prober, ProcessControl
from mlxctl.machine.inventory import Inventory, write_atomic
from mlxctl.machine.statemodel import Port, ShortStr
from mlxctl.observe.health import HealthSource, ProbeNow
from mlxctl.observe.jobfiles import JobFiles
from mlxctl.observe.peers import PeerSource
from mlxctl.observe.state import PrepareJob
from mlxctl.paths import Paths

if TYPE_CHECKING:
    from mlxctl.apply.executor import Executor
    from mlxctl.reconcile.demand import DemandBook


@dataclass
class Context:
    """Everything a pass touches: directories, environment and the effect implementations."""

    paths: Paths
    environ: Mapping[str, str]
    clock: Clock
    procs: ProcessControl
    prober: Prober
    store: ModelStore
    python: Path = field(default_factory=lambda: Path(sys.executable))
    listeners: list[Listener] = field(default_factory=list)
    # None: the real resolver (local paths and the catalog).
    model_resolver: ModelResolver | None = None
    memory_bytes: Callable[[], int] = field(default_factory=lambda: _system_memory)
    # Where health comes from: None probes once per observation (diff, status); the
    # controller sets its background monitor.
    health: HealthSource | None = None
    # How a job runs: in a thread (real runs) or inline (unit tests).
    job_spawn: Spawn = in_thread
    # Called with a reason whenever a job changes state (the controller's trigger).
    on_job_change: Callable[[str], None] | None = None
    # The controller's demand book (what the gateway reports, load/unload asked); None
    # outside a controller: no demand is observed.
    demand: DemandBook | None = None
    # Where the other members' ranks of distributed tiers come from: the controller's
    # peer watcher; None outside a controller (none observed: a member waits for them).
    peers: PeerSource | None = None
    _jobs: PrepareJobs | None = field(default=None, init=False, repr=False)
    # Unusable state files already reported by this process: each is said once.
    _reported: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False)

    @property
    def inventory(self) -> Inventory:
        return Inventory(self.paths.inventory)

    def event_log(self) -> EventLog:
        return EventLog(self.paths.events, self.listeners)

    def ledger(self) -> Ledger:
        return Ledger(self.inventory, self.event_log(), self.clock)

    def report_state_file(self, path: Path, reason: str) -> None:
        """One event (and one only, per process) for a state file that was skipped or
        repaired because it could not be trusted (see :mod:`mlxctl.machine.statemodel`)."""
        key = (str(path), reason)
        if key in self._reported:
            return
        self._reported.add(key)
        self.event_log().emit(
            Event(self.clock.time(), "state", str(path), "unusable state file", "refused", reason)
        )

    def health_source(self) -> HealthSource:
        return self.health if self.health is not None else ProbeNow(self.prober)

    def jobs(self) -> PrepareJobs:
        """The one job runner of this process (prepares run in the background)."""
        if self._jobs is None:
            self._jobs = PrepareJobs(
                self.store,
                JobFiles(self.paths.jobs, self.report_state_file),
                self.event_log(),
                self.clock,
                on_change=self._job_changed,
                spawn=self.job_spawn,
            )
        return self._jobs

    def _job_changed(self, reason: str) -> None:
        if self.on_job_change is not None:
            self.on_job_change(reason)

    def prepares(self) -> dict[str, PrepareJob]:
        return JobFiles(self.paths.jobs, self.report_state_file).read_all()

    def executor(self) -> Executor:
        from mlxctl.apply.executor import Executor

        return Executor(
            procs=self.procs,
            clock=self.clock,
            ledger=self.ledger(),
            jobs=self.jobs(),
            logs_dir=self.paths.logs,
            environ=self.environ,
        )


def _system_memory() -> int:
    from mlxctl.desired.admission import system_memory

    return system_memory()


def real_context(
    paths: Paths, *, listeners: list[Listener] | None = None, online_models: bool = False
) -> Context:
    """A context with the real effects (processes, HTTP, files, clock).

    ``online_models``: model references missing from the lock file are pinned on the
    hub as they are resolved (``reconcile``); without it resolution never touches the
    network (``status``, ``diff``).
    """
    from mlxctl.machine.probes import HttpProber
    from mlxctl.machine.processes import RealProcessControl
    from mlxctl.sources.registry import DiskModelStore, make_resolver

    try:
        paths.secure_state()
    except OSError as exc:
        if exc.errno == errno.EROFS:
            pass  # nothing can be written, by anyone: `down` must still run (stops only)
        else:
            raise MlxctlError(
                f"cannot make the state directory {paths.state} private: {exc.strerror or exc}"
            ) from None
    clock = SystemClock()
    return Context(
        paths=paths,
        environ=dict(os.environ),
        clock=clock,
        procs=RealProcessControl(str(paths.state), clock=clock),
        prober=HttpProber(),
        store=DiskModelStore(paths.models),
        listeners=list(listeners or []),
        model_resolver=make_resolver(paths, online=True) if online_models else None,
    )


# A name and a port per tier: a few thousand tiers would still fit.
MAX_PORTS_BYTES = 1024 * 1024
_PORT = TypeAdapter(Port, config=ConfigDict(strict=True))
_NAME = TypeAdapter(ShortStr, config=ConfigDict(strict=True))
Report = Callable[[Path, str], None]


def _load_ports(paths: Paths) -> tuple[dict[str, int], str]:
    """The valid entries of ``ports.json`` and why the rest (or the file) was dropped."""
    try:
        raw = json.loads(read_text_bounded(paths.ports, MAX_PORTS_BYTES))
    except FileNotFoundError:
        return {}, ""
    except (OSError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return {}, f"not a usable ports file ({reason[:120]})"
    if not isinstance(raw, dict):
        return {}, "not a usable ports file (not a mapping)"
    ports: dict[str, int] = {}
    dropped: list[str] = []
    for name, port in raw.items():
        try:
            ports[_NAME.validate_python(name)] = _PORT.validate_python(port)
        except ValidationError:
            dropped.append(f"{name[:40]!r}: {str(port)[:24]}")
    if dropped:
        return ports, f"ports dropped (not a port 1..65535): {', '.join(dropped[:5])}"
    return ports, ""


def read_ports(paths: Paths, report: Report | None = None) -> dict[str, int]:
    """Ports assigned before (kept stable across runs). A damaged file, or an entry that
    is not a port (``70000``, ``-1``, ``10**29``, ``"x"``), only loses that entry: the
    tier is given a port again, and ``report`` is told why."""
    ports, problem = _load_ports(paths)
    if problem and report is not None:
        report(paths.ports, problem)
    return ports


def save_ports(paths: Paths, ports: Mapping[str, int], report: Report | None = None) -> None:
    """Remember ``ports``; a file that held anything unusable is rewritten clean (the
    repair). A path that cannot be replaced (a directory) is reported and left: ports
    are a convenience, never a reason to stop healing; a full disk is a StorageError."""
    kept, problem = _load_ports(paths)
    merged = {**kept, **ports}
    if merged == kept and not problem:
        return
    if problem and report is not None:
        # The file may have changed since this pass read it: the repair is reported
        # here too (``report`` tells each path and reason once).
        report(paths.ports, problem)
    try:
        write_atomic(paths.ports, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    except StorageError:
        raise
    except OSError as exc:
        if report is not None:
            report(paths.ports, f"cannot write the ports file ({exc.strerror or exc})")
