"""The planner as a specification: each test is one rule of how mlxctl converges."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxctl.errors import SpecError
from mlxctl.sources.registry import DiskModelStore
from mlxctl.status import report
from tests.unit.world import World, tier, tiers_yaml


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def kinds(plan) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(a.kind, a.target) for a in plan.ordered()]


def converge(world: World, text: str) -> None:
    world.write(text)
    result = world.apply()
    assert result.converged, [o.message for o in result.outcomes]


def test_new_stack_starts_every_tier_and_the_gateway(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), tier("slow", 8002)))
    assert kinds(world.plan()) == [("start", "fast"), ("start", "slow"), ("start", "gateway")]


def test_converged_stack_plans_nothing(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001), tier("slow", 8002)))
    plan = world.plan()
    assert plan.actions == () and not plan.has_changes


def test_args_change_restarts_only_that_tier_with_cause(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001, args="{max-tokens: 512}"), tier("slow", 8002)))
    world.write(tiers_yaml(tier("fast", 8001, args="{max-tokens: 4096}"), tier("slow", 8002)))
    plan = world.plan()
    assert kinds(plan) == [("restart", "fast")]
    assert plan.actions[0].cause == "args changed: max-tokens 512 -> 4096"


def test_comment_key_order_and_whitespace_edits_plan_nothing(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001, args="{max-tokens: 512, temp: 0.5}")))
    world.write(
        "# my laptop stack\napiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: test}\nspec:\n"
        "  tiers:\n    - port: 8001   # pinned\n      args: {temp: 0.5,   max-tokens: 512}\n"
        "      model: {path: /models/tiny}\n      runtime: mlx-lm\n      name: fast\n"
        "  gateway:\n    port: 4000\n"
    )
    assert world.plan().actions == ()


def test_edit_to_another_file_restarts_nothing_here(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)), "a.yaml")
    world.write(tiers_yaml(tier("slow", 8002), gateway="{port: 4000}"), "b.yaml")
    assert world.apply().converged
    world.write(
        tiers_yaml(tier("slow", 8002, args="{max-tokens: 9}"), gateway="{port: 4000}"), "b.yaml"
    )
    assert kinds(world.plan()) == [("restart", "slow")]


def test_removed_tier_is_stopped_and_gateway_routes_change(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001), tier("slow", 8002)))
    world.write(tiers_yaml(tier("fast", 8001)))
    plan = world.plan()
    # The gateway reloads its routes file in place: no restart, no gap for "fast".
    assert kinds(plan) == [("stop", "slow"), ("reconfigure", "gateway")]
    assert plan.for_target("slow")[0].cause == "removed from the stack"
    assert plan.for_target("gateway")[0].cause == "routes changed: - slow"


def test_tier_restart_does_not_restart_the_gateway(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001, args="{a: 1}")))
    world.write(tiers_yaml(tier("fast", 8001, args="{a: 2}")))
    assert kinds(world.plan()) == [("restart", "fast")]


def test_port_change_restarts_the_tier_and_reroutes_the_gateway(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001)))
    world.write(tiers_yaml(tier("fast", 8005)))
    plan = world.plan()
    assert kinds(plan) == [("reconfigure", "gateway"), ("restart", "fast")]
    assert plan.for_target("fast")[0].cause == "port changed: 8001 -> 8005"


def test_port_clash_across_files_is_an_error_naming_both(world: World) -> None:
    a = world.write(tiers_yaml(tier("fast", 8001)), "a.yaml")
    b = world.write(tiers_yaml(tier("slow", 8001)), "b.yaml")
    with pytest.raises(SpecError) as err:
        world.desired()
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_duplicate_tier_name_across_files_is_an_error_naming_both(world: World) -> None:
    a = world.write(tiers_yaml(tier("fast", 8001)), "a.yaml")
    b = world.write(tiers_yaml(tier("fast", 8002)), "b.yaml")
    with pytest.raises(SpecError) as err:
        world.desired()
    assert f"{b}:" in str(err.value) and f"{a}:" in str(err.value)


def test_tier_port_clashing_with_gateway_is_an_error(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 4000)))
    with pytest.raises(SpecError, match="gateway port 4000"):
        world.desired()


def test_unpinned_ports_are_assigned_once_and_kept(world: World) -> None:
    world.write(
        tiers_yaml(
            "- {name: a, runtime: mlx-lm, model: {path: /m}}",
            "- {name: b, runtime: mlx-lm, model: {path: /m}}",
        )
    )
    converge(world, (world.stacks / "stack.yaml").read_text())
    assert (world.record("a").port, world.record("b").port) == (8001, 8002)
    # Adding a tier before them in the file keeps their ports.
    world.write(
        tiers_yaml(
            "- {name: z, runtime: mlx-lm, model: {path: /m}}",
            "- {name: a, runtime: mlx-lm, model: {path: /m}}",
            "- {name: b, runtime: mlx-lm, model: {path: /m}}",
        )
    )
    plan = world.plan()
    assert ("start", "z") in kinds(plan) and ("restart", "a") not in kinds(plan)
    assert world.desired().ports == {"z": 8003, "a": 8001, "b": 8002}


def test_a_foreign_pid_is_never_signalled(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001)))
    pid = world.record("fast").pid
    world.procs.reuse_pid(pid)
    world.write(tiers_yaml(tier("slow", 8002)))
    result = world.apply()
    assert pid not in world.procs.signalled
    assert ("forget", "fast") in kinds(result.first.plan)


def test_crash_is_restarted_at_once_then_backs_off(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001)))
    world.procs.crash(world.record("fast").pid)
    plan = world.plan()
    assert kinds(plan) == [("crash", "fast"), ("start", "fast")]
    assert world.apply().converged
    world.clock.advance(5)
    world.procs.crash(world.record("fast").pid)
    plan = world.plan()
    assert kinds(plan) == [("crash", "fast"), ("wait", "fast")]
    assert "restart in 10s (crash #2)" in plan.for_target("fast")[1].cause


def test_backoff_doubles_to_the_cap_and_resets_after_stable_running(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001)))
    waits = []
    for _ in range(7):
        world.procs.crash(world.record("fast").pid)
        crash = world.plan().for_target("fast")[0]
        waits.append(round(crash.not_before - world.clock.now))
        world.apply()
        world.clock.now = crash.not_before
        assert world.apply().converged
    assert waits == [0, 10, 20, 40, 80, 160, 300]
    assert world.record("fast").consecutive_crashes == 7
    world.clock.advance(601)
    world.procs.crash(world.record("fast").pid)
    assert kinds(world.plan()) == [("crash", "fast"), ("start", "fast")]


def test_config_change_during_backoff_is_tried_at_once(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001)))
    for _ in range(3):
        world.procs.crash(world.record("fast").pid)
        world.apply()
        world.clock.now = world.record("fast").not_before or world.clock.now
    world.procs.crash(world.record("fast").pid)
    world.apply()
    assert world.record("fast").not_before > world.clock.now
    world.write(tiers_yaml(tier("fast", 8001, args="{max-tokens: 1}")))
    assert kinds(world.plan())[0] == ("start", "fast")


def test_starting_service_is_waited_for_not_restarted(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    world.prober.failing[8001] = "loading"
    result = world.apply(startup_timeout=1.0)
    assert not result.converged and result.exit_code == 5
    assert world.record("fast").last_error.startswith("not ready before the startup timeout")


def test_empty_desired_state_stops_nothing_without_allow_empty(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001)))
    (world.stacks / "stack.yaml").unlink()
    plan = world.plan()
    assert plan.refused and "--allow-empty" in plan.refused and plan.actions == ()
    assert kinds(world.plan(allow_empty=True)) == [("stop", "fast"), ("stop", "gateway")]


def test_an_empty_file_is_never_applied(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001)))
    (world.stacks / "stack.yaml").write_text("")
    plan = world.plan()
    assert plan.refused and "is empty" in plan.refused


def test_missing_model_blocks_only_that_tier(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), tier("broken", 8002, model="/models/missing")))
    plan = world.plan()
    assert "broken" in plan.blocked and ("start", "fast") in kinds(plan)
    assert ("start", "broken") not in kinds(plan)


def test_a_catalog_model_not_pulled_yet_is_prepared_then_started(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    world.ctx.model_resolver = None  # the real resolver: catalog id -> repo -> lock file
    world.ctx.memory_bytes = lambda: 64 * 1024**3  # admission must not depend on this machine
    world.write(
        tiers_yaml(
            "- {name: agent, runtime: vllm-mlx, model: qwen3-8b, quant: 4bit, port: 8001}",
            gateway="{enabled: false}",
        )
    )
    world.store = world.ctx.store = DiskModelStore(tmp_path / "models")
    the_plan = world.plan()
    # mlxctl pulls it itself (a job); the start follows once the job has ended.
    assert the_plan.blocked == {}
    assert kinds(the_plan) == [("prepare", "agent")]
    assert "mlx-community/Qwen3-8B-4bit" in the_plan.for_target("agent")[0].cause


def test_stops_run_before_starts(world: World) -> None:
    converge(world, tiers_yaml(tier("old", 8001)))
    world.write(tiers_yaml(tier("new", 8002)))
    order = [a.kind for a in world.plan().ordered()]
    assert order.index("stop") < order.index("start")


def test_hung_server_is_restarted_after_liveness_threshold(world: World) -> None:
    converge(world, tiers_yaml(tier("fast", 8001)))
    world.prober.failing[8001] = "timed out"
    from mlxctl.plan.planner import plan
    from mlxctl.reconcile.passes import observe_state

    desired = world.desired()
    for _ in range(2):
        observed = observe_state(world.ctx, desired)
        assert plan(desired, observed).actions == ()
    observed = observe_state(world.ctx, desired)
    actions = plan(desired, observed).actions
    assert (actions[0].kind, actions[0].stop_process) == ("crash", True)
    assert "liveness failed 3 times" in actions[0].cause


def test_secret_values_never_reach_the_record_or_events(world: World) -> None:
    world.environ["HF_TOKEN"] = "hf_supersecret"
    world.write(tiers_yaml(tier("fast", 8001) + "  env: {HF_TOKEN: '${env:HF_TOKEN}'}\n"))
    assert world.apply().converged
    state = world.ctx.paths.state
    for path in state.rglob("*"):
        if path.is_file():
            assert "hf_supersecret" not in path.read_text(errors="ignore"), path
    spawned = world.procs.running()[0]
    assert spawned.env["HF_TOKEN"] == "hf_supersecret"


def test_rotating_a_secret_restarts_what_uses_it(world: World) -> None:
    world.environ["HF_TOKEN"] = "one"
    converge(world, tiers_yaml(tier("fast", 8001) + "  env: {HF_TOKEN: '${env:HF_TOKEN}'}\n"))
    world.environ["HF_TOKEN"] = "two"
    plan = world.plan()
    assert kinds(plan) == [("restart", "fast")]
    assert "secret" in plan.actions[0].cause


def test_a_stack_over_the_memory_budget_is_refused_before_anything_starts(world: World) -> None:
    from mlxctl.capacity.memory import GIB, MemoryEstimate

    converge(world, tiers_yaml(tier("small", 8001)))
    world.write(tiers_yaml(tier("small", 8001), tier("big", 8002), tier("huge", 8003)))
    sizes = {"small": 2, "big": 8, "huge": 12}

    def estimated(desired):  # type: ignore[no-untyped-def]
        import dataclasses

        tiers = tuple(
            dataclasses.replace(t, memory=MemoryEstimate.of(sizes[t.name] * GIB, 0, 0))
            for t in desired.tiers
        )
        return dataclasses.replace(desired, tiers=tiers, budget_bytes=18 * GIB)

    from mlxctl.plan.actions import PlanOptions
    from mlxctl.plan.planner import plan
    from mlxctl.reconcile.passes import observe_state

    desired = estimated(world.desired())
    the_plan = plan(desired, observe_state(world.ctx, desired), PlanOptions(allow_empty=True))
    assert the_plan.actions == () and the_plan.refused is not None
    message = the_plan.refused
    # Names every tier with its estimate, the sum, the budget and what to drop.
    for line in ("small", "big", "huge", "22.0 GiB", "18.0 GiB", "drop 'huge'"):
        assert line in message, message
    # The running tier is left alone: nothing was started or stopped.
    assert [p.argv[-1] for p in world.procs.running()] != []
    # Without the largest tier it fits, and the plan goes ahead.
    world.write(tiers_yaml(tier("small", 8001), tier("big", 8002)))
    desired = estimated(world.desired())
    fitting = plan(desired, observe_state(world.ctx, desired))
    assert fitting.refused is None and ("start", "big") in kinds(fitting)
    # The plan says how much of the budget the stack takes.
    assert fitting.memory is not None and fitting.memory.fits
    assert (fitting.memory.total, fitting.memory.budget) == (10 * GIB, 18 * GIB)
    assert report.plan_lines(fitting)[-1] == (
        "Memory: 2 tier(s) need 10.0 GiB of the 18.0 GiB memory budget."
    )


def test_tiers_without_an_estimate_are_named_in_the_memory_line(world: World) -> None:
    model = world.root / "models" / "tiny"
    model.mkdir(parents=True)
    layout = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    (model / "config.json").write_text(json.dumps(layout))
    world.write(tiers_yaml(tier("fast", 8001, model=str(model)), tier("later", 8002)))
    memory = world.plan().memory
    assert memory is not None and [name for name, _ in memory.tiers] == ["fast"]
    assert memory.message.startswith("1 tier(s) need 1.0 GiB of the")
    assert memory.message.endswith("; not estimated (no model files yet): later")
