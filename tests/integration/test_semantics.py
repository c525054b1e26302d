"""GitOps semantics with real servers: an invalid save never stops healing, and a
suspended tier is left alone even when killed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from tests.integration.conftest import (
    Mlxctl,
    events,
    free_ports,
    pid_alive,
    ready_pid,
    stack_yaml,
    wait_for,
)


def invalid_reports(ctl: Mlxctl) -> list[dict[str, object]]:
    return [e for e in events(ctl) if e["cause"] == "invalid file"]


# ~23 s; test_controller's heal-and-invalid-edit test covers the default run.
@pytest.mark.slow
def test_an_invalid_save_while_a_tier_is_killed_still_heals_it(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    [port] = free_ports(1)
    spec = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}, "port": port}
    mlxctl.write("stack.yaml", stack_yaml([spec]))
    mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", "1", log=tmp_path / "ctl.log")
    first = wait_for(lambda: ready_pid(mlxctl), 120, "the tier to be ready")

    # A typo saved, then the server killed: the last valid version is still healed.
    broken = json.loads(stack_yaml([spec]))
    broken["spec"]["tiers"][0]["runtim"] = broken["spec"]["tiers"][0].pop("runtime")
    mlxctl.write("stack.yaml", json.dumps(broken))
    wait_for(lambda: invalid_reports(mlxctl), 30, "the invalid file to be reported")
    os.kill(first, signal.SIGKILL)
    healed = wait_for(lambda: ready_pid(mlxctl, other_than=first), 120, "the tier to be healed")
    assert healed != first and not pid_alive(first)

    # Reported once, not at every resync (one a second here).
    time.sleep(3)
    (report,) = invalid_reports(mlxctl)
    assert "runtim" in str(report["message"])
    status = mlxctl.run("status", str(mlxctl.stacks))
    assert status.returncode == 0
    assert "invalid:" in status.stderr and "its last valid version is applied" in status.stderr
    assert "fast" in status.stdout and "ready" in status.stdout
    invalid = mlxctl.status()["invalid_files"]
    assert list(invalid) == [str(mlxctl.stacks / "stack.yaml")]

    # Suspended: killed, and left alone until resumed.
    mlxctl.write("stack.yaml", stack_yaml([{**spec, "suspend": True}]))
    wait_for(lambda: mlxctl.tier("fast")["sync"] == "Suspended", 30, "Suspended in status")
    os.kill(healed, signal.SIGKILL)
    time.sleep(4)  # four resyncs
    assert mlxctl.inventory()["fast"]["pid"] == healed  # not restarted
    mlxctl.write("stack.yaml", stack_yaml([spec]))
    wait_for(lambda: ready_pid(mlxctl, other_than=healed), 120, "the tier resumed")


def doc(name: str, tiers: list[dict[str, object]]) -> str:
    data = json.loads(stack_yaml(tiers))
    data["metadata"]["name"] = name
    return json.dumps(data, indent=2) + "\n"


def test_one_bad_model_blocks_its_tier_and_a_file_never_prunes_another_stack(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    fast_port, bad_port = free_ports(2)
    fast = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}}
    bad = {"name": "bad", "runtime": "mlx-lm", "model": {"path": str(broken)}}
    mlxctl.write("other.yaml", doc("other", [{**fast, "port": fast_port}]))
    main = mlxctl.write("main.yaml", doc("main", [{**bad, "port": bad_port}]))

    whole = mlxctl.run("reconcile", "--once", str(mlxctl.stacks))
    assert whole.returncode == 4, whole.stderr
    assert f"error: bad: {main}:" in whole.stderr and "config.json" in whole.stderr
    assert "Traceback" not in whole.stderr
    pid = ready_pid(mlxctl)
    assert pid is not None and mlxctl.inventory()["fast"]["stack"] == "other"

    # Applying main.yaml alone never stops what the stack "other" owns.
    diff = mlxctl.run("diff", "-f", str(main))
    assert "fast" not in diff.stdout and diff.returncode == 1  # 1: bad is blocked
    once = mlxctl.run("reconcile", "--once", "-f", str(main))
    assert once.returncode == 4 and ready_pid(mlxctl) == pid


def test_a_fixed_port_held_by_another_program_is_one_line_naming_it(
    mlxctl: Mlxctl, tiny_model: Path
) -> None:
    import socket
    import subprocess
    import sys

    [port] = free_ports(1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, time; s = socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(120)",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        spec = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}}
        mlxctl.write("stack.yaml", stack_yaml([{**spec, "port": port}]))
        result = mlxctl.run("reconcile", "--once", str(mlxctl.stacks))
        assert result.returncode == 4
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith(f"error: fast: port {port} is held by pid {holder.pid} (")
        assert sys.executable in errors[0]  # the holder's command line
    finally:
        holder.terminate()
        holder.wait(10)
