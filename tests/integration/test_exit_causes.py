"""Why a server died, on real processes: a signal from outside (SIGKILL, a real SIGSEGV),
a stop of ours, a Python exception, a port already in use, and the kernel's OOM killer
inside a small memory cgroup (where this machine lets a test make one).

Each "server" is a ``python -c`` script started by the real process control (its own
group, its output straight into its log); its death is observed and classified as a
pass would, reading the log at once: nothing of what it wrote waits in a pipe.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from tests.integration.conftest import Mlxctl, free_ports, ready_pid, wait_for
from tests.integration.test_controller import one_tier

from mlxctl.machine import oom
from mlxctl.machine.interfaces import INSTANCE_ENV, STATE_ENV
from mlxctl.machine.processes import RealProcessControl
from mlxctl.machine.record import ExitCause, Record
from mlxctl.observe.gather import _process

SRC = Path(__file__).resolve().parents[2] / "src"


def start(pc: RealProcessControl, tmp_path: Path, script: str, port: int = 1) -> Record:
    instance = uuid.uuid4().hex
    env = {"PATH": "/usr/bin:/bin", INSTANCE_ENV: instance, STATE_ENV: pc.state}
    log = tmp_path / "srv.log"
    spawned = pc.spawn([sys.executable, "-c", script], env, log)
    return Record(
        name="srv",
        role="tier",
        pid=spawned.pid,
        pgid=spawned.pgid,
        create_time=spawned.create_time,
        cmdline=spawned.cmdline,
        instance=instance,
        spec_hash="h",
        port=port,
        log=str(log),
        started_at=time.time(),
        cgroup=spawned.cgroup,
        oom_kills_at_start=spawned.oom_kills,
    )


def wait_dead(pc: RealProcessControl, record: Record, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while pc.status(record.identity()).alive:
        assert time.monotonic() < deadline, "the server did not die"
        time.sleep(0.05)
    # Gone, not only dying (and reaped: its exit code known).
    while pc.remaining(record.identity()) and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_log(record: Record, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in Path(record.log).read_text():
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.05)


def cause_of(pc: RealProcessControl, record: Record) -> ExitCause:
    seen = _process(record, pc)
    assert not seen.alive and seen.exit_cause is not None
    return seen.exit_cause


SERVING = "print('serving', flush=True); import time; time.sleep(60)"


def test_killed_from_outside_by_sigkill(tmp_path: Path) -> None:
    pc = RealProcessControl(str(tmp_path))
    record = start(pc, tmp_path, SERVING)
    wait_log(record, "serving")
    os.kill(record.pid, signal.SIGKILL)
    wait_dead(pc, record)
    cause = cause_of(pc, record.evolve(ready_at=record.started_at))
    assert (cause.kind, cause.word, cause.by_us, cause.exit_code) == (
        "signal",
        "SIGKILL",
        False,
        -9,
    )
    assert "not sent by mlxctl" in cause.detail


def test_a_real_segfault(tmp_path: Path) -> None:
    pc = RealProcessControl(str(tmp_path))
    script = "print('serving', flush=True); import ctypes; ctypes.string_at(0)"
    record = start(pc, tmp_path, script)
    wait_dead(pc, record)
    cause = cause_of(pc, record.evolve(ready_at=record.started_at))
    assert (cause.kind, cause.word, cause.signal) == ("signal", "SIGSEGV", "SIGSEGV")


def test_stopped_by_us(tmp_path: Path) -> None:
    pc = RealProcessControl(str(tmp_path))
    record = start(pc, tmp_path, SERVING)
    wait_log(record, "serving")
    pc.terminate(record.identity())
    wait_dead(pc, record)
    cause = cause_of(pc, record.evolve(ready_at=record.started_at))
    assert (cause.word, cause.by_us) == ("SIGTERM", True)
    assert "sent by mlxctl" in cause.detail


def test_an_error_exit_with_a_python_exception(tmp_path: Path) -> None:
    pc = RealProcessControl(str(tmp_path))
    script = "print('serving', flush=True); raise ValueError('max_tokens must be positive')"
    record = start(pc, tmp_path, script)
    wait_dead(pc, record)
    cause = cause_of(pc, record.evolve(ready_at=record.started_at))
    assert (cause.kind, cause.word, cause.exit_code) == ("error", "error", 1)
    assert cause.detail == "exited with code 1: ValueError: max_tokens must be positive"


def test_could_not_start_its_port_is_taken(tmp_path: Path) -> None:
    pc = RealProcessControl(str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        script = f"import socket; socket.socket().bind(('127.0.0.1', {port}))"
        record = start(pc, tmp_path, script, port=port)
        wait_dead(pc, record)
        cause = cause_of(pc, record)
    assert (cause.kind, cause.word) == ("could-not-start", "port-in-use")
    assert f"port {port} is already in use" in cause.detail
    assert "Address already in use" in cause.evidence


# -- the kernel's OOM killer in a small memory cgroup -------------------------------------

HOG = (
    "import time\n"
    "print('allocating', flush=True)\n"
    "chunks = []\n"
    "while True:\n"
    "    chunks.append(bytearray(8 << 20))\n"
    "    time.sleep(0.005)\n"
)
# Runs inside the small cgroup: it starts the hog with the real process control (so the
# hog is born in the cgroup, as a server started by a controller in a systemd unit with
# MemoryMax is), waits for its death and prints how it is classified.
DRIVER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {src!r})
from tests.integration.test_exit_causes import start, wait_dead, cause_of
from mlxctl.machine.processes import RealProcessControl
tmp = Path({tmp!r})
pc = RealProcessControl(str(tmp))
record = start(pc, tmp, {hog!r})
wait_dead(pc, record, timeout=60)
cause = cause_of(pc, record.evolve(ready_at=record.started_at))
print(json.dumps({{"cause": cause.to_json(), "cgroup": record.cgroup,
                  "at_start": record.oom_kills_at_start, "pid": record.pid}}))
"""


