"""Real process control on small real processes: identity, groups, logs, stop."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from mlxctl.machine.interfaces import Identity
from mlxctl.machine.processes import INSTANCE_ENV, STATE_ENV, RealProcessControl

# A "server" that starts a child of its own (as vllm-mlx and LiteLLM workers do),
# prints, and ignores nothing.
SERVER = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print('serving', flush=True); time.sleep(60)"
)


def spawn(pc: RealProcessControl, tmp_path: Path) -> Identity:
    instance = uuid.uuid4().hex
    env = {"PATH": "/usr/bin:/bin", INSTANCE_ENV: instance, STATE_ENV: pc.state}
    spawned = pc.spawn([sys.executable, "-c", SERVER], env, tmp_path / "srv.log")
    return Identity(spawned.pid, spawned.pgid, spawned.create_time, spawned.cmdline, instance)


def group(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and psutil.os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    return members


def test_stop_ends_the_whole_group_server_and_child(tmp_path: Path) -> None:
    pc = RealProcessControl(str(tmp_path))
    ident = spawn(pc, tmp_path)
    try:
        deadline = time.monotonic() + 20
        while "serving" not in (tmp_path / "srv.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "serving" in (tmp_path / "srv.log").read_text()
        while len(group(ident.pgid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # anything else that would start beside the server has started
        # The server and its child: no log pump beside them. The server holds its log
        # itself (its stdout and stderr), so its output needs no process but its own.
        assert len(group(ident.pgid)) == 2
        server = psutil.Process(ident.pid)
        assert str(tmp_path / "srv.log") in {f.path for f in server.open_files()}
        assert pc.status(ident).alive
        # A record whose start time does not match is someone else's process; without
        # the record's instance marker in their environment, its group is not touched.
        stranger = dataclasses.replace(
            ident, create_time=ident.create_time - 100, instance=uuid.uuid4().hex
        )
        assert pc.status(stranger).foreign
        assert not pc.stop(stranger, grace=1).signalled
        assert pc.status(ident).alive
        result = pc.stop(ident, grace=5)
        assert result.signalled and "survived" not in result.detail
        assert group(ident.pgid) == []
        status = pc.status(ident)
        assert not status.alive and status.stopped
    finally:
        for proc in group(ident.pgid):
            proc.kill()


def test_a_frozen_server_is_stopped_gracefully_not_killed_after_the_grace(
    tmp_path: Path,
) -> None:
    """SIGSTOP freezes a server (as a hung one is, to mlxctl); SIGCONT after SIGTERM lets
    it act on the SIGTERM at once instead of waiting out the grace for SIGKILL."""
    pc = RealProcessControl(str(tmp_path))
    ident = spawn(pc, tmp_path)
    try:
        deadline = time.monotonic() + 20
        while len(group(ident.pgid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(ident.pgid, signal.SIGSTOP)
        # Each stops when it next runs (the signal is only queued): on a busy machine,
        # not yet when killpg returns.
        while not all(p.status() == psutil.STATUS_STOPPED for p in group(ident.pgid)):
            assert time.monotonic() < deadline, [p.status() for p in group(ident.pgid)]
            time.sleep(0.02)
        result = pc.stop(ident, grace=60)
        assert result.signalled and not result.forced, result.detail
        assert group(ident.pgid) == []
    finally:
        for proc in group(ident.pgid):
            proc.kill()


def test_a_log_that_cannot_be_opened_starts_nothing(tmp_path: Path) -> None:
    pc = RealProcessControl(str(tmp_path))
    (tmp_path / "logs").write_text("a file where the log directory should be")
    before = {p.pid for p in psutil.process_iter()}
    with pytest.raises(OSError):
        pc.spawn(["/bin/sleep", "30"], {"PATH": "/usr/bin:/bin"}, tmp_path / "logs" / "srv.log")
    new = [p for p in psutil.process_iter(["cmdline", "status"]) if p.pid not in before]
    assert not [
        p for p in new if p.info["cmdline"] == ["/bin/sleep", "30"] and p.info["status"] != "zombie"
    ]


def test_a_killed_child_keeps_its_exit_status_whenever_it_is_looked_at(tmp_path: Path) -> None:
    """kill -9, then two threads (the controller's poller and a pass) look at the server
    as fast as they can until it is dead: each must read ``exit code -9``, never a
    stranger's PID nor an unknown status. A dying process's command line reads empty
    before it is a zombie, and the other thread may reap it between two reads: both
    once lost the status (a SIGKILL then read "its exit status is unknown")."""
    pc = RealProcessControl(str(tmp_path))
    seen: list[tuple[int | None, bool]] = []
    for _ in range(25):
        instance = uuid.uuid4().hex
        env = {"PATH": "/usr/bin:/bin", INSTANCE_ENV: instance, STATE_ENV: pc.state}
        spawned = pc.spawn(["/bin/sleep", "30"], env, tmp_path / "srv.log")
        ident = Identity(spawned.pid, spawned.pgid, spawned.create_time, spawned.cmdline, instance)

        def look(ident: Identity = ident) -> None:
            while (status := pc.status(ident)).alive:
                pass
            seen.append((status.exit_code, status.foreign))

        lookers = [threading.Thread(target=look) for _ in range(2)]
        for thread in lookers:
            thread.start()
        os.killpg(ident.pgid, signal.SIGKILL)
        for thread in lookers:
            thread.join(10)
        assert not any(thread.is_alive() for thread in lookers)
    assert seen == [(-9, False)] * 50


# A server whose main thread has exited while another thread runs on: its leader reads
# as a zombie, yet waitpid cannot reap it until the last thread is gone. A killed
# multi-threaded server (an mlx_lm rank) passes through that state for 10-45 ms.
LEADERLESS = (
    "import ctypes, threading, time; "
    "threading.Thread(target=time.sleep, args=(60,)).start(); "
    "ctypes.CDLL(None).pthread_exit(None)"
)


@pytest.mark.skipif(sys.platform != "linux", reason="a leader thread's zombie is Linux's")
def test_a_child_whose_leader_thread_is_a_zombie_is_not_dead_until_it_is_reaped(
    tmp_path: Path,
) -> None:
    """The leader thread of a SIGKILLed multi-threaded server is a zombie before its
    other threads have exited, and only once they have does waitpid give its status:
    read as dead then, a rank 1 killed by SIGKILL was recorded as 'its exit status is
    unknown' (tests/integration/test_distributed.py). Until the reap it still runs."""
    pc = RealProcessControl(str(tmp_path))
    instance = uuid.uuid4().hex
    env = {"PATH": "/usr/bin:/bin", INSTANCE_ENV: instance, STATE_ENV: pc.state}
    spawned = pc.spawn([sys.executable, "-c", LEADERLESS], env, tmp_path / "srv.log")
    ident = Identity(spawned.pid, spawned.pgid, spawned.create_time, spawned.cmdline, instance)
    try:
        leader = psutil.Process(ident.pid)
        deadline = time.monotonic() + 20
        while leader.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        assert leader.status() == psutil.STATUS_ZOMBIE
        assert leader.num_threads() == 2  # the zombie leader, and the thread that runs on
        assert pc.status(ident).alive
    finally:
        os.killpg(ident.pgid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (status := pc.status(ident)).alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (status.alive, status.exit_code, status.foreign) == (False, -9, False)


# A server as mlxctl's own entry points start (tier_guard, the gateway): it keeps its log
# (rotated at 4 KiB here, looked at every 20 ms), prints numbered lines from Python and
# writes some straight to its descriptor 2 as native code would, then exits.
ROTATING = """
import os, sys, time
from mlxctl.machine.clock import SystemClock
from mlxctl.runtimes.server_log import keep_log
assert keep_log(SystemClock(), max_bytes=4096, keep=20, every=0.02) is not None
for i in range(600):
    if i % 50 == 49:
        os.write(2, f"line {i:04d} native\\n".encode())
    else:
        print(f"line {i:04d} " + "x" * 40)
    time.sleep(0.001)
"""


def test_a_server_rotates_its_own_log_by_size_and_loses_no_line(tmp_path: Path) -> None:
    pc = RealProcessControl(str(tmp_path))
    instance = uuid.uuid4().hex
    env = {"PATH": "/usr/bin:/bin", INSTANCE_ENV: instance, STATE_ENV: pc.state}
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    log = tmp_path / "srv.log"
    spawned = pc.spawn([sys.executable, "-c", ROTATING], env, log)
    ident = Identity(spawned.pid, spawned.pgid, spawned.create_time, spawned.cmdline, instance)
    deadline = time.monotonic() + 60
    while pc.status(ident).alive and time.monotonic() < deadline:
        time.sleep(0.05)
    status = pc.status(ident)
    assert not status.alive and status.exit_code == 0, log.read_text()[-2000:]
    generations = sorted(tmp_path.glob("srv.log.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(generations) >= 3  # ~27 KiB written: rotated while it ran
    text = "".join(p.read_text() for p in [*generations, log])
    assert text.startswith("--- mlxctl ")  # the start banner (this script), in the oldest
    numbered = [int(line.split()[1]) for line in text.splitlines() if line.startswith("line ")]
    assert numbered == list(range(600)), "every line once, whole, in order"
    assert all(p.stat().st_size < 3 * 4096 for p in generations)  # by size (looked at often)


# A server whose main thread ends first (a raw exit(2) of that thread alone, not the
# exit_group every normal exit makes): the leader is a zombie while another thread still
# holds the listening port, as mlx_lm.server's did for ~1 s after SIGTERM here.
ZOMBIE_LEADER = """
import ctypes, os, platform, socket, sys, threading, time
port = int(sys.argv[1])
sock = socket.socket()
sock.bind(("127.0.0.1", port))
sock.listen()
threading.Thread(target=lambda: (time.sleep(1.5), os._exit(0))).start()
print("listening", flush=True)
ctypes.CDLL(None).syscall({"x86_64": 60, "aarch64": 93}[platform.machine()], 0)
"""


@pytest.mark.skipif(
    sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"),
    reason="exits one thread with the raw Linux system call",
)
def test_a_zombie_leader_whose_threads_hold_its_port_is_not_gone(tmp_path: Path) -> None:
    """Until every thread has ended (the port is free), the service is not gone: a
    restart that waits for ``remaining() == 0`` never finds its own port held."""
    import socket

    pc = RealProcessControl(str(tmp_path))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = uuid.uuid4().hex
    env = {"PATH": "/usr/bin:/bin", INSTANCE_ENV: instance, STATE_ENV: pc.state}
    spawned = pc.spawn([sys.executable, "-c", ZOMBIE_LEADER, str(port)], env, tmp_path / "z.log")
    ident = Identity(spawned.pid, spawned.pgid, spawned.create_time, spawned.cmdline, instance)
    deadline = time.monotonic() + 20
    while psutil.Process(ident.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, (tmp_path / "z.log").read_text()
        time.sleep(0.01)
    assert pc.port_owner(port) is not None  # its other thread still listens
    # A child of ours reads alive until it is reaped: its death and exit status come together.
    assert pc.status(ident).alive and not pc.status(ident).foreign
    assert pc.remaining(ident) >= 1  # not gone
    while pc.remaining(ident):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert pc.port_owner(port) is None and pc.status(ident).exit_code == 0
