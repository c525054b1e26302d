"""An on-demand tier's life through whole passes (fake processes, fake clock): the stack
file's ``load`` and ``idleTimeout``, the gateway's reports through the demand book, the
start, the idle time from the last request's end, the drain and the stop; and what
``status`` says at each step."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxctl.errors import SpecError
from mlxctl.reconcile.demand import DemandBook
from mlxctl.reconcile.passes import observe_state
from mlxctl.runtimes.gateway import DemandReport, TierLoad
from mlxctl.spec.schema import parse_duration
from mlxctl.status.report import status_text
from mlxctl.status.services import build_status
from tests.unit.world import World, tier, tiers_yaml

ON_DEMAND = "  load: on-demand\n  idleTimeout: 2m\n"


def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.ctx.demand = DemandBook(w.clock)
    w.write(tiers_yaml(tier("a", 8001) + ON_DEMAND, tier("b", 8002)))
    return w


def report(w: World, **tiers: TierLoad) -> None:
    assert w.ctx.demand is not None
    w.ctx.demand.report(DemandReport(gateway_pid=1, tiers=tiers))


def status_of(w: World, name: str) -> str:
    desired = w.desired()
    rows = build_status(desired, observe_state(w.ctx, desired))
    return next(line for line in status_text(rows).splitlines() if line.startswith(name))


def test_an_on_demand_tier_loads_for_a_request_and_unloads_when_idle(tmp_path: Path) -> None:
    w = world(tmp_path)
    w.step()
    assert "a" not in w.ctx.inventory.load() and w.record("b").spawned
    assert "unloaded" in status_of(w, "a") and "Synced" in status_of(w, "a")
    assert "on demand: not loaded" in status_of(w, "a")

    report(w, a=TierLoad(waiting=3, waiting_since=w.clock.time()))
    w.step()
    assert w.record("a").spawned
    w.clock.advance(1)
    w.step()  # ready
    assert w.record("a").ready_at is not None
    for _ in range(300):  # a 10-minute stream (the gateway reports every 2 s meanwhile)
        report(w, a=TierLoad(in_flight=1))
        w.clock.advance(2)
    report(w, a=TierLoad(in_flight=1))
    w.step()
    assert not w.record("a").stopping
    ended = w.clock.time()
    report(w, a=TierLoad(last_end=ended))
    w.clock.advance(60)
    report(w, a=TierLoad(last_end=ended))  # the gateway's heartbeat
    w.step()
    assert "idle 60s, unloads in 60s" in status_of(w, "a")
    w.clock.advance(61)
    report(w, a=TierLoad(last_end=ended))
    result = w.step()  # drained first: the gateway must hold new requests
    assert [a.reason for a in result.plan.for_target("a")] == ["draining"]
    report(w, a=TierLoad(last_end=ended, held_back=True))
    result = w.step()
    [stop] = result.plan.for_target("a")
    assert stop.kind == "stop" and stop.cause == "scaled to zero: idle 2m"
    for _ in range(3):
        w.clock.advance(1)
        w.step()
    assert "a" not in w.ctx.inventory.load()
    assert "unloaded" in status_of(w, "a")


def test_a_load_request_starts_it_and_counts_as_a_use(tmp_path: Path) -> None:
    w = world(tmp_path)
    assert w.ctx.demand is not None
    w.ctx.demand.request_load("a")
    w.step()
    w.clock.advance(1)
    w.step()
    rec = w.record("a")
    assert rec.ready_at is not None
    w.ctx.demand.loaded("a", rec.ready_at)
    assert w.ctx.demand.observed()["a"].load_requested_at is None
    w.step()
    assert not w.record("a").stopping  # loaded, idle from the load: unloads in 2 min


def test_a_gateway_report_that_goes_stale_counts_as_no_requests(tmp_path: Path) -> None:
    w = world(tmp_path)
    report(w, a=TierLoad(waiting=1))
    assert w.ctx.demand is not None and w.ctx.demand.observed()["a"].waiting == 1
    w.clock.advance(11)
    assert "a" not in w.ctx.demand.observed() and not w.ctx.demand.reported


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(300, 300.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5s", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "-1", True, "200h", "m"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_stack_defaults_and_auto_idle_timeout(tmp_path: Path) -> None:
    """``spec.defaults`` applies to the file's tiers; a tier's own setting wins; ``auto``
    follows the machine's memory (here 16 GB: 3 min)."""
    w = World(tmp_path)
    w.ctx.memory_bytes = lambda: 16 * 10**9
    text = tiers_yaml(tier("a", 8001), tier("b", 8002) + "  load: always\n")
    text = text.replace("spec:\n", "spec:\n  defaults: {load: on-demand}\n")
    w.write(text)
    desired = w.desired()
    a, b = desired.tiers
    assert (a.load, a.idle_timeout) == ("on-demand", 180.0)
    assert (b.load, b.idle_timeout) == ("always", None)


def test_an_unknown_load_policy_is_one_clear_error(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.write(tiers_yaml(tier("a", 8001) + "  load: lazy\n"))
    with pytest.raises(SpecError, match="load"):
        w.desired()


def test_validate_refuses_a_stack_whose_always_tiers_and_largest_on_demand_do_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two on-demand tiers and one always tier, each estimated 4 GiB: a budget of 9 GiB
    admits it (4 + the largest 4), 7 GiB does not, and the message names the numbers."""
    import mlxctl.desired.admission as admission
    from mlxctl.app import stacks
    from mlxctl.capacity.memory import MemoryEstimate
    from mlxctl.errors import AdmissionError

    gib4 = MemoryEstimate(weights=4 << 30, kv_cache=0, overhead=0, total=4 << 30)
    monkeypatch.setattr(admission, "_estimate", lambda service, tier: (gib4, ()))
    w = World(tmp_path)
    body = tiers_yaml(tier("a", 8001), tier("b", 8002) + ON_DEMAND, tier("c", 8003) + ON_DEMAND)
    w.write(body.replace("spec:\n", "spec:\n  memory: {budget: 9GiB}\n"))
    stacks.validate(stacks.load([w.stacks]), w.ctx)
    w.write(body.replace("spec:\n", "spec:\n  memory: {budget: 7GiB}\n"))
    with pytest.raises(AdmissionError, match=r"8.0 GiB > budget 7.0 GiB"):
        stacks.validate(stacks.load([w.stacks]), w.ctx)


def test_two_gateways_reporting_during_a_handover_add_up(tmp_path: Path) -> None:
    """The old gateway still streams (1 in flight) while the new one reports none: the
    tier is busy, not idle; once the old one stops reporting, its count goes stale."""
    w = world(tmp_path)
    book = w.ctx.demand
    assert book is not None
    book.report(DemandReport(gateway_pid=10, tiers={"a": TierLoad(in_flight=1)}))
    book.report(DemandReport(gateway_pid=11, tiers={"a": TierLoad(held_back=True)}))
    seen = book.observed()["a"]
    assert (seen.in_flight, seen.held_back) == (1, False)
    w.clock.advance(8)
    book.report(DemandReport(gateway_pid=11, tiers={"a": TierLoad(held_back=True)}))
    w.clock.advance(3)  # the old one's last report is 11 s old
    book.report(DemandReport(gateway_pid=11, tiers={"a": TierLoad(held_back=True)}))
    seen = book.observed()["a"]
    assert (seen.in_flight, seen.held_back) == (0, True)
