"""`reconcile --once`, `diff`, `status` and `down` against real mlx_lm.server and vllm-mlx."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
from tests.integration.conftest import Mlxctl, free_ports, pid_alive, stack_yaml
from tests.integration.marked import ours


def leftovers(home: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(home) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(cmdline)
    return found


def tiers(model: Path, ports: list[int], max_tokens: int = 64) -> list[dict[str, object]]:
    return [
        {
            "name": "fast",
            "runtime": "mlx-lm",
            "model": {"path": str(model)},
            "port": ports[0],
            "args": {"max-tokens": max_tokens},
        },
        {"name": "agent", "runtime": "vllm-mlx", "model": {"path": str(model)}, "port": ports[1]},
    ]


def test_converge_edit_invalid_edit_and_down(mlxctl: Mlxctl, tiny_model: Path) -> None:
    ports = free_ports(2)
    mlxctl.write("stack.yaml", stack_yaml(tiers(tiny_model, ports)))
    stacks = str(mlxctl.stacks)

    assert mlxctl.run("diff", stacks).returncode == 1
    first = mlxctl.run("reconcile", "--once", stacks)
    assert first.returncode == 0, first.stderr
    status = mlxctl.status()
    assert [(t["name"], t["health"], t["sync"]) for t in status["tiers"]] == [
        ("fast", "ready", "Synced"),
        ("agent", "ready", "Synced"),
    ]
    assert status["gateway"] is None
    pids = {t["name"]: t["pid"] for t in status["tiers"]}
    # Only the servers run: nothing beside them carries their output (they write their
    # logs themselves, runtimes.server_log).
    assert {p.pid for p in ours(mlxctl)} == set(pids.values())
    again = mlxctl.run("diff", stacks)
    assert again.returncode == 0 and "No changes" in again.stdout

    # Editing one tier restarts that tier only, and diff says why.
    mlxctl.write("stack.yaml", stack_yaml(tiers(tiny_model, ports, max_tokens=128)))
    planned = mlxctl.run("diff", stacks, "-o", "json")
    assert planned.returncode == 1
    records = [json.loads(line) for line in planned.stdout.splitlines()]
    assert records[0]["type"] == "version" and records[0]["schema"] == "mlxctl.plan/v1"
    actions = [r for r in records if r["type"] == "planned"]
    assert [(a["action"], a["target"], a["cause"]) for a in actions] == [
        ("restart", "fast", "args changed: max-tokens 64 -> 128")
    ]
    assert records[-1]["type"] == "summary" and records[-1]["exit_code"] == 1
    assert mlxctl.run("reconcile", "--once", stacks).returncode == 0
    after = {t["name"]: t["pid"] for t in mlxctl.status()["tiers"]}
    assert after["agent"] == pids["agent"] and after["fast"] != pids["fast"]

    # An invalid edit changes nothing that runs, and says where the problem is.
    mlxctl.write("stack.yaml", stack_yaml(tiers(tiny_model, ports)).replace('"args"', '"argz"'))
    bad = mlxctl.run("reconcile", "--once", stacks)
    assert bad.returncode == 3
    assert "stack.yaml:" in bad.stderr and "did you mean 'args'" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert all(pid_alive(pid) for pid in after.values())
    assert mlxctl.inventory()["fast"]["pid"] == after["fast"]

    # Each server writes its output to its log itself.
    logs = mlxctl.run("logs", "fast", "--tail", "200")
    assert logs.returncode == 0 and "Starting httpd" in logs.stdout

    down = mlxctl.run("down")
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(pid) for pid in after.values())
    assert mlxctl.inventory() == {}
    # Nothing of ours is left.
    assert leftovers(mlxctl.home) == []


@pytest.mark.parametrize("runtime", ["mlx-lm", "vllm-mlx"])
def test_a_server_whose_model_fails_to_load_is_reported_at_once(
    mlxctl: Mlxctl, tmp_path: Path, runtime: str
) -> None:
    # vllm-mlx exits; mlx_lm.server keeps running and answers 404 to every completion.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    [port] = free_ports(1)
    mlxctl.write(
        "stack.yaml",
        stack_yaml(
            [
                {
                    "name": "broken",
                    "runtime": runtime,
                    "model": {"path": str(broken)},
                    "port": port,
                    "startupTimeout": 600,
                },
            ]
        ),
    )
    started = time.monotonic()
    result = mlxctl.run("reconcile", "--once", str(mlxctl.stacks))
    elapsed = time.monotonic() - started
    assert result.returncode == 4, result.stderr
    if runtime == "vllm-mlx":
        # Why, from its log's last lines: the server wrote them to the file itself, so
        # they are there when its exit is noticed (nothing waits in a pipe to a pump).
        assert "its model could not be loaded" in result.stderr, result.stderr
        assert "No safetensors found" in result.stderr
    else:
        assert "cannot become ready" in result.stderr, result.stderr
    # Reported when the process exits, long before the 600 s startup timeout.
    assert elapsed < 120
    tier = mlxctl.tier("broken")
    assert tier["health"] in ("crashed", "crash-looping") and tier["last_error"]


def test_health_timeout_has_its_own_exit_code(mlxctl: Mlxctl, tiny_model: Path) -> None:
    [port] = free_ports(1)
    mlxctl.write(
        "stack.yaml",
        stack_yaml(
            [
                {
                    "name": "slow",
                    "runtime": "vllm-mlx",
                    "model": {"path": str(tiny_model)},
                    "port": port,
                },
            ]
        ),
    )
    result = mlxctl.run("reconcile", "--once", "--timeout", "0.5", str(mlxctl.stacks))
    assert result.returncode == 5, result.stderr
    assert "startup timeout" in result.stderr


def test_dry_run_acts_on_nothing_and_json_stream_is_versioned(
    mlxctl: Mlxctl, tiny_model: Path
) -> None:
    [port] = free_ports(1)
    mlxctl.write(
        "stack.yaml",
        stack_yaml(
            [
                {
                    "name": "fast",
                    "runtime": "mlx-lm",
                    "model": {"path": str(tiny_model)},
                    "port": port,
                },
            ]
        ),
    )
    dry = mlxctl.run("reconcile", "--once", "--dry-run", "-o", "json", str(mlxctl.stacks))
    assert dry.returncode == 0, dry.stderr
    lines = [json.loads(line) for line in dry.stdout.splitlines()]
    assert [r["type"] for r in lines] == ["version", "planned", "summary"]
    assert mlxctl.inventory() == {}
    applied = mlxctl.run("reconcile", "--once", "-o", "json", str(mlxctl.stacks))
    assert applied.returncode == 0, applied.stderr
    lines = [json.loads(line) for line in applied.stdout.splitlines()]
    assert [r["type"] for r in lines] == ["version", "planned", "applied", "summary"]
    assert lines[2]["result"] == "ok" and lines[-1]["converged"] is True
