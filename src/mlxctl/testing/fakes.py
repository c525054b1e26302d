"""In-memory fakes of the effect interfaces, for unit tests that never sleep or spawn.

They model just enough of reality to be honest: a spawned process stays alive until
stopped or crashed, a stopped or crashed PID can be reused by a foreign process, a
probe answers what the test says, and the clock only moves when told to (or when
something sleeps on it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlxctl.desired.state import ModelRef
from mlxctl.machine.interfaces import (
    INSTANCE_ENV,
    SERVICE_ENV,
    STATE_ENV,
    Identity,
    Marked,
    OomEvidence,
    ProbeResult,
    ProcessStatus,
    ProgressFn,
    Spawned,
    StopResult,
    no_progress,
)
from mlxctl.runtimes.base import ProbeSpec


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeProcess:
    pid: int
    argv: tuple[str, ...]
    env: dict[str, str]
    log: Path
    create_time: float
    alive: bool = True
    exit_code: int | None = None
    stopped: bool = False
    # A foreign process that took over this PID after ours died.
    foreign: bool = False


@dataclass
class FakeProcs:
    clock: FakeClock
    next_pid: int = 1000
    procs: dict[int, FakeProcess] = field(default_factory=dict)
    signalled: list[int] = field(default_factory=list)
    busy_ports: dict[int, str] = field(default_factory=dict)
    # argv[0] substrings whose processes exit right after spawning (a broken server).
    crash_on_start: set[str] = field(default_factory=set)
    # PIDs that ignore SIGTERM (a hung server) and those that even survive SIGKILL.
    ignore_term: set[int] = field(default_factory=set)
    unkillable: set[int] = field(default_factory=set)
    killed: list[int] = field(default_factory=list)
    # The state directory's marker, as the real control is bound to one: when set, a
    # process is ours only if its environment carries it (another directory's are not).
    state: str | None = None
    # PIDs the kernel killed for memory (as :meth:`oom_evidence` reports them).
    oom_killed: set[int] = field(default_factory=set)

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> Spawned:
        pid = self.next_pid
        self.next_pid += 1
        proc = FakeProcess(pid, tuple(argv), dict(env), log_path, self.clock.time())
        if any(s in " ".join(argv) for s in self.crash_on_start):
            proc.alive, proc.exit_code = False, 1
        self.procs[pid] = proc
        return Spawned(pid, pid, proc.create_time, proc.argv)

    def _matches(self, ident: Identity) -> FakeProcess | None:
        proc = self.procs.get(ident.pid)
        if proc is None or proc.foreign:
            return None
        if proc.create_time != ident.create_time or proc.argv != ident.cmdline:
            return None
        if self.state is not None and proc.env.get(STATE_ENV) != self.state:
            return None
        return proc

    def status(self, ident: Identity) -> ProcessStatus:
        proc = self.procs.get(ident.pid)
        if proc is not None and proc.foreign:
            return ProcessStatus(alive=False, foreign=True)
        mine = self._matches(ident)
        if mine is None:
            return ProcessStatus(alive=False)
        if mine.alive:
            return ProcessStatus(alive=True)
        return ProcessStatus(alive=False, exit_code=mine.exit_code, stopped=mine.stopped)

    def terminate(self, ident: Identity) -> StopResult:
        mine = self._matches(ident)
        if mine is None or not mine.alive:
            return StopResult(signalled=False, forced=False, detail="no process left")
        self.signalled.append(mine.pid)
        mine.stopped = True
        if mine.pid not in self.ignore_term:
            mine.alive, mine.exit_code = False, -15
        return StopResult(signalled=True, forced=False)

    def kill(self, ident: Identity) -> StopResult:
        mine = self._matches(ident)
        if mine is None or not mine.alive:
            return StopResult(signalled=False, forced=False, detail="no process left")
        self.killed.append(mine.pid)
        mine.stopped = True
        if mine.pid not in self.unkillable:
            mine.alive, mine.exit_code = False, -9
        return StopResult(signalled=True, forced=True, detail="killed after grace period")

    def remaining(self, ident: Identity) -> int:
        mine = self._matches(ident)
        return 1 if mine is not None and mine.alive else 0

    def find_instance(self, instance: str) -> Spawned | None:
        for proc in self.procs.values():
            marked = self.state is None or proc.env.get(STATE_ENV) == self.state
            if (
                proc.alive
                and not proc.foreign
                and marked
                and proc.env.get(INSTANCE_ENV) == instance
            ):
                return Spawned(proc.pid, proc.pid, proc.create_time, proc.argv)
        return None

    def port_owner(self, port: int) -> str | None:
        for proc in self.procs.values():
            serving = proc.alive and not proc.foreign and "--port" in proc.argv
            if serving and proc.argv[proc.argv.index("--port") + 1] == str(port):
                return f"pid {proc.pid}"
        return self.busy_ports.get(port)

    # -- test controls ----------------------------------------------------------

    def find_marked(self, state: str) -> list[Marked]:
        return [
            Marked(
                p.pid,
                p.pid,
                p.create_time,
                p.argv,
                p.env[INSTANCE_ENV],
                p.env.get(SERVICE_ENV, "?"),
            )
            for p in self.procs.values()
            if p.alive and not p.foreign and p.env.get(STATE_ENV) == state and INSTANCE_ENV in p.env
        ]

    def oom_evidence(
        self, pid: int, cgroup: str, oom_kills_at_start: int | None, started_at: float
    ) -> OomEvidence:
        if pid in self.oom_killed:
            return OomEvidence(1, f"Out of memory: Killed process {pid} (python)")
        return OomEvidence()

    def crash(self, pid: int, code: int = -9) -> None:
        self.procs[pid].alive = False
        self.procs[pid].exit_code = code

    def reuse_pid(self, pid: int) -> None:
        """A foreign process now holds ``pid`` (ours died earlier)."""
        self.procs[pid].alive = False
        self.procs[pid].foreign = True

    def running(self) -> list[FakeProcess]:
        return [p for p in self.procs.values() if p.alive and not p.foreign]


@dataclass
class FakeProber:
    """Probes answer by port: ready unless the port is listed as failing."""

    failing: dict[int, str] = field(default_factory=dict)
    # Ports whose server answers that it will never be ready (a model that failed to load).
    fatal: dict[int, str] = field(default_factory=dict)
    # Ports whose probe fails this many more times before succeeding.
    slow: dict[int, int] = field(default_factory=dict)
    # Ports whose server runs but cannot generate because a request broke it.
    poisoned: dict[int, str] = field(default_factory=dict)
    # Ports whose server says healthy but answers no completion (always "busy").
    busy: set[int] = field(default_factory=set)
    calls: list[tuple[int, str]] = field(default_factory=list)

    def probe(self, spec: ProbeSpec, mode: Literal["ready", "live"], timeout: float) -> ProbeResult:
        self.calls.append((spec.port, mode))
        if spec.port in self.poisoned:
            return ProbeResult(False, self.poisoned[spec.port], fatal=True, poisoned=True)
        if spec.port in self.fatal:
            return ProbeResult(False, self.fatal[spec.port], fatal=True)
        if spec.port in self.failing:
            return ProbeResult(False, self.failing[spec.port])
        if spec.port in self.busy:
            return ProbeResult(True, "/health 200; busy (another generation runs)", busy=True)
        remaining = self.slow.get(spec.port, 0)
        if remaining > 0:
            self.slow[spec.port] = remaining - 1
            return ProbeResult(False, "loading")
        return ProbeResult(True, "ok")


@dataclass
class FakeStore:
    present_ids: set[str] = field(default_factory=set)
    prepared: list[str] = field(default_factory=list)
    fail_prepare: bool = False

    def present(self, model: ModelRef) -> bool:
        return model.identity in self.present_ids

    def prepare(self, model: ModelRef, progress: ProgressFn = no_progress) -> Path:
        if self.fail_prepare:
            raise RuntimeError("conversion failed")
        self.prepared.append(model.identity)
        self.present_ids.add(model.identity)
        return model.directory
