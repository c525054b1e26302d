"""Issue 20, one model across machines: a ``distributed`` tier, one rank per member host.

Resolution (each member's argv, MLX's environment, the hostfile, the route of a rank
above 0, the memory share) is checked on the fake machine of each member. The group's
decisions are checked the way they happen: two fake machines, each with its own
controller passes, reading each other's rank reports exactly as their gateways relay
them (:func:`mlxctl.app.control.ranks` -> JSON -> :func:`mlxctl.observe.peers.parse_ranks`),
on fake clocks. A decision table of :mod:`mlxctl.plan.group` covers the cases the two
machines do not reach on their own (a stale generation, a planned restart elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from mlxctl.app import control
from mlxctl.desired.group import RING_PORT_BASE, RING_PORT_SLOTS, RING_PORT_STRIDE, group_port
from mlxctl.desired.state import DesiredState, Group
from mlxctl.errors import SpecError
from mlxctl.machine.record import Record
from mlxctl.observe.peers import parse_ranks, unreachable
from mlxctl.observe.state import PeerRank
from mlxctl.plan import group as groups
from mlxctl.reconcile.passes import PassResult, observe_state
from mlxctl.spec.schema import DistributedSpec
from tests.unit.test_hosts import routes, world_on
from tests.unit.world import World

HOSTS = ("studio", "studio2")
STACK = """\
apiVersion: mlxctl/v1
kind: Stack
metadata: {name: home}
spec:
  hosts:
    - {name: studio, address: 10.0.0.2}
    - {name: studio2, address: 10.0.0.3, gatewayPort: 4100}
  gateway: {host: 0.0.0.0, port: 4000, masterKey: "${env:GATEWAY_KEY}"}
  tiers:
    - name: big
      runtime: mlx-lm
      model: {path: MODELS/big}
      port: 8001
      distributed: {hosts: [studio, studio2], port: 35000}
      fallbacks: [fast]
    - name: fast
      host: studio2
      runtime: mlx-lm
      model: {path: MODELS/fast}
      port: 8002
