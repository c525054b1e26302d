"""Issue 20, one model across machines: a ``distributed`` tier, one rank per member host.

Resolution (each member's argv, MLX's environment, the hostfile, the route of a rank
above 0, the memory share) is checked on the fake machine of each member.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxctl.desired.group import RING_PORT_BASE, RING_PORT_SLOTS, RING_PORT_STRIDE, group_port
from mlxctl.desired.state import Group
from mlxctl.errors import SpecError
from mlxctl.spec.schema import DistributedSpec
from tests.unit.test_hosts import routes, world_on

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
