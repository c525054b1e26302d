"""The controller against servers that hang or never become ready, with real processes.

mlx-stack's watchdog restarts only servers that exited, never hung ones; llama-swap
checks health only at start. Here a frozen server is found by its failing liveness
probes and replaced, and a server that can never become ready is retried on the
crash-loop backoff schedule, which ``status`` shows.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from tests.integration.conftest import (
    Mlxctl,
    events,
    free_ports,
    pid_alive,
    ready_pid,
    stack_yaml,
    wait_for,
)


def control(ctl: Mlxctl, name: str, model: Path, *, interval: int, log: Path) -> None:
    """Write a one-tier stack and start the controller on it, resyncing every ``interval`` s."""
    [port] = free_ports(1)
    spec = {"name": name, "runtime": "mlx-lm", "model": {"path": str(model)}, "port": port}
    ctl.write("stack.yaml", stack_yaml([spec]))
    ctl.start("reconcile", str(ctl.stacks), "--interval", str(interval), log=log)


@pytest.fixture
def broken_model(tmp_path: Path) -> Path:
    """A model mlx_lm.server cannot load: it keeps running and answers 404 to completions."""
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    return model


def start_attempts(ctl: Mlxctl, name: str) -> list[dict[str, object]]:
    """The start events of ``name`` that launched a process, oldest first."""
    return [e for e in events(ctl) if e["target"] == name and e["result"] == "started"]


def failures(ctl: Mlxctl, name: str) -> list[dict[str, object]]:
    return [e for e in events(ctl) if e["target"] == name and e["result"] == "failed"]


def test_a_hung_server_is_replaced_after_its_liveness_probes_fail(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    # Resync (and so probe liveness) every second.
    control(mlxctl, "fast", tiny_model, interval=1, log=tmp_path / "ctl.log")
    hung = wait_for(lambda: ready_pid(mlxctl), 120, "the tier to be ready")

    os.kill(hung, signal.SIGSTOP)  # alive, listening, answering nothing
    healed = wait_for(lambda: ready_pid(mlxctl, other_than=hung), 120, "a replacement")
    assert not pid_alive(hung)
    crash = next(e for e in events(mlxctl) if e["kind"] == "crash")
    assert str(crash["cause"]).startswith("liveness failed 3 times")
    # It ended on SIGTERM once continued, not by SIGKILL after the grace period.
    assert not [e for e in events(mlxctl) if e["kind"] == "kill"]
    assert mlxctl.tier("fast")["pid"] == healed and mlxctl.tier("fast")["restarts"] == 1


def test_a_tier_that_never_becomes_ready_is_shown_crash_looping(
    mlxctl: Mlxctl, broken_model: Path, tmp_path: Path
) -> None:
    # A resync an hour away: every retry below comes from the backoff schedule.
    control(mlxctl, "broken", broken_model, interval=3600, log=tmp_path / "ctl.log")

    wait_for(
        lambda: mlxctl.tier("broken")["health"] == "crash-looping", 120, "crash-looping status"
    )
    status = mlxctl.tier("broken")
    assert "cannot become ready" in str(status["last_error"])
    assert status["pid"] is None and status["sync"] == "OutOfSync"
    assert 0 < status["restart_in"] <= 10
    # The first failure was retried at once; the second waits 10 s.
    assert len(start_attempts(mlxctl, "broken")) == 2
    record = mlxctl.inventory()["broken"]
    assert record["consecutive_crashes"] == 2
    assert record["not_before"] - record["died_at"] == pytest.approx(10.0, abs=0.1)


@pytest.mark.slow
def test_crash_loop_backoff_doubles_between_real_attempts(
    mlxctl: Mlxctl, broken_model: Path, tmp_path: Path
) -> None:
    control(mlxctl, "broken", broken_model, interval=3600, log=tmp_path / "ctl.log")
    wait_for(lambda: len(failures(mlxctl, "broken")) >= 4, 240, "four failed starts")

    starts = [float(e["ts"]) for e in start_attempts(mlxctl, "broken")]  # type: ignore[arg-type]
    failed = [float(e["ts"]) for e in failures(mlxctl, "broken")]  # type: ignore[arg-type]
    # From each failure to the next launch: at once, then 10 s, then 20 s (crash #1, #2, #3).
    gaps = [starts[i + 1] - failed[i] for i in range(3)]
    for gap, backoff in zip(gaps, (0.0, 10.0, 20.0), strict=True):
        # Never early; late only by one pass (reading the files, probing, spawning).
        assert backoff <= gap < backoff + 5, gaps