def memory_cgroup_dir() -> Path | None:
    """A new child of this process's memory cgroup (v1 here; v2 where it is delegated),
    or None when the machine does not let this test make one."""
    if os.geteuid() != 0:
        return None
    mine = oom.cgroup_of(os.getpid())
    v2, v1 = oom._mounts()
    version, _, path = mine.partition(":")
    base = Path((v1 if version == "v1" else v2) + path.rstrip("/"))
    if not (version and (v1 or v2)) or not base.is_dir():
        return None
    child = base / f"mlxctl-test-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
        limit = child / ("memory.limit_in_bytes" if version == "v1" else "memory.max")
        limit.write_text(str(160 << 20))
        if version == "v2":
            (child / "memory.swap.max").write_text("0")
    except OSError:
        if child.exists():
            child.rmdir()
        return None
    return child


def test_killed_by_the_kernel_for_memory_in_a_small_cgroup(tmp_path: Path) -> None:
    cgroup = memory_cgroup_dir()
    if cgroup is None:
        pytest.skip("cannot create a memory cgroup here (needs root and a memory controller)")
    try:
        script = DRIVER.format(src=str(SRC), tmp=str(tmp_path), hog=HOG)

        def enter() -> None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        env = {**os.environ, "PYTHONPATH": f"{SRC}:{SRC.parent}"}
        done = subprocess.run(
            [sys.executable, "-c", script],
            preexec_fn=enter,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for _ in range(50):
            try:
                cgroup.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    cause = found["cause"]
    assert found["cgroup"].endswith(cgroup.name) and found["at_start"] == 0
    assert (cause["kind"], cause["word"], cause["out_of_memory"]) == (
        "oom-killed",
        "oom-killed",
        True,
    )
    assert cause["exit_code"] == -9
    # As root the kernel log names the very PID.
    if os.access("/dev/kmsg", os.R_OK):
        assert f"Killed process {found['pid']} (" in cause["evidence"]


# -- a real mlx_lm.server under the controller --------------------------------------------


def test_a_segfaulted_server_is_classified_through_the_controller(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    """kill -SEGV on a real mlx_lm.server: the controller heals it, and `events --tier
    fast --kind SIGSEGV -o json` (answered by the controller's admin API) shows why."""
    [port] = free_ports(1)
    mlxctl.write("stack.yaml", one_tier(tiny_model, port, 16))
    mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", "3600", log=tmp_path / "c.log")
    pid = wait_for(lambda: ready_pid(mlxctl), 120, "the tier to be ready")
    os.kill(pid, signal.SIGSEGV)
    wait_for(lambda: ready_pid(mlxctl, other_than=pid), 60, "the tier to be restarted")
    found = mlxctl.run("events", "--tier", "fast", "--kind", "SIGSEGV", "-o", "json")
    assert found.returncode == 0, found.stderr
    [crash] = [json.loads(line) for line in found.stdout.splitlines()]
    assert crash["kind"] == "crash" and crash["target"] == "fast"
    assert crash["exit_cause"]["signal"] == "SIGSEGV" and not crash["exit_cause"]["by_us"]
    assert crash["cause"].startswith("SIGSEGV: killed by SIGSEGV (exit code -11, not sent by")
    none = mlxctl.run("events", "--tier", "fast", "--kind", "oom-killed", "-o", "json")
    assert none.returncode == 0 and none.stdout == ""
    # The restart succeeded, and still says why it happened: the event, and status.
    starts = mlxctl.run("events", "--tier", "fast", "--kind", "start", "-o", "json")
    restart = json.loads(starts.stdout.splitlines()[-1])
    assert restart["cause"] == "restarting after crash #1: SIGSEGV (not sent by mlxctl)"
    assert restart["restarted_after"]["signal"] == "SIGSEGV"
    [row] = mlxctl.status()["tiers"]
    assert row["health"] == "ready" and row["exit_cause"] is None
    assert (row["restarts"], row["restarted_after"]["word"]) == (1, "SIGSEGV")
