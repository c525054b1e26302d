"""The executor against fakes: what is recorded, reported and when."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxctl.apply.executor import ExecutorSettings
from tests.unit.world import World, tier, tiers_yaml


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_server_that_exits_while_starting_fails_at_once_not_after_the_timeout(
    world: World,
) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    world.procs.crash_on_start.add("--port 8001")
    (world.ctx.paths.logs).mkdir(parents=True)
    started = world.clock.now
    result = world.apply()
    failed = [o for o in result.outcomes if not o.ok]
    assert [o.action.target for o in failed] == ["fast"]
    assert "exited with code 1 while starting" in failed[0].message
    # The fake clock shows no waiting toward the 300 s startup timeout.
    assert world.clock.now - started < 1
    assert world.record("fast").last_error.startswith("exited with code 1")


def test_readiness_is_polled_from_50ms_with_backoff_capped_at_1s(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.prober.slow[8001] = 12
    assert world.apply().converged
    assert world.clock.slept[0] == pytest.approx(0.05)
    assert max(world.clock.slept) == pytest.approx(1.0)
    assert world.clock.slept == sorted(world.clock.slept)


def test_startup_timeout_from_cli_overrides_the_stack(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.prober.failing[8001] = "still loading"
    world.ctx.settings = ExecutorSettings(startup_timeout=2.0)
    result = world.apply()
    assert result.exit_code() == 5
    assert "still loading" in result.failed[0].message
    # The hung process was stopped, not left behind.
    assert world.procs.running() == []


def test_port_held_by_a_stranger_is_a_clear_failure(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.procs.busy_ports[8001] = "pid 4242 (nginx)"
    result = world.apply()
    assert result.failed[0].message == "port 8001 is already in use by pid 4242 (nginx)"
    assert result.exit_code() == 4


def test_a_shared_model_is_prepared_once_for_all_its_tiers(world: World) -> None:
    world.write(tiers_yaml(tier("chat", 8001), tier("chat-vllm", 8002, runtime="vllm-mlx")))
    world.ctx.model_resolver = _prepared_ref
    world.store.present_ids.clear()
    prepares = [a for a in world.plan().actions if a.kind == "prepare"]
    assert [a.target for a in prepares] == ["chat"]
    assert world.apply().converged
    assert world.store.prepared == ["pypi-gguf:abc"]


def test_failed_prepare_blocks_only_the_tiers_of_that_model(world: World) -> None:
    world.write(
        tiers_yaml(
            tier("chat", 8001),
            tier("chat-vllm", 8002, runtime="vllm-mlx"),
            tier("other", 8003, model="/models/other"),
            gateway="{enabled: false}",
        )
    )
    world.store.present_ids.clear()
    world.store.fail_prepare = True
    world.ctx.model_resolver = lambda t: (
        world._resolve_model(t) if t.spec.name == "other" else _prepared_ref(t)
    )
    result = world.apply()
    assert [(o.action.kind, o.action.target) for o in result.failed] == [
        ("prepare", "chat"),
        ("start", "chat"),
        ("start", "chat-vllm"),
    ]
    assert "could not be prepared" in result.failed[-1].message
    assert [r.name for r in world.ctx.inventory.load().values()] == ["other"]
    assert result.exit_code() == 4


def _prepared_ref(tier):  # type: ignore[no-untyped-def]
    from mlxctl.desired.state import ModelRef

    return ModelRef("pypi-gguf", "pypi-gguf:abc", Path("/models/demo"), "demo", prepare="pypi-gguf")


def test_restart_keeps_count_and_records_new_identity(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001, args="{a: 1}")))
    assert world.apply().converged
    first = world.record("fast")
    world.write(tiers_yaml(tier("fast", 8001, args="{a: 2}")))
    assert world.apply().converged
    second = world.record("fast")
    assert second.pid != first.pid and second.restarts == 1
    assert first.pid in world.procs.signalled
    assert second.launch["args"] == {"a": 2}


def test_events_record_each_action_with_cause_and_result(world: World) -> None:
    from mlxctl.apply.events import read_events

    world.write(tiers_yaml(tier("fast", 8001)))
    world.apply()
    events = read_events(world.ctx.paths.events)
    assert [(e.target, e.kind, e.result) for e in events] == [
        ("fast", "start", "started"),
        ("gateway", "start", "started"),
        ("fast", "start", "ok"),
        ("gateway", "start", "ok"),
    ]
    assert all(e.cause for e in events)


def test_generated_gateway_key_is_private_and_stable(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    key = world.ctx.paths.state / "gateway" / "master_key"
    assert key.stat().st_mode & 0o777 == 0o600
    value = key.read_text()
    gateway = next(p for p in world.procs.running() if "mlxctl.gateway" in p.argv)
    assert gateway.env["LITELLM_MASTER_KEY"] == value.strip()
    assert world.plan().actions == ()


def test_user_master_key_comes_from_the_environment(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{masterKey: '${env:GATEWAY_KEY}'}"))
    assert world.apply().converged
    gateway = next(p for p in world.procs.running() if "mlxctl.gateway" in p.argv)
    assert gateway.env["LITELLM_MASTER_KEY"] == "sk-test"
    path = world.ctx.paths.state / "gateway" / "config.json"
    assert "sk-test" not in path.read_text() and path.stat().st_mode & 0o777 == 0o600


def test_a_server_that_says_it_can_never_be_ready_fails_at_once(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.prober.fatal[8001] = 'completion answered 404: {"error": "No safetensors"}'
    started = world.clock.now
    result = world.apply()
    assert result.exit_code() == 4
    assert "cannot become ready" in result.failed[0].message
    assert world.clock.now - started < 1
    assert world.procs.running() == []


def test_a_cancelled_wait_leaves_the_starting_server_running(world: World) -> None:
    import threading

    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.prober.failing[8001] = "loading"
    cancel = threading.Event()
    cancel.set()
    world.ctx.settings = ExecutorSettings(cancel=cancel)
    result = world.apply()
    assert result.failed[0].message.startswith("interrupted: still starting")
    assert len(world.procs.running()) == 1
    record = world.record("fast")
    assert record.died_at is None and record.ready_at is None
    # The next pass waits for it instead of restarting it.
    world.ctx.settings = ExecutorSettings()
    del world.prober.failing[8001]
    assert [a.kind for a in world.plan().actions] == ["wait"]
    assert world.apply().converged and world.record("fast").pid == record.pid