"""


# ----------------------------------------------------------------------- resolution


def test_each_member_runs_its_own_rank_with_mlx_s_environment_and_one_hostfile(
    tmp_path: Path,
) -> None:
    files = {}
    for rank, host in enumerate(HOSTS):
        world = world_on(tmp_path, host, STACK)
        big = next(t for t in world.desired().tiers if t.name == "big")
        assert big.group == Group(
            HOSTS,
            rank,
            "ring",
            {h: u for h, u in {"studio": "http://10.0.0.2:4000",
                               "studio2": "http://10.0.0.3:4100"}.items() if h != host},
        )  # fmt: skip
        env = dict(big.env)
        assert env["MLX_RANK"] == str(rank)
        ((path, text),) = big.files
        assert env["MLX_HOSTFILE"] == path == str(world.root / "state" / "groups" / "big.json")
        files[host] = text
        # The same mlx_lm.server argv as a single-host tier (through the tier guard), no
        # mlx.launch: rank 0 serves HTTP on loopback; a rank above 0 ignores --port.
        assert big.argv[1:5] == ("-m", "mlxctl.runtimes.tier_guard", "mlx-lm", "--model")
        assert big.argv[-4:] == ("--host", "127.0.0.1", "--port", "8001")
        assert big.launch["distributed"]["rank"] == rank
    # Every member renders the same hostfile: rank r listens on port + r.
    assert files["studio"] == files["studio2"]
    assert json.loads(files["studio"]) == [["10.0.0.2:35000"], ["10.0.0.3:35001"]]


def test_rank_0_is_routed_locally_and_a_rank_above_0_routes_to_rank_0_s_gateway(
    tmp_path: Path,
) -> None:
    assert routes(world_on(tmp_path, "studio", STACK))["big"]["peer"] is None
    on_2 = routes(world_on(tmp_path, "studio2", STACK))
    assert on_2["big"]["peer"] == "http://10.0.0.2:4000" and on_2["big"]["host"] == "studio"
    assert on_2["fast"]["peer"] is None


def test_a_new_member_address_restarts_the_rank(tmp_path: Path) -> None:
    world = world_on(tmp_path, "studio2", STACK)
    before = next(t for t in world.desired().tiers if t.name == "big")
    world.write(STACK.replace("10.0.0.2", "10.0.0.9").replace("MODELS", str(world.models)))
    after = next(t for t in world.desired().tiers if t.name == "big")
    assert before.spec_hash != after.spec_hash


def test_the_ring_port_is_stable_by_name_and_the_same_on_every_member() -> None:
    spec = DistributedSpec(hosts=["a", "b"])
    port = group_port("big", spec)
    assert port == group_port("big", spec)
    assert (port - RING_PORT_BASE) % RING_PORT_STRIDE == 0
    assert RING_PORT_BASE <= port < RING_PORT_BASE + RING_PORT_STRIDE * RING_PORT_SLOTS
    assert group_port("big", DistributedSpec(hosts=["a", "b"], port=40000)) == 40000


def test_jaccl_renders_the_coordinator_and_the_device_file(tmp_path: Path) -> None:
    text = STACK.replace(
        "{hosts: [studio, studio2], port: 35000}",
        "{hosts: [studio, studio2], port: 35000, backend: jaccl, "
        "devices: [[null, rdma_en5], [rdma_en4, null]]}",
    )
    big = next(t for t in world_on(tmp_path, "studio2", text).desired().tiers if t.name == "big")
    env = dict(big.env)
    assert env["MLX_RANK"] == "1"
    assert env["MLX_JACCL_COORDINATOR"] == "10.0.0.2:35000"
    ((path, devices),) = big.files
    assert env["MLX_IBV_DEVICES"] == path and "MLX_HOSTFILE" not in env
    assert json.loads(devices) == [[None, "rdma_en5"], ["rdma_en4", None]]


def test_each_member_admits_its_share_of_the_model(tmp_path: Path) -> None:
    from mlxctl.capacity.memory import GIB, MemoryEstimate, rank_share

    whole = MemoryEstimate.of(40 * GIB, 8 * GIB, 9 * GIB, "catalog")
    share = rank_share(whole, 2)
    assert (share.weights, share.kv_cache) == (20 * GIB, 4 * GIB)
    assert share.overhead == GIB + int(0.2 * 20 * GIB)  # a whole process's, for its share
    assert "rank share 1/2 of 57.0 GiB" in share.basis
    # Admission on a member uses the share (a config the estimate can read).
    world = world_on(tmp_path, "studio", STACK)
    config = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
              "intermediate_size": 11008, "max_position_embeddings": 4096}  # fmt: skip
    (world.models / "big" / "config.json").write_text(json.dumps(config))
    (world.models / "big" / "model.safetensors").write_bytes(b"\0" * 4096)
    big = next(t for t in world.desired().tiers if t.name == "big")
    assert big.memory is not None and "rank share 1/2" in big.memory.basis


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("runtime: mlx-lm\n      model: {path: MODELS/big}",
          "runtime: vllm-mlx\n      model: {path: MODELS/big}"),
         "distributed needs runtime mlx-lm (mlx_lm.server runs MLX's distributed ranks; "
         "vllm-mlx has no distributed mode)"),
        (("fallbacks: [fast]", "fallbacks: [fast]\n      load: on-demand"),
         "a distributed tier runs always"),
        (("address: 10.0.0.3", "address: studio2.local"),
         "the ring needs each member's address as an IP address; host 'studio2' has "
         "'studio2.local'"),
        (("port: 35000}", "port: 35000, backend: jaccl}"), "backend jaccl needs devices"),
        (("port: 35000}", "port: 35000, devices: [[null, a], [b, null]]}"),
         "devices is for backend jaccl"),
        (("port: 35000}", "port: 35000, backend: jaccl, devices: [[a, b], [c, null]]}"),
         "devices[0][0] must be null (a rank to itself)"),
    ],
)  # fmt: skip
def test_distributed_mistakes_are_one_line_each(
    tmp_path: Path, edit: tuple[str, str], problem: str
) -> None:
    with pytest.raises(SpecError) as err:
        world_on(tmp_path, "studio", STACK.replace(*edit)).desired()
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_a_file_default_of_on_demand_leaves_a_distributed_tier_always(tmp_path: Path) -> None:
    text = STACK.replace("  tiers:\n", "  defaults: {load: on-demand}\n  tiers:\n", 1)
    desired = world_on(tmp_path, "studio2", text).desired()
    assert {t.name: t.load for t in desired.tiers} == {"big": "always", "fast": "on-demand"}


# ----------------------------------------------------------------- two members together


class Members:
    """Both members of the stack, each its own fake machine and controller passes,
    reading each other's ranks as their gateways relay them (the admin API's answer,
    through JSON, parsed and validated as an answer from another machine)."""

    def __init__(self, tmp_path: Path, text: str = STACK) -> None:
        self.worlds = {h: world_on(tmp_path, h, text) for h in HOSTS}
        self.last: dict[str, PassResult] = {}
        # A member whose gateway does not answer (its rank may still run).
        self.unreachable: set[str] = set()
        for host, world in self.worlds.items():
            world.ctx.peers = _Linked(self, host)

    def report(self, host: str) -> bytes:
        ctl = cast(control.ControllerPort, SimpleNamespace(last=self.last.get(host)))
        return json.dumps(control.ranks(ctl)).encode()

    def step(self, host: str) -> PassResult:
        result = self.worlds[host].step()
        self.last[host] = result
        return result

    def rounds(self, n: int = 1) -> None:
        for _ in range(n):
            for host in HOSTS:
                self.step(host)
            for world in self.worlds.values():
                world.clock.advance(0.1)

    def advance(self, seconds: float) -> None:
        for world in self.worlds.values():
            world.clock.advance(seconds)

    def rec(self, host: str) -> Record:
        return self.worlds[host].record("big")

    def pid(self, host: str) -> int:
        return self.rec(host).pid

    def alive(self, host: str) -> bool:
        return self.worlds[host].procs.procs[self.pid(host)].alive

    def causes(self, host: str, kind: str) -> list[str]:
        return [a.cause for a in self.last[host].plan.for_target("big") if a.kind == kind]


class _Linked:
    """A member's view of the others: their last pass's report, as JSON over HTTP."""

    def __init__(self, members: Members, here: str) -> None:
        self.members = members
        self.here = here

    def sample(self, desired: DesiredState | None) -> Mapping[str, Mapping[str, PeerRank]]:
        out: dict[str, dict[str, PeerRank]] = {}
        for service in desired.tiers if desired is not None else ():
            if service.group is None:
                continue
            seen = out.setdefault(service.name, {})
            for host in service.group.others:
                if host in self.members.unreachable:
                    seen[host] = unreachable(host, "connection refused")
                elif host in self.members.last:
                    ranks = parse_ranks(host, self.members.report(host))
                    seen[host] = ranks[service.name]
        return out


@pytest.fixture
def members(tmp_path: Path) -> Members:
    return Members(tmp_path)


def serving(members: Members) -> Members:
    members.rounds(4)
    assert all(members.rec(h).ready_at is not None for h in HOSTS)
    return members


def test_no_rank_starts_before_every_member_is_heard_from(members: Members) -> None:
    result = members.step("studio")
    wait = result.plan.for_target("big")
    assert [(a.kind, a.reason) for a in wait] == [("wait", "group")]
    assert wait[0].cause == "waiting for the group: rank 1 on studio2: not heard from yet"
    # studio2, hearing that studio can start, waits only for studio's own report of it.
    members.step("studio2")
    assert members.causes("studio2", "start")  # studio said it can start: studio2 goes
    assert "rank 1 of 2, generation 1" in members.causes("studio2", "start")[0]


def test_the_group_starts_as_one_generation_and_rank_1_is_ready_when_rank_0_serves(
    members: Members,
) -> None:
    # studio waits (studio2 not heard from), studio2 starts (studio can), studio joins.
    members.rounds(2)
    assert members.rec("studio").generation == members.rec("studio2").generation == 1
    assert "rank 0 of 2, generation 1" in members.causes("studio", "start")[0]
    # Rank 0 answers its readiness probe; rank 1 has no HTTP and waits for it.
    members.step("studio2")
    assert members.rec("studio2").ready_at is None
    assert (
        "waiting for rank 0 on studio to serve generation 1" in members.causes("studio2", "wait")[0]
    )
    members.step("studio")
    assert members.rec("studio").ready_at is not None
    members.step("studio2")
    assert members.causes("studio2", "ready") == ["rank 0 on studio serves generation 1"]
    # Nothing probes rank 1 (it answers no HTTP): only rank 0's port and the gateway's.
    assert {p for p, _ in members.worlds["studio2"].prober.calls} == {4100, 8002}


def test_a_rank_that_dies_fails_the_group_on_every_member_and_it_restarts_together(
    members: Members,
) -> None:
    serving(members)
    members.worlds["studio2"].procs.crash(members.pid("studio2"), code=-9)
    members.step("studio2")  # studio2 sees its rank die (the process poller)
    assert "SIGKILL" in members.rec("studio2").last_error  # type: ignore[operator]
    members.step("studio")  # studio hears of it: its rank 0 stops, as a crash
    (cause,) = members.causes("studio", "crash")
    assert cause.startswith("the group failed: rank 1 on studio2: SIGKILL")
    assert cause.count("crash #1") == 1
    members.rounds(4)
    assert members.rec("studio").generation == members.rec("studio2").generation == 2
    assert all(members.rec(h).ready_at is not None for h in HOSTS)
    assert members.rec("studio").consecutive_crashes == members.rec("studio2").consecutive_crashes


def test_rank_0_that_cannot_generate_fails_the_group_counted_not_as_a_request(
    members: Members,
) -> None:
    serving(members)
    members.worlds["studio"].prober.poisoned[8001] = "cannot generate (generation thread died)"
    members.step("studio")
    (cause,) = members.causes("studio", "crash")
    assert cause.startswith("the group failed: rank 0 cannot generate")
    assert "crash #1" in cause and "caused by a request" not in cause
    members.step("studio2")
    (cause,) = members.causes("studio2", "crash")
    assert cause.startswith("the group failed: rank 0 on studio: the group failed: rank 0")
    del members.worlds["studio"].prober.poisoned[8001]
    members.rounds(5)
    assert members.rec("studio").generation == members.rec("studio2").generation == 2


def test_rank_0_that_answers_no_completion_for_the_group_s_budget_fails_the_group_as_hung(
    members: Members,
) -> None:
    serving(members)
    why = "answered nobody for 130 s (liveness budget 120 s): /health 200; busy"
    members.worlds["studio"].prober.failing[8001] = why
    for _ in range(2):
        members.step("studio")
        assert members.causes("studio", "crash") == []  # 3 in a row, as any tier
    members.step("studio")
    (cause,) = members.causes("studio", "crash")
    assert cause.startswith(f"the group failed (hung): rank 0 liveness failed 3 times: {why}")
    members.step("studio2")
    (cause,) = members.causes("studio2", "crash")
    assert cause.startswith("the group failed: rank 0 on studio: the group failed (hung)")


def test_a_second_failure_backs_the_whole_group_off_and_it_restarts_when_both_may(
    members: Members,
) -> None:
    serving(members)
    members.worlds["studio"].procs.crash(members.pid("studio"))
    members.rounds(5)
    assert members.rec("studio").generation == 2
    members.advance(5)
    members.worlds["studio"].procs.crash(members.pid("studio"))
    members.rounds(3)
    for host in HOSTS:
        assert members.rec(host).consecutive_crashes == 2
        assert not members.alive(host)
    for host in HOSTS:
        (wait,) = members.last[host].plan.for_target("big")
        assert (wait.kind, wait.reason) == ("wait", "backoff")
        assert wait.cause.startswith("crash-loop backoff: restart in 10s (crash #2)")
    members.advance(10)
    members.rounds(4)
    assert members.rec("studio").generation == members.rec("studio2").generation == 3
    assert all(members.alive(h) for h in HOSTS)


def test_a_member_whose_model_is_missing_holds_the_group_with_its_reason(
    members: Members,
) -> None:
    studio2 = members.worlds["studio2"]
    studio2.write(
        STACK.replace("MODELS/big}", "MODELS/missing}").replace("MODELS", str(studio2.models))
    )
    members.rounds(3)
    (wait,) = members.last["studio"].plan.for_target("big")
    # Held by that member on its own account: not work in flight for `reconcile --once`.
    assert wait.reason == "member"
    assert wait.cause.startswith("waiting for the group: rank 1 on studio2: model ")
    assert "missing is not present" in wait.cause
    assert members.last["studio2"].plan.blocked["big"] == wait.cause.split("studio2: ", 1)[1]
    assert [p for p in members.worlds["studio"].procs.running() if "8001" in p.argv] == []


def test_reconcile_once_waits_for_members_on_their_way_and_ends_on_one_that_is_not(
    members: Members,
) -> None:
    from mlxctl.errors import ExitCode

    members.unreachable.add("studio2")
    result = members.worlds["studio"].apply()
    assert not result.converged and result.exit_code == ExitCode.APPLY_FAILED
    (wait,) = result.last.plan.for_target("big")
    assert (wait.reason, wait.cause) == (
        "member",
        "waiting for the group: rank 1 on studio2: not reachable: connection refused",
    )


def test_an_unreachable_member_stops_nothing_that_runs(members: Members) -> None:
    serving(members)
    members.unreachable.add("studio2")
    members.rounds(2)
    assert members.alive("studio") and members.causes("studio", "crash") == []


def test_status_shows_the_group_on_each_member(members: Members) -> None:
    from mlxctl.status.services import build_status

    serving(members)
    members.worlds["studio2"].procs.crash(members.pid("studio2"))
    members.step("studio2")
    members.step("studio")
    for host in HOSTS:
        desired = members.worlds[host].desired()
        seen = observe_state(members.worlds[host].ctx, desired)
        row = next(r for r in build_status(desired, seen) if r.name == "big")
        assert row.group is not None
        assert row.group["rank"] == HOSTS.index(host) and row.group["size"] == 2
        assert row.group["failed"].startswith("rank 1 on studio2")
        assert row.group_line.startswith("group failed: rank 1 on studio2: SIGKILL")


# ------------------------------------------------------------------- decision table

GROUP = Group(("a", "b", "c"), 0, "ring", {"b": "http://b:4000", "c": "http://c:4000"})


def rank(host: str, state: Any = "idle", generation: int = 0, **kw: Any) -> PeerRank:
    return PeerRank(host, True, state, generation, **kw)


def record(generation: int, *, ready: bool = True) -> Record:
    return Record(
        name="big", role="tier", pid=10, pgid=10, create_time=1.0, cmdline=("x",),
        instance="i", spec_hash="v1:x", port=8001, log="/dev/null", started_at=1.0,
        ready_at=2.0 if ready else None, generation=generation,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("peers", "generation", "why"),
    [
        # Every other member idle and able to start: a new generation, one past all.
        ({"b": rank("b", can_start=True, generation=4), "c": rank("c", can_start=True)}, 5, ""),
        # One runs a newer generation already: join it.
        ({"b": rank("b", "running", 5), "c": rank("c", can_start=True)}, 5, ""),
        # One still runs this member's old generation: wait for it to stop.
        ({"b": rank("b", "running", 3), "c": rank("c", can_start=True)}, 0,
         "rank 1 on b: still runs generation 3"),
        ({"b": rank("b", "stopping", 3), "c": rank("c", can_start=True)}, 0,
         "rank 1 on b: stopping generation 3"),
        ({"b": rank("b", detail="waiting for memory: 40 GiB needed"),
          "c": rank("c", can_start=True)}, 0, "rank 1 on b: waiting for memory: 40 GiB needed"),
        ({"b": unreachable("b", "timed out"), "c": rank("c", can_start=True)}, 0,
         "rank 1 on b: not reachable: timed out"),
        ({"c": rank("c", can_start=True)}, 0, "rank 1 on b: not heard from yet"),
        ({"b": PeerRank("b", True), "c": rank("c", can_start=True)}, 0,
         "rank 1 on b: its controller does not run this tier"),
        ({"b": rank("b", "running", 5), "c": rank("c", "running", 6)}, 0,
         "members run generations 5, 6"),
    ],
)  # fmt: skip
def test_when_a_rank_may_start(peers: dict[str, PeerRank], generation: int, why: str) -> None:
    assert groups.join(GROUP, record(3), peers) == (generation, why)


@pytest.mark.parametrize(
    ("peers", "ready", "broken"),
    [
        # Both others run this generation: it stands.
        ({"b": rank("b", "running", 3), "c": rank("c", "running", 3)}, True, None),
        # One has not joined yet but can: still forming.
        ({"b": rank("b", "running", 3), "c": rank("c", generation=2, can_start=True)}, False,
         None),
        # Unreachable or not running the tier: decides nothing.
        ({"b": unreachable("b", "refused"), "c": PeerRank("c", True)}, True, None),
        # Its rank of this generation failed: the group failed.
        ({"b": rank("b", generation=3, failed=True, error="SIGKILL: killed; crash #2"),
          "c": rank("c", "running", 3)}, True,
         groups.Broken("rank 1 on b: SIGKILL: killed", True)),
        # It was stopped on purpose (its launch changed): restart, not a crash.
        ({"b": rank("b", "stopping", 3, detail="args changed"), "c": rank("c", "running", 3)},
         True, groups.Broken("rank 1 on b stopped: args changed", False)),
        # It runs a newer generation: this rank is stale.
        ({"b": rank("b", "running", 4), "c": rank("c", "running", 3)}, True,
         groups.Broken("rank 1 on b runs generation 4, this rank 3", True)),
        # It cannot join the generation this rank started.
        ({"b": rank("b", generation=2, detail="crash-loop backoff"),
          "c": rank("c", "running", 3)}, False,
         groups.Broken("rank 1 on b cannot join: crash-loop backoff", True)),
        ({"b": rank("b", "running", 2), "c": rank("c", "running", 3)}, False,
         groups.Broken("rank 1 on b still runs generation 2", True)),
    ],
)  # fmt: skip
def test_when_a_running_group_has_ended(
    peers: dict[str, PeerRank], ready: bool, broken: groups.Broken | None
) -> None:
    assert groups.broken(GROUP, record(3, ready=ready), peers) == broken


def test_a_planned_restart_elsewhere_restarts_this_rank_without_counting_a_crash(
    members: Members,
) -> None:
    serving(members)
    seen = members.last["studio"].observed
    peers = {"big": {"studio2": rank("studio2", "stopping", 1, detail="args changed")}}
    from dataclasses import replace

    from mlxctl.plan.actions import PlanOptions
    from mlxctl.plan.planner import plan

    the_plan = plan(members.last["studio"].desired, replace(seen, groups=peers), PlanOptions())
    assert [(a.kind, a.cause) for a in the_plan.for_target("big")] == [
        ("restart", "the group restarts: rank 1 on studio2 stopped: args changed")
    ]


def test_a_member_s_answer_is_validated_like_a_file(members: Members) -> None:
    with pytest.raises(ValueError, match="answered as host 'x'"):
        parse_ranks("studio", b'{"host": "x", "tiers": {}}')
    with pytest.raises(ValueError, match=r"not a rank report: tiers\.big\.state"):
        parse_ranks("studio", b'{"host": "studio", "tiers": {"big": {"rank": 0, '
                    b'"state": "exploded", "generation": 1}}}')  # fmt: skip
    with pytest.raises(ValueError, match="over 262144 bytes"):
        parse_ranks("studio", b" " * 300_000)
    # The report round-trips: what one controller answers, another reads.
    members.rounds(1)
    studio = parse_ranks("studio", members.report("studio"))["big"]
    assert (studio.state, studio.can_start, studio.generation) == ("idle", True, 0)
    assert parse_ranks("studio2", members.report("studio2"))["big"].state == "running"


def test_an_ordinary_stack_has_no_groups(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.write("apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n  tiers:\n"
                "    - {name: a, runtime: mlx-lm, model: {path: /m/a}, port: 8001}\n")  # fmt: skip
    result = world.step()
    assert result.observed.groups == {} and result.desired.tiers[0].group is None


# ----------------------------------------------------------- the wire between members


def test_the_peer_watcher_asks_each_member_s_gateway_with_the_stack_s_key(
    tmp_path: Path,
) -> None:
    import threading

    from mlxctl.reconcile.peers import PeerWatcher

    asked: list[tuple[str, str, str]] = []
    answers = {
        "http://10.0.0.3:4100": (200, json.dumps({"host": "studio2", "tiers": {"big": {
            "rank": 1, "state": "running", "generation": 7, "ready": True}}}).encode()),
    }  # fmt: skip
    changed = threading.Event()

    def fetch(url: str, path: str, key: str, timeout: float, limit: int) -> tuple[int, bytes]:
        asked.append((url, path, key))
        if url not in answers:
            raise ConnectionRefusedError("connection refused")
        return answers[url]

    world = world_on(tmp_path, "studio", STACK)
    desired = world.desired()
    watcher = PeerWatcher(lambda why: changed.set(), world.environ, interval=3600, fetch=fetch)
    try:
        watcher.sample(desired)  # starts asking studio2, the one other member
        assert changed.wait(10), "an answer that changes what is known triggers a pass"
        (seen,) = watcher.sample(desired)["big"].values()
        assert (seen.host, seen.state, seen.generation, seen.ready) == (
            "studio2",
            "running",
            7,
            True,
        )
        assert asked[0] == ("http://10.0.0.3:4100", "/mlxctl/ranks", "sk-test")
    finally:
        watcher.stop()
    # One question, answered each way a member can answer.
    from mlxctl.reconcile.peers import _Target

    target = _Target("http://10.0.0.9:4000", "sk-test")
    assert watcher.ask("x", target) == "http://10.0.0.9:4000: connection refused"
    answers[target.url] = (401, b'{"error": {"message": "missing or wrong API key"}}')
    assert watcher.ask("x", target).startswith("http://10.0.0.9:4000/mlxctl/ranks answered 401: ")
    answers[target.url] = (200, b"[]")
    assert "not a rank report" in str(watcher.ask("x", target))


def test_the_gateway_relays_its_controller_s_ranks_to_a_caller_with_the_key(
    tmp_path: Path,
) -> None:
    import asyncio
    import shutil
    import tempfile

    import httpx
    from aiohttp import web

    from mlxctl.gateway.app import Gateway, build_app
    from mlxctl.gateway.routing import RoutingTable
    from mlxctl.runtimes.gateway import GatewayConfig

    report = {"host": "studio", "tiers": {"big": {"rank": 0, "state": "idle", "generation": 2}}}
    short = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))  # a socket path fits 107 bytes

    async def run() -> None:
        async def ranks(_: web.Request) -> web.Response:
            return web.json_response(report)

        app = web.Application()
        app.router.add_get("/v1/ranks", ranks)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, str(short / "admin.sock")).start()
        with_controller = Gateway("k" * 32, RoutingTable(GatewayConfig()),
                                  admin_socket=short / "admin.sock")  # fmt: skip
        without = Gateway("k" * 32, RoutingTable(GatewayConfig()), admin_socket=short / "none")
        try:
            for gateway, status in ((with_controller, 200), (without, 503)):
                transport = httpx.ASGITransport(app=build_app(gateway))
                async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                    assert (await c.get("/mlxctl/ranks")).status_code == 401
                    r = await c.get(
                        "/mlxctl/ranks", headers={"Authorization": "Bearer " + "k" * 32}
                    )
                    assert r.status_code == status, r.text
                    if status == 200:
                        assert r.json() == report
                    else:
                        assert "the controller does not answer" in r.text
                await gateway.aclose()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    finally:
        shutil.rmtree(short, ignore_errors=True)
