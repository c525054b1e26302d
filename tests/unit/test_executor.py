"""Applying plans against fakes: what is recorded, reported and when, pass by pass."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert world.record("fast").last_error.startswith("error: exited with code 1")


def test_a_pass_never_waits_for_readiness(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.prober.slow[8001] = 3
    started = world.clock.now
    first = world.step()
    # Spawned and recorded, not waited for: the fake clock did not move.
    assert [(o.action.kind, o.ok) for o in first.outcomes] == [("start", True)]
    assert world.clock.now == started and world.clock.slept == []
    record = world.record("fast")
    assert record.pid > 0 and record.ready_at is None
    # The next passes observe it starting, then ready.
    assert [a.reason for a in world.step().plan.actions] == ["starting"]
    world.step()
    world.step()
    assert [a.kind for a in world.step().plan.actions] == ["ready"]
    assert world.record("fast").ready_at is not None


def test_startup_timeout_from_cli_overrides_the_stack(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.prober.failing[8001] = "still loading"
    result = world.apply(startup_timeout=2.0)
    assert result.exit_code == 5
    assert "still loading" in result.failed[0].message
    # The hung process was stopped, not left behind.
    assert world.procs.running() == []


def test_port_held_by_a_stranger_is_a_clear_failure(world: World) -> None:
    """Observed before any attempt (issue 15 row 12): the tier is blocked, not started
    and failed pass after pass."""
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.procs.busy_ports[8001] = "pid 4242 (nginx)"
    result = world.apply()
    assert result.last.plan.blocked == {"fast": "port 8001 is held by pid 4242 (nginx)"}
    assert result.exit_code == 4
    assert world.procs.procs == {}  # nothing was spawned


def test_a_port_taken_between_observing_and_starting_is_still_a_clear_failure(
    world: World,
) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    the_plan = world.plan()
    world.procs.busy_ports[8001] = "pid 4242 (nginx)"
    [outcome] = world.ctx.executor().apply(the_plan, world.desired())
    assert outcome.message == "port 8001 is already in use by pid 4242 (nginx)"


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
    assert [(o.action.kind, o.action.target) for o in result.failed] == [("prepare", "chat")]
    assert "conversion failed" in result.failed[0].message
    assert set(result.last.plan.blocked) == {"chat", "chat-vllm"}
    assert [r.name for r in world.ctx.inventory.load().values()] == ["other"]
    assert result.exit_code == 4
    # Retried after a while, not at every pass.
    assert "prepare" not in [a.kind for a in world.plan().actions]
    world.clock.advance(61)
    world.store.fail_prepare = False
    assert ("prepare", "chat") in [(a.kind, a.target) for a in world.plan().actions]


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
        ("fast", "ready", "ok"),
        ("gateway", "ready", "ok"),
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
    assert result.exit_code == 4
    assert "cannot become ready" in result.failed[0].message
    assert world.clock.now - started < 1
    assert world.procs.running() == []


def test_a_starting_server_found_by_a_new_controller_is_waited_for(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.prober.failing[8001] = "loading"
    world.step()
    record = world.record("fast")
    # A new controller (nothing in memory) plans from the records: it waits, not restarts.
    world.ctx.health = type(world.ctx.health)(world.prober)  # type: ignore[call-arg,misc]
    assert [(a.kind, a.reason) for a in world.plan().actions] == [("wait", "starting")]
    del world.prober.failing[8001]
    assert world.apply().converged and world.record("fast").pid == record.pid


def test_a_spawn_whose_pid_was_never_recorded_is_adopted(world: World) -> None:
    """The intent record is written before the spawn: a crash between the two leaves
    a process that the next run finds by its marker, never an unowned one."""
    from mlxctl.machine.interfaces import INSTANCE_ENV

    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.step()
    record = world.record("fast")
    # As if mlxctl died after the spawn, before writing the PID.
    world.ctx.inventory.put(record.evolve(pid=0, pgid=0, create_time=0.0))
    proc = world.procs.procs[record.pid]
    assert proc.env[INSTANCE_ENV] == record.instance
    actions = world.plan().actions
    assert [(a.kind, a.adopt and a.adopt[0]) for a in actions] == [("adopt", record.pid)]
    assert world.apply().converged
    assert world.record("fast").pid == record.pid and len(world.procs.running()) == 1


def test_an_intent_whose_spawn_never_happened_is_started_after_a_grace(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001), gateway="{enabled: false}"))
    world.step()
    record = world.record("fast")
    world.procs.crash(record.pid)
    world.ctx.inventory.put(record.evolve(pid=0, pgid=0, create_time=0.0, instance="gone"))
    assert [a.reason for a in world.plan().actions] == ["spawning"]
    world.clock.advance(6)
    assert [a.kind for a in world.plan().actions] == ["start"]


def test_a_stop_is_begun_then_observed_and_escalated_after_the_grace(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001, args="{a: 1}"), gateway="{enabled: false}"))
    assert world.apply().converged
    old = world.record("fast")
    world.procs.ignore_term.add(old.pid)  # a server that ignores SIGTERM
    world.write(tiers_yaml(tier("fast", 8001, args="{a: 2}"), gateway="{enabled: false}"))
    first = world.step()
    assert [a.kind for a in first.plan.actions] == ["restart"]
    assert world.record("fast").stopping and old.pid in world.procs.signalled
    # No second process while the first is still there, whatever the edit says.
    assert [(a.kind, a.reason) for a in world.step().plan.actions] == [("wait", "stopping")]
    world.clock.advance(10)
    assert [a.kind for a in world.step().plan.actions] == ["kill"]
    assert old.pid in world.procs.killed
    result = world.apply()
    assert result.converged
    assert world.record("fast").pid != old.pid and world.record("fast").launch["args"] == {"a": 2}


def test_a_process_that_survives_sigkill_is_never_started_twice(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001, args="{a: 1}"), gateway="{enabled: false}"))
    assert world.apply().converged
    old = world.record("fast")
    world.procs.ignore_term.add(old.pid)
    world.procs.unkillable.add(old.pid)
    world.write(tiers_yaml(tier("fast", 8001, args="{a: 2}"), gateway="{enabled: false}"))
    world.step()
    world.clock.advance(10)
    world.step()  # kill
    world.clock.advance(5)
    the_plan = world.plan()
    assert "survived" in the_plan.blocked["fast"] or "after SIGKILL" in the_plan.blocked["fast"]
    assert [a.kind for a in the_plan.actions] == []
    assert len(world.procs.running()) == 1


def test_a_run_ended_by_one_failure_gives_each_unfinished_service_its_own_reason(
    world: World,
) -> None:
    """`reconcile --once` ends when one tier fails; a tier still loading then is reported
    as still starting, never with another tier's reason (it read `good: blocked: ...`)."""
    broken = world.root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    tiers = (tier("bad", 8001), tier("good", 8002), tier("blocked", 8003, model=str(broken)))
    world.write(tiers_yaml(*tiers, gateway="{enabled: false}"))
    world.prober.fatal[8001] = "model failed to load"
    world.prober.failing[8002] = "loading"
    result = world.apply()
    assert result.exit_code == 4
    reasons = {o.action.target: o.message for o in result.failed}
    assert "model failed to load" in reasons["bad"]
    assert reasons["good"] == "still starting when the run ended on another failure"
