"""Decision tables for on-demand tiers: load on demand, unload when idle, evict to make
room, drain before stopping, never an always tier, never a request in flight, and the
thrash guard (``minResidency``). Pure: the planner and ``make_room`` with plain values."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mlxctl.capacity.memory import MemoryEstimate, check_budget
from mlxctl.desired.state import DesiredService, DesiredState
from mlxctl.observe.state import ObservedService, ObservedState, TierDemand
from mlxctl.plan.actions import Plan, PlanOptions
from mlxctl.plan.eviction import Resident, make_room
from mlxctl.plan.planner import plan
from mlxctl.plan.verdicts import verdicts
from mlxctl.reconcile.passes import is_converged
from tests.unit.test_planner_jobs import GIB, NOW, record, seen, service


def est(gib: float) -> MemoryEstimate:
    n = int(gib * GIB)
    return MemoryEstimate(weights=n, kv_cache=0, overhead=0, total=n)


def tier(name: str, *, gib: float = 4, idle: float | None = 300, load: str = "on-demand") -> Any:
    return service(name, memory=est(gib), load=load, idle_timeout=idle)


def loaded(name: str, *, gib: float = 4, ready: float = 100, **changes: Any) -> ObservedService:
    """A ready tier that became ready ``ready`` seconds ago."""
    rec = record(
        name,
        spec_hash=f"v1:{name}1",
        started_at=NOW - ready - 2,
        ready_at=NOW - ready,
        memory_bytes=int(gib * GIB),
        **changes,
    )
    return seen(rec, health="ready")


def decide(
    observed: list[ObservedService],
    desired: list[DesiredService],
    *,
    demand: dict[str, TierDemand] | None = None,
    budget: float | None = None,
    reported: bool = True,
    min_residency: float = 15.0,
) -> tuple[Plan, DesiredState, ObservedState]:
    state = ObservedState(
        now=NOW,
        services={s.record.name: s for s in observed},
        demand=demand or {},
        demand_reported=reported,
    )
    wanted = DesiredState(
        tiers=tuple(desired),
        gateway=None,
        budget_bytes=None if budget is None else int(budget * GIB),
        min_residency=min_residency,
    )
    return plan(wanted, state, PlanOptions(allow_empty=True)), wanted, state


def rows(the_plan: Plan) -> list[tuple[str, str, str]]:
    return [(a.kind, a.target, a.reason) for a in the_plan.actions]


# -- loading and unloading one tier ---------------------------------------------------

IDLE = TierDemand(last_end=NOW - 60)
WAITING = TierDemand(waiting=2, waiting_since=NOW - 1)


@pytest.mark.parametrize(
    ("observed", "demand", "expected"),
    [
        # cold, nothing asks: not loaded (settled)
        ([], {}, [("wait", "a", "on-demand")]),
        # cold, two requests held: started once
        ([], {"a": WAITING}, [("start", "a", "")]),
        # cold, `mlxctl load`: started
        ([], {"a": TierDemand(load_requested_at=NOW - 1)}, [("start", "a", "")]),
        # loaded, idle 60 s of 300: an idle wait until it unloads
        ([loaded("a")], {"a": IDLE}, [("wait", "a", "idle")]),
        # loaded, idle past the timeout, the gateway holds its new requests: stopped
        (
            [loaded("a", ready=1000)],
            {"a": replace(IDLE, last_end=NOW - 400, held_back=True)},
            [("stop", "a", "")],
        ),
        # idle past the timeout, the gateway not told yet: drained first
        (
            [loaded("a", ready=1000)],
            {"a": TierDemand(last_end=NOW - 400)},
            [("wait", "a", "draining")],
        ),
        # idle past the timeout but a stream still runs: never cut
        ([loaded("a", ready=1000)], {"a": TierDemand(in_flight=1, last_end=NOW - 400)}, []),
        # `mlxctl unload` with a request in flight: drained, not stopped
        (
            [loaded("a")],
            {"a": TierDemand(in_flight=1, unload_requested_at=NOW - 1)},
            [("wait", "a", "draining")],
        ),
        # stopped after an unload, nothing asks: its record is forgotten
        (
            [
                seen(
                    record("a", stop_requested_at=NOW - 1, stop_cause="scaled to zero"), alive=False
                )
            ],
            {},
            [("forget", "a", ""), ("wait", "a", "on-demand")],
        ),
        # stopped after an eviction while a request now waits for it: started again
        (
            [seen(record("a", stop_requested_at=NOW - 1, stop_cause="evicted"), alive=False)],
            {"a": WAITING},
            [("start", "a", "")],
        ),
        # exited while idle: forgotten, not healed (the next request loads it)
        (
            [seen(record("a", ready_at=NOW - 50), alive=False, exit_code=1)],
            {},
            [("forget", "a", ""), ("wait", "a", "on-demand")],
        ),
    ],
)
def test_one_on_demand_tier(
    observed: list[ObservedService], demand: dict[str, TierDemand], expected: list[Any]
) -> None:
    the_plan, _, _ = decide(observed, [tier("a")], demand=demand)
    assert rows(the_plan) == expected


def test_the_idle_time_counts_from_the_last_request_end_never_its_start() -> None:
    """Ready 1000 s ago, a stream that ended 10 s ago: idle 10 s, unloads in 290 s."""
    the_plan, _, _ = decide(
        [loaded("a", ready=1000)], [tier("a")], demand={"a": TierDemand(last_end=NOW - 10)}
    )
    [wait] = the_plan.actions
    assert wait.reason == "idle" and wait.not_before == NOW + 290
    assert wait.cause == "idle 10s, unloads in 5m"


def test_with_no_gateway_reporting_an_idle_tier_is_stopped_at_once() -> None:
    """``reconcile --once`` or no gateway: nothing can be on its way to the tier."""
    the_plan, _, _ = decide([loaded("a", ready=1000)], [tier("a")], demand={}, reported=False)
    assert rows(the_plan) == [("stop", "a", "")]
    assert the_plan.actions[0].cause == "scaled to zero: idle 17m"


def test_idle_timeout_never_keeps_it_loaded() -> None:
    the_plan, _, _ = decide([loaded("a", ready=10**6)], [tier("a", idle=None)])
    assert rows(the_plan) == []


def test_an_unload_of_an_always_tier_stops_it_and_says_it_comes_back() -> None:
    asked = TierDemand(unload_requested_at=NOW - 1)
    the_plan, _, _ = decide([loaded("a")], [tier("a", load="always")], demand={"a": asked})
    assert rows(the_plan) == [("wait", "a", "draining")]  # the gateway holds its requests first
    held = replace(asked, held_back=True)
    the_plan, _, _ = decide([loaded("a")], [tier("a", load="always")], demand={"a": held})
    [stop] = the_plan.actions
    assert stop.kind == "stop" and "an always tier: started again next" in stop.cause
    # Once gone, the always tier starts again (the unload is older than nothing now).
    gone = seen(record("a", stop_requested_at=NOW - 1, stop_cause=stop.cause), alive=False)
    again, _, _ = decide(
        [gone], [tier("a", load="always")], demand={"a": TierDemand(unload_requested_at=NOW - 1)}
    )
    assert rows(again) == [("start", "a", "")]


def test_a_scaled_to_zero_tier_is_converged() -> None:
    the_plan, desired, observed = decide([], [tier("a")])
    assert is_converged(desired, observed, the_plan)
    held, desired, observed = decide([], [tier("a")], demand={"a": WAITING})
    assert not is_converged(desired, observed, held)


def test_an_idle_loaded_tier_is_converged() -> None:
    the_plan, desired, observed = decide([loaded("a")], [tier("a")], demand={"a": IDLE})
    assert is_converged(desired, observed, the_plan)


# -- a planned restart drains first ----------------------------------------------------


@pytest.mark.parametrize(
    ("demand", "reported", "expected"),
    [
        # no gateway reporting: nothing can be on its way
        (TierDemand(), False, "restart"),
        # the gateway not told yet: it is told to hold the tier's new requests
        (TierDemand(), True, "draining"),
        # held, nothing in flight: the restart goes
        (TierDemand(held_back=True, held_back_since=NOW - 1), True, "restart"),
        # held, two streams running for 3 s of the 10 s grace: they finish first
        (TierDemand(held_back=True, held_back_since=NOW - 3, in_flight=2), True, "draining"),
        # held for the whole grace: the restart goes anyway
        (TierDemand(held_back=True, held_back_since=NOW - 10, in_flight=2), True, "restart"),
    ],
)
def test_a_planned_restart_waits_for_the_requests_in_flight(
    demand: TierDemand, reported: bool, expected: str
) -> None:
    changed = replace(tier("a", load="always"), spec_hash="v1:a2", launch={"args": {"a": 2}})
    the_plan, desired, observed = decide(
        [loaded("a")], [changed], demand={"a": demand}, reported=reported
    )
    [action] = the_plan.actions
    assert (action.reason or action.kind) == expected
    if expected == "draining":
        assert verdicts(desired, observed, the_plan)["a"].state == "draining"
        assert action.cause.startswith("restart (args changed")


# -- eviction ----------------------------------------------------------------------------


def test_the_least_recently_used_idle_tier_is_evicted_for_a_waiting_one() -> None:
    """Budget 10 GiB: a and b (4 GiB each) loaded, c (4 GiB) asked for. b was used last
    60 s ago, a 200 s ago: a goes (drained first: the gateway must hold its requests)."""
    observed = [loaded("a", ready=500), loaded("b", ready=500)]
    demand = {
        "a": TierDemand(last_end=NOW - 200),
        "b": TierDemand(last_end=NOW - 60),
        "c": WAITING,
    }
    the_plan, _, _ = decide(observed, [tier("a"), tier("b"), tier("c")], demand=demand, budget=10)
    assert ("wait", "a", "draining") in rows(the_plan)
    assert ("wait", "b", "idle") in rows(the_plan)
    [wait_c] = the_plan.for_target("c")
    assert wait_c.reason == "memory" and "making room: a" in wait_c.cause
    drained = {**demand, "a": replace(demand["a"], held_back=True)}
    the_plan, _, _ = decide(observed, [tier("a"), tier("b"), tier("c")], demand=drained, budget=10)
    [stop] = the_plan.for_target("a")
    assert stop.kind == "stop"
    assert stop.cause == "evicted for c: least recently used, idle 3m"


def test_an_always_tier_is_never_evicted() -> None:
    """big (always, loaded for hours) and a (just loaded) hold the memory c needs: big is
    never a candidate, a only once its residency ends."""
    observed = [loaded("big", gib=6, ready=10**4), loaded("a", gib=4, ready=5)]
    the_plan, _, _ = decide(
        observed,
        [tier("big", gib=6, load="always"), tier("a"), tier("c")],
        demand={"c": WAITING},
        budget=10,
    )
    [wait] = the_plan.for_target("c")
    assert wait.reason == "memory" and "big 6.0 GiB (always)" in wait.cause
    assert not any(a.kind == "stop" or a.reason == "draining" for a in the_plan.actions)


def test_a_busy_tier_is_drained_never_stopped_and_the_waiting_request_waits() -> None:
    observed = [loaded("a", ready=500)]
    demand = {"a": TierDemand(in_flight=2, held_back=True), "c": WAITING}
    the_plan, _, _ = decide(
        observed, [tier("a", gib=8), tier("c", gib=8)], demand=demand, budget=10
    )
    assert rows(the_plan) == [("wait", "a", "draining"), ("wait", "c", "memory")]
    assert not any(a.kind == "stop" for a in the_plan.actions)


def test_a_tier_inside_its_residency_stays_and_the_wait_says_until_when() -> None:
    """Thrash guard: loaded 5 s ago, the other tier waits until 15 s have passed."""
    observed = [loaded("a", gib=8, ready=5)]
    the_plan, _, _ = decide(
        observed, [tier("a", gib=8), tier("c", gib=8)], demand={"c": WAITING}, budget=10
    )
    [wait] = the_plan.for_target("c")
    assert wait.reason == "memory" and wait.not_before == NOW + 10
    assert "stays 10s more (minResidency)" in wait.cause
    assert ("wait", "a", "idle") in rows(the_plan)


def test_nothing_is_evicted_when_evicting_everything_would_not_be_enough() -> None:
    observed = [loaded("a", gib=2, ready=500), loaded("big", gib=7, ready=500)]
    the_plan, _, _ = decide(
        observed,
        [tier("a", gib=2), tier("big", gib=7, load="always"), tier("c", gib=4)],
        demand={"c": WAITING},
        budget=10,
    )
    assert not any(a.reason == "draining" or a.kind == "stop" for a in the_plan.actions)


def test_memory_still_held_by_a_stopping_tier_counts_until_it_is_gone() -> None:
    stopping = seen(
        record("a", stop_requested_at=NOW - 1, memory_bytes=8 * GIB, ready_at=NOW - 100)
    )
    the_plan, _, _ = decide(
        [stopping], [tier("a", gib=8), tier("c", gib=8)], demand={"c": WAITING}, budget=10
    )
    assert ("wait", "c", "memory") in rows(the_plan)
    assert not any(a.kind == "start" for a in the_plan.actions)


@pytest.mark.parametrize(
    ("residents", "need", "expected"),
    [
        # fits: nothing to do
        ([Resident("a", 4, True, 0, 0, 0)], 6, (True, (), ())),
        # idle ones, least recently used first, only as many as needed
        (
            [Resident("a", 4, True, 0, 50, 0), Resident("b", 4, True, 0, 10, 0)],
            4,
            (False, ("b",), ()),
        ),
        # an idle one before a busy one, even a more recently used idle one
        (
            [Resident("a", 4, True, 3, 5, 0), Resident("b", 4, True, 0, 90, 0)],
            4,
            (False, ("b",), ()),
        ),
        # only a busy one would do: drained
        ([Resident("a", 8, True, 1, 5, 0)], 4, (False, (), ("a",))),
        # an always tier, or one not resident long enough: never
        ([Resident("a", 8, False, 0, 5, 0)], 4, (False, (), ())),
        ([Resident("a", 8, True, 0, 5, 95)], 4, (False, (), ())),
    ],
)
def test_make_room(
    residents: list[Resident], need: int, expected: tuple[bool, tuple[str, ...], tuple[str, ...]]
) -> None:
    room = make_room(need, 10, residents, now=100.0, min_residency=15.0)
    assert (room.fits_now, room.evict, room.drain) == expected


# -- admission and verdicts -----------------------------------------------------------


def test_admission_counts_the_always_tiers_and_the_largest_on_demand_one() -> None:
    always = [("chat", est(4))]
    on_demand = [("coder", est(8)), ("long", est(12)), ("tiny", est(1))]
    fits = check_budget(always, 16 * GIB, on_demand=on_demand)
    assert fits.fits and fits.total == 16 * GIB
    assert "largest of 3 on-demand tier(s) ('long')" in fits.message
    over = check_budget(always, 15 * GIB, on_demand=on_demand)
    assert not over.fits
    assert "long" in over.message and "(on-demand, the largest)" in over.message
    assert "16.0 GiB > budget 15.0 GiB" in over.message


def test_a_stack_whose_largest_on_demand_tier_cannot_fit_is_refused() -> None:
    the_plan, _, _ = decide([], [tier("a", gib=4, load="always"), tier("b", gib=8)], budget=10)
    assert the_plan.refused is not None and the_plan.refusal == "budget"


@pytest.mark.parametrize(
    ("observed", "demand", "state"),
    [
        ([], {}, "cold"),
        ([], {"a": WAITING}, "loading"),
        ([loaded("a")], {"a": IDLE}, "ready"),
        ([loaded("a", ready=1000)], {"a": TierDemand(last_end=NOW - 400)}, "draining"),
        (
            [
                seen(
                    record("a", died_at=NOW - 1, not_before=NOW + 20, consecutive_crashes=2),
                    alive=False,
                )
            ],
            {"a": WAITING},
            "unavailable",
        ),
    ],
)
def test_verdicts(
    observed: list[ObservedService], demand: dict[str, TierDemand], state: str
) -> None:
    the_plan, desired, seen_state = decide(observed, [tier("a")], demand=demand)
    verdict = verdicts(desired, seen_state, the_plan)["a"]
    assert verdict.state == state, (verdict, rows(the_plan))
    if state == "unavailable":
        assert verdict.retry_after == 20 and "backoff" in verdict.detail
