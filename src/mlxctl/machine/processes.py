"""Real process control: start servers in their own process group, check and stop them.

Servers outlive the mlxctl command that started them (``reconcile --once`` returns
while they keep serving), so each one is a session leader with its own log file.

One identity rule, failing closed (``RealProcessControl._marked`` and ``_is_leader``):
a process is a service's only if it carries, in its environment, both the service's
instance marker and *this* state directory's marker; the leader must also have the recorded PID, a
start time within tolerance of the recorded one (a missing, ``NaN`` or infinite one
matches nothing) and the recorded command line. Anything else (a stranger that reused
the PID, a ``sleep`` whose command line was copied into a record, the servers of the
state directory this one was copied from) is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from mlxctl.machine import oom
from mlxctl.machine.clock import SystemClock
from mlxctl.machine.interfaces import (
    INSTANCE_ENV,
    SERVICE_ENV,
    STATE_ENV,
    Clock,
    Identity,
    Marked,
    OomEvidence,
    ProcessStatus,
    Spawned,
    StopResult,
)
from mlxctl.machine.logfiles import open_log
from mlxctl.machine.statemodel import PID_MAX, is_identity_time
from mlxctl.runtimes.server_log import LOG_FILE_ENV

START_TIME_TOLERANCE = 0.05
POLL_INTERVAL = 0.05
KILL_WAIT = 5.0
# Seconds the kernel log's clock may differ from this process's monotonic clock.
KMSG_CLOCK_SLACK = 5.0


class RealProcessControl:
    """psutil and POSIX signals; keeps its own children to reap them and read exit codes.

    ``state`` is the marker of the state directory this control acts for (the value of
    ``MLXCTL_STATE`` its servers are started with): only processes carrying it are ever
    reported alive or signalled. ``clock`` paces its short waits (a blocking stop, a
    command line settling); it waits on real processes, so only a real clock fits, and
    that is the default.
    """

    def __init__(self, state: str, *, clock: Clock | None = None) -> None:
        if not state:
            raise ValueError("a process control needs its state directory's marker")
        self.state = state
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[int, int] = {}
        self._stopped: set[int] = set()
        # The controller's poller and the executor's threads share this object.
        self._lock = threading.Lock()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> Spawned:
        """Start ``argv`` as a process-group leader writing its output to ``log_path``.

        The server gets a process group of its own (so a Ctrl-C or hang-up meant for
        the shell's foreground job never reaches it, and it outlives mlxctl), and its
        stdout and stderr opened on its log in append mode: nothing runs beside it to
        carry its output, so it keeps writing whatever happens to mlxctl, and what it
        wrote before dying is in the file at once. It rotates the file itself
        (:mod:`mlxctl.runtimes.server_log`, told where the file is by ``LOG_FILE_ENV``).
        """
        with open_log(log_path, argv, self.clock.time()) as log:  # rotated if due, a banner
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, LOG_FILE_ENV: str(log_path)},
                process_group=0,
                close_fds=True,
            )
        with self._lock:
            self._children[child.pid] = child
            self._exit_codes.pop(child.pid, None)
        create_time, cmdline = _identity(child.pid, argv, self.clock)
        # Its memory cgroup now, while it lives (a dead process shows the root one).
        cgroup = oom.cgroup_of(child.pid)
        return Spawned(
            pid=child.pid,
            pgid=child.pid,
            create_time=create_time,
            cmdline=cmdline,
            cgroup=cgroup,
            oom_kills=oom.oom_kill_count(cgroup) if cgroup else None,
        )

    def oom_evidence(
        self, pid: int, cgroup: str, oom_kills_at_start: int | None, started_at: float
    ) -> OomEvidence:
        grown = None
        if cgroup and oom_kills_at_start is not None:
            now = oom.oom_kill_count(cgroup)
            grown = None if now is None else max(0, now - oom_kills_at_start)
        # The kernel log stamps its lines in seconds since boot (the monotonic clock).
        boot = self.clock.time() - self.clock.monotonic()
        since = started_at - boot - KMSG_CLOCK_SLACK
        line = oom.kernel_oom_line(pid, since) if 1 <= pid <= PID_MAX else ""
        return OomEvidence(cgroup_kills=grown, kernel_line=line)

    def _reap(self, pid: int) -> int | None:
        with self._lock:
            child = self._children.get(pid)
            if child is None:
                return self._exit_codes.get(pid)
            code = child.poll()
            if code is not None:
                del self._children[pid]
                self._exit_codes[pid] = code
            return code

    def status(self, ident: Identity) -> ProcessStatus:
        code = self._reap(ident.pid)
        if code is not None:
            return ProcessStatus(alive=False, exit_code=code, stopped=ident.pid in self._stopped)
        if not _usable(ident):
            return ProcessStatus(alive=False, foreign=True)
        try:
            proc = psutil.Process(ident.pid)
            if abs(proc.create_time() - ident.create_time) > START_TIME_TOLERANCE:
                return ProcessStatus(alive=False, foreign=True)  # the PID was reused
            if self._is_child(ident.pid):
                return ProcessStatus(alive=True)  # dead once reaped, not before
            if proc.status() == psutil.STATUS_ZOMBIE:
                return self._exited(ident)
            if _exiting(proc):
                return ProcessStatus(alive=True)
            if not self._is_leader(proc, ident):
                return ProcessStatus(alive=False, foreign=True)
        except psutil.NoSuchProcess:  # ZombieProcess too: it died while being looked at
            return self._exited(ident)
        except psutil.AccessDenied:
            return ProcessStatus(alive=False, foreign=True)
        return ProcessStatus(alive=True)

    def _is_child(self, pid: int) -> bool:
        """A child this process started and has not reaped: its PID cannot have been
        reused, so the start time is proof enough. Its command line and environment are
        not: a dying process's read empty before it becomes a zombie, and a dying server
        read as a stranger lost its exit status (tests/integration/test_procs.py).

        Such a child is alive until the reap says otherwise, even when it reads as a
        zombie: that is its leader thread's state, and a killed multi-threaded server's
        leader is a zombie before its other threads have exited, while waitpid cannot
        return its status yet (an mlx_lm rank: 10-45 ms on this 2-core machine at load 5-6,
        seconds on a starved one). Read as dead then, a rank 1 killed by SIGKILL was
        recorded as 'its exit status is unknown'; a later look (the poller's, every
        quarter of a second) reaps it, with its status."""
        with self._lock:
            return pid in self._children

    def _exited(self, ident: Identity) -> ProcessStatus:
        """A process found dead after the first reap found it running: not ours (its
        exit status is its parent's to read), or a child of ours that another thread (the
        poller, a pass) reaped meanwhile. Reap again, so the child keeps its exit status."""
        return ProcessStatus(
            alive=False, exit_code=self._reap(ident.pid), stopped=ident.pid in self._stopped
        )

    def _marked(self, proc: psutil.Process, instance: str) -> bool:
        """``proc`` carries ``instance``'s marker and this state directory's."""
        env = proc.environ()
        return env.get(INSTANCE_ENV) == instance and env.get(STATE_ENV) == self.state

    def _is_leader(self, proc: psutil.Process, ident: Identity) -> bool:
        """The identity rule for a group's leader: PID (the caller's), start time,
        command line and both markers."""
        if abs(proc.create_time() - ident.create_time) > START_TIME_TOLERANCE:
            return False
        return tuple(proc.cmdline()) == ident.cmdline and self._marked(proc, ident.instance)

    def _members(self, ident: Identity) -> list[psutil.Process]:
        """Every live process of the service's group that provably belongs to it: in
        the recorded group and carrying both markers (the leader and the workers
        it started). A copied record's instance marker alone is not enough."""
        members: list[psutil.Process] = []
        if not _usable(ident) or not 1 <= ident.pgid <= PID_MAX:
            return members
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) != ident.pgid or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if self._marked(proc, ident.instance):
                    members.append(proc)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return members

    def terminate(self, ident: Identity) -> StopResult:
        """SIGTERM the group's provable members, then SIGCONT: a stopped (SIGSTOP, frozen)
        process acts on SIGTERM only once continued; without it a hung server would
        always wait out the grace, then be killed."""
        members = self._members(ident)
        if not members:
            return StopResult(signalled=False, forced=False, detail="no process left")
        with self._lock:
            self._stopped.add(ident.pid)
        self._signal(members, signal.SIGTERM)
        self._signal(members, signal.SIGCONT)
        return StopResult(True, False)

    def kill(self, ident: Identity) -> StopResult:
        members = self._members(ident)
        if not members:
            return StopResult(signalled=False, forced=False, detail="no process left")
        with self._lock:
            self._stopped.add(ident.pid)
        self._signal(members, signal.SIGKILL)
        return StopResult(True, True, "killed after grace period")

    def remaining(self, ident: Identity) -> int:
        for proc in self._members(ident):
            self._reap(proc.pid)
        self._reap(ident.pid)
        return len(self._members(ident)) + self._leader_dying(ident)

    def _leader_dying(self, ident: Identity) -> int:
        """1 while the recorded leader has died but is not gone yet, else 0.

        A dying process is torn down in steps, and it still holds its files (sockets
        included) after its memory, hence its environment and command line, can no
        longer be read; its main thread may also be a zombie while its other threads
        end: mlx_lm.server's port stayed taken ~1 s after its leader turned zombie here,
        and a restart that started the new server then found its port held. It is gone
        once reaped (by us, or by init for a server that outlived the mlxctl that started
        it), which the kernel allows only when every thread has ended.
        """
        if not _usable(ident):
            return 0
        try:
            proc = psutil.Process(ident.pid)
            with proc.oneshot():
                return int(_dying(proc, ident))
        except psutil.Error:
            return 0

    def find_instance(self, instance: str) -> Spawned | None:
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) != proc.pid or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if not self._marked(proc, instance):
                    continue
                with proc.oneshot():
                    return Spawned(proc.pid, proc.pid, proc.create_time(), tuple(proc.cmdline()))
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return None

    def find_marked(self, state: str) -> list[Marked]:
        found: list[Marked] = []
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                if env.get(STATE_ENV) != state or INSTANCE_ENV not in env:
                    continue
                with proc.oneshot():
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        continue
                    found.append(
                        Marked(
                            proc.pid,
                            os.getpgid(proc.pid),
                            proc.create_time(),
                            tuple(proc.cmdline()),
                            env[INSTANCE_ENV],
                            env.get(SERVICE_ENV, "?"),
                        )
                    )
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        return found

    def stop(self, ident: Identity, grace: float) -> StopResult:
        """Terminate, wait up to ``grace``, then kill: blocking, for tools and tests (the
        reconciler never waits; it observes the stop instead)."""
        members = self._members(ident)
        if not members:
            return StopResult(signalled=False, forced=False, detail="no process left")
        self.terminate(ident)
        survivors = self._wait_gone(members, grace)
        forced = bool(survivors)
        if survivors:
            self._signal(survivors, signal.SIGKILL)
            survivors = self._wait_gone(survivors, KILL_WAIT)
        if survivors:
            pids = ", ".join(str(p.pid) for p in survivors)
            return StopResult(True, forced, f"processes {pids} survived SIGKILL")
        return StopResult(True, forced, "killed after grace period" if forced else "")

    def _signal(self, procs: Sequence[psutil.Process], sig: signal.Signals) -> None:
        for proc in procs:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                proc.send_signal(sig)

    def _wait_gone(self, procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
        deadline = self.clock.monotonic() + timeout
        alive = list(procs)
        while alive:
            for proc in alive:
                self._reap(proc.pid)
            alive = [p for p in alive if p.pid in self._children or _running(p)]
            if not alive or self.clock.monotonic() >= deadline:
                break
            self.clock.sleep(POLL_INTERVAL)
        return alive

    def port_owner(self, port: int) -> str | None:
        if not 1 <= port <= 65535:
            return None  # no socket can hold it (a damaged ports file is repaired elsewhere)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return None
        with contextlib.suppress(psutil.Error, OSError):
            for conn in psutil.net_connections(kind="tcp"):
                listening = conn.status == psutil.CONN_LISTEN
                if conn.laddr and conn.laddr.port == port and listening and conn.pid:
                    proc = psutil.Process(conn.pid)
                    return f"pid {conn.pid} ({' '.join(proc.cmdline())[:80]})"
        return "another process"


def _identity(pid: int, argv: Sequence[str], clock: Clock) -> tuple[float, tuple[str, ...]]:
    """Start time and command line of a just-spawned process.

    Right after ``exec`` of a script the kernel may briefly show an empty command
    line; it settles within milliseconds, so read it again until it does.
    """
    deadline = clock.monotonic() + 1.0
    while True:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                create_time, cmdline = proc.create_time(), tuple(proc.cmdline())
        except psutil.Error:
            # It died already; the identity we know is enough to report it.
            return 0.0, tuple(argv)
        if cmdline:
            return create_time, cmdline
        if clock.monotonic() >= deadline:
            # Never settled (it is exiting): the argv stands in, so the record stays
            # valid; a later identity check finds it gone or foreign.
            return create_time, tuple(argv)
        clock.sleep(0.005)


def _exiting(proc: psutil.Process) -> bool:
    """The recorded process (its start time matched), between its death and its zombie:
    its memory goes first, so its command line reads empty. Not dead yet (there is no
    exit status to read), and not a stranger either."""
    return not proc.cmdline()


def _usable(ident: Identity) -> bool:
    """An identity a leader can be matched against: a PID the kernel could have, a start
    time that is a real moment (a record's ``NaN`` would pass any tolerance check, as
    every comparison with it is false), a command line and an instance marker."""
    return (
        1 <= ident.pid <= PID_MAX
        and is_identity_time(ident.create_time)
        and bool(ident.cmdline)
        and bool(ident.instance)
    )


def _dying(proc: psutil.Process, ident: Identity) -> bool:
    """``proc``, the recorded leader by its PID and start time, has died and is being torn
    down: a zombie, or its memory already released (its command line reads empty, which
    a living process's never does). Nothing else is checked: a dead process is signalled
    for nothing, and its environment can no longer be read."""
    try:
        if abs(proc.create_time() - ident.create_time) > START_TIME_TOLERANCE:
            return False
        return proc.status() == psutil.STATUS_ZOMBIE or not proc.cmdline()
    except psutil.ZombieProcess:
        return True
    except psutil.Error:
        return False


def _running(proc: psutil.Process) -> bool:
    """Still there: running, or a zombie not reaped yet (its threads may still be ending
    and holding its files; see :meth:`RealProcessControl._exiting`)."""
    try:
        return proc.is_running()
    except psutil.Error:
        return False
