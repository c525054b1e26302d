"""The effect seams: every side effect the executor and observer need, as a small interface.

Real implementations live in :mod:`mlxctl.machine.processes`, :mod:`mlxctl.machine.probes`,
:mod:`mlxctl.machine.clock` and :mod:`mlxctl.sources.registry`; in-memory fakes for unit tests in
:mod:`mlxctl.testing.fakes`. The executor and observer only ever talk to these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from mlxctl.runtimes.base import ProbeResult as ProbeResult
from mlxctl.runtimes.base import ProbeSpec

if TYPE_CHECKING:
    from mlxctl.desired.state import ModelRef


# Every process of a service's group carries this marker in its environment: it is how
# members are told apart from strangers, and how an unrecorded spawn is found again.
INSTANCE_ENV = "MLXCTL_INSTANCE"
# The state directory a process was started for, also in every child's environment: a
# process of ours that no record names (its record deleted, or a member that outlived
# its group's leader and record) is still found by it, and ``down`` stops it.
STATE_ENV = "MLXCTL_STATE"
SERVICE_ENV = "MLXCTL_SERVICE"


@dataclass(frozen=True)
class Marked:
    """A live process carrying a state directory's marker."""

    pid: int
    pgid: int
    create_time: float
    cmdline: tuple[str, ...]
    instance: str
    service: str


@dataclass(frozen=True)
class Spawned:
    """The identity of a freshly started process-group leader."""

    pid: int
    pgid: int
    create_time: float
    cmdline: tuple[str, ...]
    # Linux: its memory cgroup and that cgroup's ``oom_kill`` count at spawn ("" and
    # None where there is none to read).
    cgroup: str = ""
    oom_kills: int | None = None


@dataclass(frozen=True)
class OomEvidence:
    """What the kernel says about a dead process and memory.

    ``cgroup_kills``: how much its cgroup's ``oom_kill`` count grew since its spawn (None:
    not readable); ``kernel_line``: the kernel log line naming its PID as killed for
    memory ("" when there is none, or the log is not readable)."""

    cgroup_kills: int | None = None
    kernel_line: str = ""


@dataclass(frozen=True)
class Identity:
    """What must match before a process may be signalled."""

    pid: int
    pgid: int
    create_time: float
    cmdline: tuple[str, ...]
    instance: str


@dataclass(frozen=True)
class ProcessStatus:
    alive: bool
    # Known only for processes this mlxctl process started (it reaped them).
    exit_code: int | None = None
    # True when the PID is alive but is not our process (reused PID).
    foreign: bool = False
    # True when it exited because this mlxctl process stopped it (not a crash).
    stopped: bool = False


@dataclass(frozen=True)
class StopResult:
    signalled: bool
    forced: bool
    detail: str = ""


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds (recorded in the inventory and events)."""

    def monotonic(self) -> float:
        """Seconds for measuring durations."""

    def sleep(self, seconds: float) -> None: ...


class ProcessControl(Protocol):
    """Processes, without ever blocking for long: a stop is begun here and observed later."""

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> Spawned: ...

    def status(self, ident: Identity) -> ProcessStatus: ...

    def terminate(self, ident: Identity) -> StopResult:
        """Begin a graceful stop of the service's whole group (SIGTERM, and SIGCONT for a
        frozen process); returns at once."""

    def kill(self, ident: Identity) -> StopResult:
        """SIGKILL every process of the service's group that is still there."""

    def remaining(self, ident: Identity) -> int:
        """How many processes of the service's group (leader, workers) are alive."""

    def find_instance(self, instance: str) -> Spawned | None:
        """The group leader whose environment carries ``instance``, if one runs (adoption)."""

    def port_owner(self, port: int) -> str | None:
        """A description of whoever listens on ``port`` on loopback, or None when free."""

    def find_marked(self, state: str) -> list[Marked]:
        """Every live process whose environment says it was started for ``state``."""

    def oom_evidence(
        self, pid: int, cgroup: str, oom_kills_at_start: int | None, started_at: float
    ) -> OomEvidence:
        """Whether the kernel killed ``pid`` (started at ``started_at``, wall clock) for
        memory: its cgroup's ``oom_kill`` count against the one at spawn, and the kernel
        log where it is readable."""


class Prober(Protocol):
    def probe(
        self, spec: ProbeSpec, mode: Literal["ready", "live"], timeout: float
    ) -> ProbeResult: ...


@dataclass(frozen=True)
class JobProgress:
    """How far a long job (a model conversion or download) has come, as it reports it."""

    step: str = ""  # "converting", "downloading", "verifying" ...
    done: int | None = None  # bytes (or steps) done
    total: int | None = None  # bytes (or steps) in all, when known


ProgressFn = Callable[[JobProgress], None]


def no_progress(_progress: JobProgress) -> None:
    """A :data:`ProgressFn` for callers that do not show progress."""


class ModelStore(Protocol):
    def present(self, model: ModelRef) -> bool: ...

    def prepare(self, model: ModelRef, progress: ProgressFn = no_progress) -> Path:
        """Produce a model mlxctl can make itself (``model.prepare`` is set).

        Blocking; runs as a job (in the background), reporting through ``progress``.
        """
