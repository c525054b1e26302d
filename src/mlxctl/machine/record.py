"""One inventory record: a started service and the identity that proves it is ours.

Pure data (the planner reads it through the observed state); the file that holds
the records is :mod:`mlxctl.machine.inventory`.

A record is written *before* its process is spawned (``pid`` 0: the intent, with
the instance marker the children will carry), so a crash between the spawn and the
write can never leave a server nobody owns: the next run finds the process by its
marker and adopts it. A stop is recorded when it begins (``stop_requested_at``) and
the record stays until every process of the group is gone, so "stopping" is
observed state like any other and survives the controller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mlxctl.machine.interfaces import Identity

# Why a server died, in classes (see :func:`mlxctl.observe.exit_cause.classify`):
# ``oom-killed`` the kernel killed it for memory (Linux's OOM killer; macOS's jetsam);
# ``signal`` a signal killed it (``signal`` names it; ``by_us``: mlxctl sent it);
# ``error`` it exited with an error (its log's last error line);
# ``could-not-start`` it exited before it was ready because of its port or its model;
# ``exited`` it exited with code 0 on its own; ``unknown`` mlxctl was not its parent, so
# its exit status is lost, and nothing else says why.
EXIT_KINDS = ("oom-killed", "signal", "error", "could-not-start", "exited", "unknown")


@dataclass(frozen=True)
class ExitCause:
    """Why a server died, as ``status``, ``events`` and the JSON show it."""

    kind: str
    # A short word for the LAST ERROR column: ``oom-killed``, ``SIGSEGV``, ``error``,
    # ``out-of-memory``, ``port-in-use``, ``bad-model``, ``exited``.
    word: str
    # One line: what happened and what says so.
    detail: str
    exit_code: int | None = None
    # The signal's name (``SIGKILL``) when a signal ended it.
    signal: str = ""
    # mlxctl sent that signal (a stop, or a kill after the grace period).
    by_us: bool = False
    # It ran out of memory (the kernel killed it, or its log says an allocation failed):
    # the tier's memory estimate is raised for the next admission.
    out_of_memory: bool = False
    # The line that decided it (a kernel log line, the log's error line).
    evidence: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """The class and how it ended, short: ``oom-killed (SIGKILL, not sent by mlxctl)``,
        ``error (exit code 1)``: what a restart's cause and the RESTARTS column say."""
        how = ""
        if self.signal:
            sent = f"{'sent' if self.by_us else 'not sent'} by mlxctl"
            how = sent if self.word == self.signal else f"{self.signal}, {sent}"
        elif self.exit_code is not None:
            how = f"exit code {self.exit_code}"
        return f"{self.word} ({how})" if how else self.word


@dataclass(frozen=True)
class Record:
    """One started service."""

    name: str
    role: str
    pid: int
    pgid: int
    create_time: float
    cmdline: tuple[str, ...]
    instance: str
    spec_hash: str
    port: int
    log: str
    started_at: float
    launch: Mapping[str, Any] = field(default_factory=dict)
    ready_at: float | None = None
    restarts: int = 0
    consecutive_crashes: int = 0
    died_at: float | None = None
    exit_code: int | None = None
    not_before: float | None = None
    last_error: str | None = None
    # A stop has begun (SIGTERM sent) at this time, for this cause.
    stop_requested_at: float | None = None
    stop_cause: str | None = None
    # SIGKILL was sent (the grace period ran out) at this time.
    kill_sent_at: float | None = None
    # The memory estimate the launch was admitted with (bytes), for admission in time.
    memory_bytes: int | None = None
    # The stack (metadata.name) that created it: only that stack's applies prune it.
    # "" for the gateway and for records written before owners were recorded.
    stack: str = ""
    # A retiring instance (its record renamed ``NAME~PID``): it keeps serving until the
    # service named here is ready, then it is stopped (the gateway's overlapping restart).
    handover_to: str = ""
    # Why it died (its last crash), classified; None while it runs or when unknown.
    exit_cause: ExitCause | None = None
    # The death its last restart followed, classified: kept while the new instance runs
    # (``exit_cause`` is cleared once it is ready), so ``status`` says why the last
    # restart happened. None when its last start followed no crash, or an unclassified
    # one (it hung, or was not ready in time: ``last_error`` said so until it was ready).
    restarted_after: ExitCause | None = None
    # The cgroup it was started in and that cgroup's ``oom_kill`` count then (Linux):
    # a count grown by its death says the kernel killed it for memory.
    cgroup: str = ""
    oom_kills_at_start: int | None = None
    # A distributed tier's rank: the group generation it was started for (every member
    # starts the same number; a rank of an older one is never mixed with a newer one).
    generation: int = 0

    @property
    def rank(self) -> int | None:
        """Its rank, for a distributed tier's record (None: an ordinary service)."""
        group = self.launch.get("distributed")
        rank = group.get("rank") if isinstance(group, Mapping) else None
        return rank if isinstance(rank, int) and not isinstance(rank, bool) else None

    @property
    def spawned(self) -> bool:
        """False for an intent record: written before the spawn, its process not confirmed."""
        return self.pid > 0

    @property
    def stopping(self) -> bool:
        return self.stop_requested_at is not None

    def retiring(self) -> Record:
        """This instance under a name of its own, serving until its successor is ready."""
        return replace(self, name=f"{self.name}~{self.pid}", handover_to=self.name)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["cmdline"] = list(self.cmdline)
        data["launch"] = dict(self.launch)
        for cause in ("exit_cause", "restarted_after"):
            if data[cause] is None:
                data.pop(cause)
        if not self.cgroup:
            data.pop("cgroup")
            data.pop("oom_kills_at_start")
        if not self.generation:
            data.pop("generation")
        return data

    def evolve(self, **changes: Any) -> Record:
        return replace(self, **changes)

    def identity(self) -> Identity:
        """What must match before this record's processes may be signalled."""
        return Identity(self.pid, self.pgid, self.create_time, self.cmdline, self.instance)
