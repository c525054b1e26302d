"""Why a server died: the pure classifier on recorded evidence, and its way through the
planner, the record, ``status``, the event log and the OOM feedback to admission."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxctl.machine import observed_memory
from mlxctl.machine.interfaces import OomEvidence
from mlxctl.machine.inventory import parse_record
from mlxctl.observe.exit_cause import classify
from mlxctl.status import report
from tests.unit.world import World, tier, tiers_yaml

BANNER = "--- mlxctl 2026-01-01T00:00:00+00:00 start: python -m mlx_lm server"
# Lines as the runtimes write them (MLX on Metal aborts on an uncaught C++ exception).
METAL_OOM = (
    "libc++abi: terminating due to uncaught exception of type std::runtime_error: "
    "[METAL] Command buffer execution failed: Insufficient Memory "
    "(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)"
)
CUDA_OOM = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
KERNEL = "Memory cgroup out of memory: Killed process 4242 (python3) total-vm:114260kB"


def test_kernel_oom_kill_from_the_kernel_log() -> None:
    cause = classify(
        exit_code=-9,
        stopped_by_us=False,
        ready=True,
        port=8001,
        oom=OomEvidence(cgroup_kills=1, kernel_line=KERNEL),
    )
    assert (cause.kind, cause.word, cause.signal) == ("oom-killed", "oom-killed", "SIGKILL")
    assert cause.out_of_memory and "Killed process 4242" in cause.detail


def test_kernel_oom_kill_from_the_cgroup_count_needs_a_sigkill_or_an_unknown_status() -> None:
    grown = OomEvidence(cgroup_kills=1)
    for code in (-9, None):
        cause = classify(exit_code=code, stopped_by_us=False, ready=True, port=1, oom=grown)
        assert cause.kind == "oom-killed" and "oom_kill count grew by 1" in cause.detail
    # Another process of the same cgroup was killed; this one crashed by itself.
    segv = classify(exit_code=-11, stopped_by_us=False, ready=True, port=1, oom=grown)
    assert (segv.kind, segv.word) == ("signal", "SIGSEGV")


@pytest.mark.parametrize(
    ("code", "by_us", "word", "says"),
    [
        (-9, False, "SIGKILL", "not sent by mlxctl"),
        (-9, True, "SIGKILL", "sent by mlxctl"),
        (-11, False, "SIGSEGV", "exit code -11"),
        (-15, False, "SIGTERM", "not sent by mlxctl"),
    ],
)
def test_killed_by_a_signal(code: int, by_us: bool, word: str, says: str) -> None:
    cause = classify(exit_code=code, stopped_by_us=by_us, ready=True, port=1)
    assert (cause.kind, cause.word, cause.by_us) == ("signal", word, by_us)
    assert says in cause.detail and not cause.out_of_memory


def test_a_sigkill_on_macos_names_jetsam() -> None:
    cause = classify(exit_code=-9, stopped_by_us=False, ready=True, port=1, platform="darwin")
    assert "jetsam" in cause.detail
    assert "jetsam" not in classify(exit_code=-9, stopped_by_us=True, ready=True, port=1).detail


@pytest.mark.parametrize(("line", "code"), [(METAL_OOM, -6), (CUDA_OOM, 1), ("MemoryError", 1)])
def test_out_of_memory_in_the_log(line: str, code: int) -> None:
    tail = (BANNER, "loading", "Traceback (most recent call last):", line)
    cause = classify(exit_code=code, stopped_by_us=False, ready=True, port=1, log_tail=tail)
    assert (cause.kind, cause.word) == ("error", "out-of-memory")
    assert cause.out_of_memory and cause.evidence == line


def test_an_error_exit_names_the_exception() -> None:
    tail = (
        BANNER,
        "Traceback (most recent call last):",
        '  File "server.py", line 3, in <module>',
        "ValueError: max_tokens must be positive",
    )
    cause = classify(exit_code=1, stopped_by_us=False, ready=True, port=1, log_tail=tail)
    assert (cause.kind, cause.word, cause.exit_code) == ("error", "error", 1)
    assert cause.detail == "exited with code 1: ValueError: max_tokens must be positive"


def test_only_the_last_run_of_the_log_counts() -> None:
    tail = ("OSError: [Errno 98] Address already in use", BANNER, "bye")
    cause = classify(exit_code=0, stopped_by_us=False, ready=False, port=8001, log_tail=tail)
    assert cause.kind == "exited"


def test_could_not_start_its_port() -> None:
    tail = (BANNER, "ERROR: [Errno 98] error while attempting to bind on address: address "
            "already in use")  # fmt: skip
    cause = classify(exit_code=1, stopped_by_us=False, ready=False, port=8001, log_tail=tail)
    assert (cause.kind, cause.word) == ("could-not-start", "port-in-use")
    assert "port 8001 is already in use" in cause.detail


def test_could_not_start_its_model() -> None:
    tail = (BANNER, "FileNotFoundError: No safetensors found in /models/x")
    cause = classify(exit_code=1, stopped_by_us=False, ready=False, port=8001, log_tail=tail)
    assert (cause.kind, cause.word) == ("could-not-start", "bad-model")
    # The same line once it served is an error, not a start failure.
    later = classify(exit_code=1, stopped_by_us=False, ready=True, port=8001, log_tail=tail)
    assert later.kind == "error"


def test_an_unknown_exit_status() -> None:
    cause = classify(exit_code=None, stopped_by_us=False, ready=True, port=1)
    assert cause.kind == "unknown" and "mlxctl was not its parent" in cause.detail


def test_a_record_keeps_its_exit_cause_and_rejects_a_bad_one() -> None:
    cause = classify(exit_code=-11, stopped_by_us=False, ready=True, port=1)
    data = {
        "name": "a", "role": "tier", "pid": 10, "pgid": 10, "create_time": 1.0,
        "cmdline": ["x"], "instance": "i", "spec_hash": "h", "port": 1, "log": "l",
        "started_at": 1.0, "exit_cause": cause.to_json(), "cgroup": "v1:/a",
        "oom_kills_at_start": 0,
    }  # fmt: skip
    assert parse_record(data).exit_cause == cause
    assert parse_record({**data, "restarted_after": cause.to_json()}).restarted_after == cause
    data["exit_cause"] = {**cause.to_json(), "kind": "gremlins"}
    with pytest.raises(ValueError):
        parse_record(data)


# -- through the reconciler (fake processes) ---------------------------------------


def test_a_crash_is_classified_in_the_record_status_events_and_json(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001)))
    w.apply()
    pid = w.record("fast").pid
    w.procs.crash(pid, -11)
    w.step(heal=False)
    rec = w.record("fast")
    assert rec.exit_cause is not None and rec.exit_cause.word == "SIGSEGV"
    assert rec.last_error.startswith("SIGSEGV: killed by SIGSEGV (exit code -11")
    from mlxctl.app import stacks

    rows = stacks.status(w.ctx, [w.stacks]).rows
    row = next(r for r in rows if r.name == "fast")
    assert row.exit_cause is not None and row.exit_cause["signal"] == "SIGSEGV"
    assert "SIGSEGV: killed by SIGSEGV" in report.status_text(rows)
    events = [json.loads(line) for line in w.ctx.paths.events.read_text().splitlines()]
    crash = next(e for e in events if e["kind"] == "crash")
    assert crash["exit_cause"]["kind"] == "signal" and crash["cause"].startswith("SIGSEGV:")


def test_a_restart_keeps_the_cause_of_the_death_it_followed(tmp_path: Path) -> None:
    """An OOM kill, healed: the start's cause and event, the new record, ``status`` and its
    JSON say why the last restart happened, still once the new instance is ready; a
    later restart for a changed launch follows no death and says none."""
    from mlxctl.app import ops, stacks

    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001)))
    w.apply()
    pid = w.record("fast").pid
    w.procs.oom_killed.add(pid)
    w.procs.crash(pid, -9)
    w.apply()
    rec = w.record("fast")
    assert rec.pid != pid and rec.ready_at is not None and rec.exit_cause is None
    assert rec.restarted_after is not None and rec.restarted_after.kind == "oom-killed"
    assert rec.restarted_after.summary() == "oom-killed (SIGKILL, not sent by mlxctl)"
    events = [json.loads(line) for line in w.ctx.paths.events.read_text().splitlines()]
    [start] = [e for e in events if e["kind"] == "start" and "restarted_after" in e]
    assert start["cause"] == "restarting after crash #1: oom-killed (SIGKILL, not sent by mlxctl)"
    assert start["restarted_after"]["evidence"].startswith("Out of memory: Killed process")
    # The restart is not a death itself: ``--kind oom-killed`` lists the crash alone.
    only = ops.EventFilter(kinds=("oom-killed",))
    assert [e["kind"] for e in events if only.matches(e)] == ["crash"]
    rows = stacks.status(w.ctx, [w.stacks]).rows
    row = next(r for r in rows if r.name == "fast")
    assert row.health == "ready" and row.exit_cause is None
    assert row.restarted_after is not None and row.restarted_after["signal"] == "SIGKILL"
    assert row.to_json()["restarted_after"]["kind"] == "oom-killed"
    line = next(x for x in report.status_text(rows).splitlines() if x.startswith("fast"))
    assert "  1 (oom-killed)  " in line
    # Restarted for a changed launch: no death behind it.
    w.write(tiers_yaml(tier("fast", 8001, args="{max-tokens: 64}")))
    w.clock.advance(60)
    w.apply()
    assert w.record("fast").restarted_after is None
    row = next(r for r in stacks.status(w.ctx, [w.stacks]).rows if r.name == "fast")
    assert row.restarted_after is None and row.restarts == 2


@pytest.mark.parametrize(
    ("exit_code", "by_us", "summary"),
    [
        (-11, False, "SIGSEGV (not sent by mlxctl)"),
        (-15, True, "SIGTERM (sent by mlxctl)"),
        (1, False, "error (exit code 1)"),
        (0, False, "exited (exit code 0)"),
        (None, False, "exited"),
    ],
)
def test_the_short_summary_of_a_death(exit_code: int | None, by_us: bool, summary: str) -> None:
    cause = classify(exit_code=exit_code, stopped_by_us=by_us, ready=True, port=1)
    assert cause.summary() == summary


def test_an_oom_kill_raises_the_estimate_for_the_next_admission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed by the kernel for memory: the next admission uses 1.5 times the estimate it
    ran with, ``diff`` says so, and a changed launch estimates afresh."""
    import mlxctl.desired.admission as admission
    from mlxctl.capacity.memory import MemoryEstimate

    gib1 = MemoryEstimate.of(weights=1 << 29, kv_cache=0, overhead=1 << 29)
    monkeypatch.setattr(admission, "_estimate", lambda service, tier: (gib1, ()))
    w = World(tmp_path)
    body = tiers_yaml(tier("fast", 8001)).replace("spec:\n", "spec:\n  memory: {budget: 8GiB}\n")
    w.write(body)
    w.apply()
    assert w.record("fast").memory_bytes == 1 << 30
    pid = w.record("fast").pid
    w.procs.oom_killed.add(pid)
    w.procs.crash(pid, -9)
    w.step(heal=False)
    assert w.record("fast").exit_cause.kind == "oom-killed"  # type: ignore[union-attr]
    raised = observed_memory.read_raised(observed_memory.path_in(w.ctx.paths.state))
    assert raised["fast"].bytes == int(1.5 * (1 << 30))
    desired = w.desired()
    assert desired.get("fast").memory.total == int(1.5 * (1 << 30))  # type: ignore[union-attr]
    lines = report.plan_lines(w.plan())
    assert "Memory: fast: estimate raised after an OOM kill: 1.0 -> 1.5 GiB." in lines
    w.clock.advance(60)
    w.apply()
    assert w.record("fast").memory_bytes == int(1.5 * (1 << 30))
    # Another launch (args changed): the raise was for the old one.
    changed = tiers_yaml(tier("fast", 8001, args="{max-tokens: 64}"))
    w.write(changed.replace("spec:\n", "spec:\n  memory: {budget: 8GiB}\n"))
    assert w.desired().get("fast").memory.total == 1 << 30  # type: ignore[union-attr]


def test_a_damaged_raise_file_is_ignored(tmp_path: Path) -> None:
    path = observed_memory.path_in(tmp_path)
    good = {"spec_hash": "h", "before": 10, "bytes": 15, "at": 1.0, "why": "oom-killed"}
    bad = [
        {**good, "bytes": -1},
        {**good, "bytes": float("nan")},
        {**good, "before": 20},  # not a raise
        {**good, "spec_hash": "x" * 1000},
        "not an object",
    ]
    tiers = {"ok": good, **{f"bad{i}": b for i, b in enumerate(bad)}}
    path.write_text(json.dumps({"v": 1, "tiers": tiers}))
    assert list(observed_memory.read_raised(path)) == ["ok"]
    for text in ("[1]", "{", '{"tiers": 3}', "\x00" * 10):
        path.write_text(text)
        assert observed_memory.read_raised(path) == {}
