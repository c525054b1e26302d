"""Issue 20, several machines from one repo: ``spec.hosts``, each tier's ``host``, and
what one machine's controller makes of the same files (docs/multi-host.md).

The same stack text is resolved as each machine would (``MLXCTL_HOST``) on the fake
machine: each keeps its own tiers, routes the others to their machine's gateway, and
has its own gateway port and memory budget; a stack without hosts is unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxctl.errors import SpecError
from mlxctl.machine.host_name import HOST_ENV, local_host
from tests.unit.world import World

STACK = """\
apiVersion: mlxctl/v1
kind: Stack
metadata: {name: home}
spec:
  hosts:
    - {name: studio, address: 10.0.0.2, memory: {budget: 8GB}}
    - {name: laptop, address: 10.0.0.3, gatewayPort: 4100}
  gateway: {host: 0.0.0.0, port: 4000, masterKey: "${env:GATEWAY_KEY}"}
  tiers:
    - name: big
      host: studio
      runtime: mlx-lm
      model: {path: MODELS/big}
      port: 8001
      aliases: [gpt-4o]
      fallbacks: [fast]
    - name: fast
      host: laptop
      runtime: mlx-lm
      model: {path: MODELS/fast}
      port: 8001
"""


def world_on(tmp_path: Path, host: str, text: str = STACK) -> World:
    world = World(tmp_path / host)
    for name in ("big", "fast"):
        (world.models / name).mkdir(parents=True, exist_ok=True)
    world.write(text.replace("MODELS", str(world.models)))
    world.environ[HOST_ENV] = host
    return world


def routes(world: World) -> dict[str, dict[str, object]]:
    desired = world.desired()
    assert desired.gateway is not None
    config = json.loads(dict(desired.gateway.files)[next(iter(dict(desired.gateway.files)))])
    return {r["name"]: r for r in config["routes"]}


def test_each_machine_keeps_only_its_own_tiers_and_routes_the_others_to_their_gateway(
    tmp_path: Path,
) -> None:
    studio = world_on(tmp_path, "studio")
    desired = studio.desired()
    assert [t.name for t in desired.tiers] == ["big"]
    assert desired.host == "studio"
    assert desired.elsewhere == {"fast": "laptop"}
    by_name = routes(studio)
    assert by_name["big"]["peer"] is None and by_name["big"]["port"] == 8001
    assert by_name["fast"]["peer"] == "http://10.0.0.3:4100"
    assert by_name["fast"]["host"] == "laptop"

    laptop = world_on(tmp_path, "laptop")
    desired = laptop.desired()
    assert [t.name for t in desired.tiers] == ["fast"]
    assert desired.elsewhere == {"big": "studio"}
    assert desired.gateway is not None and desired.gateway.port == 4100
    by_name = routes(laptop)
    assert by_name["big"]["peer"] == "http://10.0.0.2:4000"
    assert by_name["big"]["aliases"] == ["gpt-4o"]


def test_a_fallback_across_machines_is_routed_on_both(tmp_path: Path) -> None:
    for host in ("studio", "laptop"):
        desired = world_on(tmp_path, host).desired()
        assert desired.gateway is not None
        config = json.loads(next(iter(dict(desired.gateway.files).values())))
        assert config["fallbacks"]["big"] == ["fast"]


def test_ports_and_budgets_are_per_machine(tmp_path: Path) -> None:
    # Both tiers declare port 8001: they are on different machines, so that is fine.
    studio = world_on(tmp_path, "studio").desired()
    laptop = world_on(tmp_path, "laptop").desired()
    assert studio.budget_bytes == 8 * 10**9
    assert laptop.budget_bytes != studio.budget_bytes


def test_a_machine_not_among_the_hosts_is_refused_with_how_to_name_it(tmp_path: Path) -> None:
    world = world_on(tmp_path, "nas")
    with pytest.raises(SpecError) as err:
        world.desired()
    assert err.value.problems == [
        "this machine is 'nas' (from $MLXCTL_HOST) and the stack's hosts are studio, laptop: "
        "run with --host <name> or set MLXCTL_HOST"
    ]


def test_a_stack_without_hosts_is_placed_here_unchanged(tmp_path: Path) -> None:
    text = STACK.split("  hosts:")[0] + "  tiers:" + STACK.split("  tiers:")[1]
    text = text.replace("      host: studio\n", "").replace("      host: laptop\n", "")
    text = text.replace("      port: 8001\n", "", 1)
    world = world_on(tmp_path, "anything", text)
    desired = world.desired()
    assert sorted(t.name for t in desired.tiers) == ["big", "fast"]
    assert desired.host is None and desired.elsewhere == {}


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("      host: laptop\n", ""), "tier 'fast' names no host; the stack declares hosts"),
        (("host: laptop", "host: laptp"), "host 'laptp' is not in spec.hosts (did you mean"),
        (("host: laptop", "host: studio"), "port 8001 on host 'studio' is also used by"),
        (("gatewayPort: 4100", "gatewayPort: 8001"), "gateway port 8001 on host 'laptop'"),
        (("host: 0.0.0.0, ", ""), "set spec.gateway.host (0.0.0.0, or this LAN's address)"),
        (("{name: laptop,", "{name: studio,"), "host name 'studio' appears twice"),
    ],
)
def test_placement_mistakes_are_one_line_each(
    tmp_path: Path, edit: tuple[str, str], problem: str
) -> None:
    world = world_on(tmp_path, "studio", STACK.replace(*edit))
    with pytest.raises(SpecError) as err:
        world.desired()
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_a_host_named_without_hosts_declared_is_refused(tmp_path: Path) -> None:
    text = STACK.split("  hosts:")[0] + "  tiers:" + STACK.split("  tiers:")[1]
    text = text.replace("host: 0.0.0.0, ", "").replace("      host: laptop\n", "")
    text = text.replace("      port: 8001\n", "", 1)
    with pytest.raises(SpecError) as err:
        world_on(tmp_path, "studio", text).desired()
    assert any("names host 'studio' but the stack declares no spec.hosts" in p
               for p in err.value.problems)  # fmt: skip


def test_a_distributed_tier_s_host_is_its_rank_zero(tmp_path: Path) -> None:
    text = STACK.replace(
        "      host: laptop\n", "      distributed: {hosts: [laptop, studio]}\n"
    ).replace("      port: 8001\n", "      port: 8002\n", 1)
    laptop = world_on(tmp_path, "laptop", text).desired()
    assert [t.name for t in laptop.tiers] == ["fast"]
    bad = text.replace("hosts: [laptop, studio]", "hosts: [laptop, laptop]")
    with pytest.raises(SpecError) as err:
        world_on(tmp_path, "x", bad).desired()
    assert any("host 'laptop' appears twice" in p for p in err.value.problems)


def test_the_machine_s_name_comes_from_the_environment_then_the_hostname() -> None:
    import socket

    assert local_host({HOST_ENV: "studio"}) == "studio"
    assert local_host({}) == socket.gethostname().split(".")[0].lower()
