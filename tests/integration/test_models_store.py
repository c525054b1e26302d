"""``models rm`` against real processes: two repos holding the same commit (a fork, a
copy) in the shared cache, a tier serving one of them (issue 15 row 3)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from tests.integration.conftest import Mlxctl, free_ports, stack_yaml, tier_key_headers, wait_for

from mlxctl.errors import ExitCode
from mlxctl.testing.hub import LocalHub


def answers(ctl: Mlxctl, port: int, tier: str = "fast") -> bool:
    body = {"model": "default_model", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={**body, "max_tokens": 1},
        headers=tier_key_headers(ctl, tier),
        timeout=60,
    )
    return reply.status_code == 200 and bool(reply.json()["choices"])


def test_rm_of_a_fork_at_the_same_commit_leaves_the_served_repo_alone(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    commit = local_hub.commit_dir("org/tiny", tiny_model)
    assert local_hub.commit_dir("org/tiny2", tiny_model) == commit
    mlxctl.write(
        "laptop.yaml",
        stack_yaml(
            [
                {
                    "name": "fast",
                    "runtime": "mlx-lm",
                    "port": free_ports(1)[0],
                    "model": {"hf": "org/tiny"},
                }
            ]
        ),
    )
    up = mlxctl.run("reconcile", "--once", str(mlxctl.stacks), timeout=180)
    assert up.returncode == 0, up.stderr
    assert mlxctl.run("models", "pull", "hf:org/tiny2").returncode == 0
    cache = tmp_path / "hf-cache"
    served = cache / "models--org--tiny" / "snapshots" / commit
    fork = cache / "models--org--tiny2" / "snapshots" / commit
    assert (served / "config.json").is_file() and (fork / "config.json").is_file()
    record = mlxctl.inventory()["fast"]

    removed = mlxctl.run("models", "rm", "org/tiny2", str(mlxctl.stacks), "-o", "json")
    assert removed.returncode == 0, removed.stderr
    assert [m["path"] for m in json.loads(removed.stdout)["removed"]] == [str(fork)]
    assert not fork.parent.parent.exists()
    assert (served / "config.json").is_file() and (served / "model.safetensors").is_file()
    assert answers(mlxctl, record["port"])
    tier = mlxctl.tier("fast")
    assert (tier["sync"], tier["health"]) == ("Synced", "ready"), tier

    refused = mlxctl.run("models", "rm", "org/tiny", str(mlxctl.stacks))
    assert refused.returncode == ExitCode.APPLY_FAILED
    [line] = refused.stderr.strip().splitlines()
    assert "used by running tier(s) fast" in line
    assert (served / "model.safetensors").is_file()
    assert mlxctl.inventory()["fast"]["pid"] == record["pid"] and answers(mlxctl, record["port"])


def test_a_just_pulled_config_that_is_not_json_blocks_its_tier_and_the_other_converges(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    files: dict[str, bytes | str | Path] = {
        str(p.relative_to(tiny_model)): p for p in tiny_model.iterdir() if p.is_file()
    }
    commit = local_hub.commit("org/broken", {**files, "config.json": "{not json"})
    ports = free_ports(2)
    mlxctl.write(
        "laptop.yaml",
        stack_yaml(
            [
                {
                    "name": "good",
                    "runtime": "mlx-lm",
                    "port": ports[0],
                    "model": {"path": str(tiny_model)},
                },
                {
                    "name": "bad",
                    "runtime": "mlx-lm",
                    "port": ports[1],
                    "model": {"hf": "org/broken"},
                },
            ]
        ),
    )
    result = mlxctl.run("reconcile", "--once", str(mlxctl.stacks), timeout=180)
    assert result.returncode == ExitCode.APPLY_FAILED, result.stderr
    config = tmp_path / "hf-cache" / "models--org--broken" / "snapshots" / commit / "config.json"
    said = (
        f"error: bad: model org/broken@main cannot be used: {config}: cannot read the model config"
    )
    assert any(line.startswith(said) for line in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr
    # The run ends at the failure; the other tier was started and becomes ready.
    wait_for(lambda: mlxctl.tier("good")["health"] == "ready", 120, "the good tier ready")
    assert answers(mlxctl, ports[0], "good")
    assert "bad" not in mlxctl.inventory()  # never started: nothing to crash
    assert [t["name"] for t in mlxctl.status()["tiers"]] == ["good"]
