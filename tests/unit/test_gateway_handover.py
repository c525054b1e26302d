"""The gateway's overlapping restart: the new process starts beside the old one, which
serves until the new one is ready, then stops (no window of refused connections).

A decision table for the pure planner (which restarts overlap, what a retiring
instance waits for), the executor and passes on fakes (records, processes, events),
and the probe that tells two gateways sharing a port apart by PID.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mlxctl.desired.state import DesiredService, DesiredState
from mlxctl.machine.probes import HttpProber
from mlxctl.machine.record import Record
from mlxctl.observe.state import ObservedService, ObservedState
from mlxctl.plan.actions import Plan, PlanOptions
from mlxctl.plan.planner import plan
from mlxctl.runtimes.base import ProbeSpec
from tests.unit.world import World, tier, tiers_yaml

NOW = 10_000.0
GATEWAY_ARGV = ("py", "-m", "mlxctl.gateway", "--port", "4000")
PROXY_ARGV = ("litellm", "--config", "c.yaml", "--port", "4000")
KEYED = '{port: 4000, masterKey: "${env:GATEWAY_KEY}"}'


def gateway(*, port: int = 4000, key: str = "k1") -> DesiredService:
    return DesiredService(
        name="gateway",
        role="gateway",
        runtime="litellm",
        port=port,
        argv=(*GATEWAY_ARGV[:-1], str(port)),
        env=(),
        files=(),
        model=None,
        launch={"port": port, "masterKey": key},
        spec_hash=f"v1:gw{port}{key}",
        probe=ProbeSpec("litellm", port),
        startup_timeout=120.0,
        source="stack.yaml:1",
    )


def record(name: str = "gateway", **changes: Any) -> Record:
    base = Record(
        name=name, role="gateway", pid=100, pgid=100, create_time=1.0, cmdline=GATEWAY_ARGV,
        instance="i-100", spec_hash="v1:gw4000k1", port=4000, log="/dev/null",
        started_at=NOW - 50, ready_at=NOW - 40, launch={"port": 4000, "masterKey": "k1"},
    )  # fmt: skip
    return replace(base, **changes)


RETIRING = record().retiring()
# The new gateway (pid 200), started by the handover, with the new key.
NEW = record(pid=200, pgid=200, instance="i-200", spec_hash="v1:gw4000k2", started_at=NOW - 1,
             ready_at=None, launch={"port": 4000, "masterKey": "k2"})  # fmt: skip


def seen(rec: Record, **changes: Any) -> ObservedService:
    return replace(ObservedService(rec, alive=True), **changes)


def decide(observed: list[ObservedService], want: DesiredService | None) -> Plan:
    state = ObservedState(now=NOW, services={s.record.name: s for s in observed})
    desired = DesiredState(tiers=(), gateway=want)
    return plan(desired, state, PlanOptions(allow_empty=True))


def rows(the_plan: Plan) -> list[tuple[str, str, str, bool]]:
    return [(a.kind, a.target, a.reason, a.overlap) for a in the_plan.actions]


@pytest.mark.parametrize(
    ("observed", "want", "expected"),
    [
        # a serving mlxctl gateway whose launch changed: the new one starts beside it
        ([seen(record())], gateway(key="k2"), [("restart", "gateway", "", True)]),
        ([seen(record())], gateway(port=4001), [("restart", "gateway", "", True)]),
        # the LiteLLM proxy of earlier versions binds without SO_REUSEPORT: only a new
        # port may overlap it; on its own port it is stopped first
        (
            [seen(record(cmdline=PROXY_ARGV))],
            gateway(key="k2"),
            [("restart", "gateway", "", False)],
        ),
        (
            [seen(record(cmdline=PROXY_ARGV))],
            gateway(port=4001),
            [("restart", "gateway", "", True)],
        ),
        # one still starting serves nobody: replaced the ordinary way
        ([seen(record(ready_at=None))], gateway(key="k2"), [("restart", "gateway", "", False)]),
        # the new one starting: the old one serves on
        (
            [seen(RETIRING), seen(NEW)],
            gateway(key="k2"),
            [("wait", "gateway", "starting", False), ("wait", "gateway~100", "handover", False)],
        ),
        # the new one answered: it is recorded ready, and the old one stops
        (
            [seen(RETIRING), seen(NEW, health="ready", detail="ok")],
            gateway(key="k2"),
            [("ready", "gateway", "", False), ("stop", "gateway~100", "", False)],
        ),
        (
            [seen(RETIRING), seen(replace(NEW, ready_at=NOW - 1), health="ready")],
            gateway(key="k2"),
            [("stop", "gateway~100", "", False)],
        ),
        # the new one crashed (backoff): the old one keeps serving meanwhile
        (
            [
                seen(RETIRING),
                seen(replace(NEW, died_at=NOW - 1, not_before=NOW + 5), alive=False),
            ],
            gateway(key="k2"),
            [("wait", "gateway", "backoff", False), ("wait", "gateway~100", "handover", False)],
        ),
        # the new one never got a record (its spawn failed): started again, old serves
        (
            [seen(RETIRING)],
            gateway(key="k2"),
            [("start", "gateway", "", False), ("wait", "gateway~100", "handover", False)],
        ),
        # the gateway is no longer wanted (``down``): both stop
        (
            [seen(RETIRING), seen(NEW)],
            None,
            [("stop", "gateway", "", False), ("stop", "gateway~100", "", False)],
        ),
        # the old one's stop: waited for, then forgotten
        (
            [seen(replace(RETIRING, stop_requested_at=NOW - 1)), seen(NEW, health="ready")],
            gateway(key="k2"),
            [("ready", "gateway", "", False), ("wait", "gateway~100", "stopping", False)],
        ),
        (
            [
                seen(replace(RETIRING, stop_requested_at=NOW - 1), alive=False),
                seen(replace(NEW, ready_at=NOW - 1)),
            ],
            gateway(key="k2"),
            [("forget", "gateway~100", "", False)],
        ),
    ],
)
def test_handover_decisions(
    observed: list[ObservedService],
    want: DesiredService | None,
    expected: list[tuple[str, str, str, bool]],
) -> None:
    assert rows(decide(observed, want)) == expected


def test_the_causes_say_what_happens() -> None:
    (restart,) = decide([seen(record())], gateway(key="k2")).actions
    assert restart.cause == (
        "masterKey changed: k1 -> k2 (the old one serves until the new one is ready)"
    )
    waiting = decide([seen(RETIRING), seen(NEW, detail="refused")], gateway(key="k2"))
    assert waiting.for_target("gateway~100")[0].cause == (
        "serving until the new gateway is ready (starting, pid 200: refused)"
    )
    stop = decide([seen(RETIRING), seen(NEW, health="ready")], gateway(key="k2"))
    assert stop.for_target("gateway~100")[0].cause == "replaced: the new gateway (pid 200) serves"


# -- the executor and passes, on fakes --------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_key_change_starts_the_new_gateway_before_the_old_one_stops(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    old = world.record("gateway")
    world.write(tiers_yaml(tier("fast", 8001), gateway=KEYED))

    first = world.step()
    assert [(o.action.kind, o.action.overlap, o.ok) for o in first.outcomes] == [
        ("restart", True, True)
    ]
    assert first.outcomes[0].message.endswith(f"gateway~{old.pid} serves until it is ready")
    records = world.ctx.inventory.load()
    new = records["gateway"]
    retiring = records[f"gateway~{old.pid}"]
    # The port held by the one it replaces is no conflict; both run now.
    assert new.pid != old.pid and new.port == old.port == 4000
    assert retiring.handover_to == "gateway" and retiring.identity() == old.identity()
    assert world.procs.procs[old.pid].alive and world.procs.procs[new.pid].alive
    assert not retiring.stopping

    # The new one answers: recorded ready, and only then the old one is stopped.
    second = world.step()
    kinds = sorted((o.action.kind, o.action.target) for o in second.outcomes)
    assert kinds == [("ready", "gateway"), ("stop", f"gateway~{old.pid}")]
    world.procs.procs[old.pid].alive = False
    third = world.step()
    assert [(o.action.kind, o.action.target) for o in third.outcomes] == [
        ("forget", f"gateway~{old.pid}")
    ]
    assert set(world.ctx.inventory.load()) == {"fast", "gateway"}
    assert world.record("gateway").restarts == old.restarts + 1


def test_the_retiring_gateway_shows_in_status(world: World) -> None:
    from mlxctl.status.report import status_text
    from mlxctl.status.services import build_status, status_json

    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    old = world.record("gateway")
    world.write(tiers_yaml(tier("fast", 8001), gateway="{port: 4001}"))
    world.prober.slow[4001] = 5
    world.step()
    desired = world.desired()
    from mlxctl.reconcile.passes import observe_state

    status = status_json(build_status(desired, observe_state(world.ctx, desired)))
    assert status["gateway"]["name"] == "gateway" and status["gateway"]["health"] == "starting"
    (retiring,) = status["retiring"]
    assert retiring["name"] == f"gateway~{old.pid}" and retiring["pid"] == old.pid
    assert retiring["health"] == "ready" and retiring["replaced_by"] == "gateway"
    text = status_text(build_status(desired, observe_state(world.ctx, desired)))
    row = next(line for line in text.splitlines() if line.startswith(f"gateway~{old.pid}"))
    assert row.split()[1:3] == ["litellm", "ready"]
    assert row.endswith("being replaced: serves until the new gateway is ready")


def test_a_failed_spawn_gives_the_old_gateway_its_name_back(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    old = world.record("gateway")
    world.write(tiers_yaml(tier("fast", 8001), gateway="{port: 4001}"))

    def refuse(*_args: object) -> None:
        raise OSError("exec format error")

    world.procs.spawn = refuse  # type: ignore[method-assign]
    result = world.step()
    assert [(o.action.kind, o.ok) for o in result.outcomes] == [("restart", False)]
    assert world.ctx.inventory.load()["gateway"] == old
    assert set(world.ctx.inventory.load()) == {"fast", "gateway"}
    assert world.procs.procs[old.pid].alive


# -- the probe: an answer from the other gateway on a shared port proves nothing ---------


class _Gateway(http.server.BaseHTTPRequestHandler):
    pid = 0

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "pid": self.pid}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def answering_pid() -> Iterator[tuple[int, type[_Gateway]]]:
    handler = type("Handler", (_Gateway,), {"pid": 4242})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_gateway_probe_checks_which_process_answered(
    answering_pid: tuple[int, type[_Gateway]],
) -> None:
    port, _ = answering_pid
    prober = HttpProber()
    assert prober.probe(ProbeSpec("litellm", port, pid=4242), "ready", 5.0).ok
    assert prober.probe(ProbeSpec("litellm", port), "ready", 5.0).ok  # any process will do
    other = prober.probe(ProbeSpec("litellm", port, pid=777), "ready", 5.0)
    assert not other.ok and other.detail == "answered by pid 4242, not by pid 777"


def test_reconcile_once_reports_the_handover_and_leaves_one_gateway(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    old = world.record("gateway")
    world.write(tiers_yaml(tier("fast", 8001), gateway="{port: 4001}"))
    result = world.apply()
    assert result.converged and result.exit_code == 0
    assert [(o.action.kind, o.action.target, o.ok, o.message) for o in result.outcomes] == [
        ("restart", "gateway", True, "ready"),
        ("stop", f"gateway~{old.pid}", True, "stopped"),
    ]
    assert set(world.ctx.inventory.load()) == {"fast", "gateway"}
    assert not world.procs.procs[old.pid].alive and world.record("gateway").port == 4001
