"""The health monitor: background probes trigger a pass when an answer changes the plan.

Real threads against a fake prober; the tests wait on events (with a bound), never
sleep, and set the poll intervals to zero so nothing waits on the wall clock.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from mlxctl.machine.record import Record
from mlxctl.reconcile.monitor import HealthMonitor, MonitorSettings
from mlxctl.testing.fakes import FakeProber

BOUND = 10.0  # seconds: only reached when the behaviour is broken


class Triggers:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, reason: str) -> None:
        with self._cond:
            self.reasons.append(reason)
            self._cond.notify_all()

    def wait_for(self, text: str) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(text in r for r in self.reasons), BOUND)


def record(port: int = 8001, **changes: object) -> Record:
    base = Record(
        name="fast", role="tier", pid=1, pgid=1, create_time=1.0, cmdline=("srv",),
        instance="i1", spec_hash="v1:x", port=port, log="/dev/null", started_at=0.0,
        launch={"runtime": "mlx-lm"},
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def monitor(prober: FakeProber, triggers: Triggers, **settings: float) -> HealthMonitor:
    cfg = MonitorSettings(ready_poll=0.0, live_interval=0.0, **settings)  # type: ignore[arg-type]
    return HealthMonitor(prober, triggers, cfg)


def test_a_starting_server_triggers_a_pass_the_moment_it_is_ready() -> None:
    prober, triggers = FakeProber(slow={8001: 5}), Triggers()
    mon = monitor(prober, triggers)
    try:
        mon.sample([record()])  # starts watching; returns what is known (maybe nothing yet)
        assert triggers.wait_for("fast ready")
        sample = mon.sample([record()])["fast"]
        assert sample.ok and sample.mode in ("ready", "live")
        assert [mode for _, mode in prober.calls[:6]] == ["ready"] * 6
    finally:
        mon.stop()


def test_a_server_that_can_never_be_ready_triggers_at_once() -> None:
    prober, triggers = FakeProber(fatal={8001: "404 model failed"}), Triggers()
    mon = monitor(prober, triggers)
    try:
        mon.sample([record()])
        assert triggers.wait_for("cannot become ready")
        assert mon.sample([record()])["fast"].fatal
    finally:
        mon.stop()


def test_liveness_failures_trigger_at_the_threshold() -> None:
    prober, triggers = FakeProber(failing={8001: "timed out"}), Triggers()
    mon = monitor(prober, triggers, threshold=3)
    try:
        mon.sample([record(ready_at=1.0)])
        assert triggers.wait_for("liveness failed 3 times")
        assert mon.sample([record(ready_at=1.0)])["fast"].failures >= 3
        assert {mode for _, mode in prober.calls} == {"live"}
    finally:
        mon.stop()


def test_a_new_instance_never_inherits_the_health_of_the_old_one() -> None:
    prober, triggers = FakeProber(), Triggers()
    mon = monitor(prober, triggers)
    try:
        mon.sample([record()])
        assert triggers.wait_for("fast ready")
        assert mon.sample([record()])["fast"].ok
        mon.sample([])  # replaced, stopping or exited: its watcher ends, its answer goes
        prober.failing[8001] = "loading"
        assert "fast" not in mon.sample([record(instance="i2")]) or not (
            mon.sample([record(instance="i2")])["fast"].ok
        )
    finally:
        mon.stop()


def test_a_watcher_that_is_no_longer_wanted_ends_without_sitting_out_its_wait() -> None:
    """The retries sleep on the watcher's stop event: dropping an instance (or stopping
    the monitor) ends a long liveness wait at once, and no probe follows it."""
    prober, triggers = FakeProber(), Triggers()
    settings = MonitorSettings(live_interval=3600.0, first_answer_wait=BOUND)
    mon = HealthMonitor(prober, triggers, settings)
    # Returns with the first liveness answer; then the hour's wait begins.
    assert mon.sample([record(ready_at=1.0)])["fast"].ok
    watcher = next(t for t in threading.enumerate() if t.name == "mlxctl-health-fast")
    mon.sample([])
    watcher.join(BOUND)
    assert not watcher.is_alive()
    assert [mode for _, mode in prober.calls] == ["live"]


def test_a_server_busy_past_its_liveness_budget_fails_liveness_whatever_its_health() -> None:
    """Issue 18 row 6: /health 200 and every completion "busy" for 31.7 min went unseen."""
    prober, triggers = FakeProber(busy={8001}), Triggers()
    mon = monitor(prober, triggers, threshold=3, busy_budget=0.0)
    try:
        mon.sample([record(ready_at=1.0)])
        assert triggers.wait_for("liveness failed 3 times")
        sample = mon.sample([record(ready_at=1.0)])["fast"]
        assert not sample.ok and "answered nobody" in sample.detail
    finally:
        mon.stop()


def test_a_server_busy_within_its_budget_is_live() -> None:
    prober, triggers = FakeProber(busy={8001}), Triggers()
    mon = monitor(prober, triggers, threshold=1, busy_budget=3600.0)
    try:
        mon.sample([record(ready_at=1.0)])
        deadline = threading.Event()
        deadline.wait(0.3)
        assert not any("liveness failed" in r for r in triggers.reasons)
        assert mon.sample([record(ready_at=1.0)])["fast"].ok
    finally:
        mon.stop()


def test_a_distributed_tier_s_rank_0_busy_past_the_group_s_budget_fails_liveness() -> None:
    """A hung rank leaves rank 0 answering /health 200 and no completion (MLX 0.32's ring,
    benchmarks/distributed_ring.py): the group's shorter budget applies to its rank 0."""
    prober, triggers = FakeProber(busy={8001}), Triggers()
    mon = monitor(prober, triggers, threshold=3, busy_budget=3600.0, group_busy_budget=0.0)
    rank0 = record(ready_at=1.0, launch={"runtime": "mlx-lm", "distributed": {"rank": 0}})
    try:
        mon.sample([rank0])
        assert triggers.wait_for("liveness failed 3 times")
        sample = mon.sample([rank0])["fast"]
        assert not sample.ok and "(liveness budget 0 s)" in sample.detail
    finally:
        mon.stop()
