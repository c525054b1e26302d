"""The controller's wake-up sources, each on its own, and the loop's list of them."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlxctl.apply.events import read_events
from mlxctl.desired.state import DesiredState
from mlxctl.plan.actions import PlanOptions
from mlxctl.reconcile.controller import Controller
from mlxctl.reconcile.passes import PassResult
from mlxctl.reconcile.triggers import ProcessExits, StackFiles, Wake, controller_triggers
from tests.unit.world import World, tier, tiers_yaml

WAIT = 5.0


def running(w: World) -> int:
    w.write(tiers_yaml(tier("fast", 8001)))
    assert w.apply().converged
    return w.record("fast").pid


def test_a_crashed_server_wakes_the_loop_once_and_is_one_event(tmp_path: Path) -> None:
    w = World(tmp_path)
    pid = running(w)
    reasons: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    poller = threading.Thread(
        target=ProcessExits(w.ctx, interval=0.01).run, args=(reasons.put, stop), daemon=True
    )
    poller.start()
    w.procs.crash(pid, code=-9)
    try:
        assert reasons.get(timeout=WAIT) == "fast exited"
        stop.wait(0.1)  # many more polls: the same death is not said again
        assert reasons.empty()
    finally:
        stop.set()
        poller.join(WAIT)
    assert not poller.is_alive()
    exits = [e for e in read_events(w.ctx.paths.events) if e.kind == "exit"]
    assert [(e.target, e.cause, e.result) for e in exits] == [
        ("fast", f"pid {pid} exited with code -9", "noticed")
    ]


def test_a_stop_under_way_is_polled_faster_and_its_end_wakes_the_loop(tmp_path: Path) -> None:
    """A swap of on-demand tiers starts the next one once the last one is gone: while a
    stop is under way the poll runs at ``stopping_interval``, not ``interval``."""
    w = World(tmp_path)
    pid = running(w)
    record = w.record("fast")
    w.ctx.inventory.put(replace(record, stop_requested_at=w.clock.time(), stop_cause="idle"))
    polls = 0
    remaining = w.procs.remaining

    def counted(ident: Any) -> int:
        nonlocal polls
        polls += 1
        return remaining(ident)

    w.procs.remaining = counted  # type: ignore[method-assign]
    reasons: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    exits = ProcessExits(w.ctx, interval=1.0, stopping_interval=0.001)
    poller = threading.Thread(target=exits.run, args=(reasons.put, stop), daemon=True)
    poller.start()
    try:
        # 20 polls: ~1 s at the stopping interval (after the first full one), 20 s if not.
        deadline = time.monotonic() + WAIT
        while polls < 20:
            assert time.monotonic() < deadline, polls
            stop.wait(0.01)
        assert reasons.empty()
        w.procs.procs[pid].alive = False
        assert reasons.get(timeout=WAIT) == "fast stopped"
    finally:
        stop.set()
        poller.join(WAIT)


def test_the_files_are_watched_only_by_a_controller_that_watches(tmp_path: Path) -> None:
    w = World(tmp_path)
    watching = controller_triggers(w.ctx, [w.stacks], poll_interval=0.25, watch=True)
    once = controller_triggers(w.ctx, [], poll_interval=0.25, watch=False)
    assert [type(t) for t in watching] == [ProcessExits, StackFiles]
    assert [type(t) for t in once] == [ProcessExits]


class Demand:
    """A new kind of trigger, as a later one (the gateway's demand) would be added."""

    name = "test-demand"

    def __init__(self) -> None:
        self.go = threading.Event()

    def run(self, wake: Wake, stop: threading.Event) -> None:
        self.go.wait(WAIT)
        wake("demand: fast")


def test_a_trigger_is_one_entry_in_the_controllers_list(tmp_path: Path) -> None:
    w = World(tmp_path)
    demand = Demand()
    ctl = Controller(
        w.ctx,
        [],
        PlanOptions(allow_empty=True),
        watch=False,
        desired=lambda: DesiredState(tiers=(), gateway=None),
        triggers=[demand],
    )
    reasons: list[str] = []
    real_pass = ctl.run_pass

    def recording(reason: str) -> PassResult | None:
        reasons.append(reason)
        demand.go.set()  # the first pass ran: now the trigger fires
        return real_pass(reason)

    ctl.run_pass = recording  # type: ignore[method-assign]
    # The fake clock never moves: no resync, no deadline; only a trigger runs a pass.
    ctl.run(until=lambda c, _result: c.passes >= 2)
    assert reasons == ["start", "demand: fast"]
