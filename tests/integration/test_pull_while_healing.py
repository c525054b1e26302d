"""A pull is a job: the controller heals a crash while a model downloads.

The local hub sends the model slowly (a slow link); meanwhile ``status`` shows the
pull's progress and a ``kill -9`` of another tier is healed at once, not after the
download.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.integration.conftest import Mlxctl, free_ports, ready_pid, stack_yaml, wait_for

from mlxctl.testing.hub import LocalHub

REPO = "org/slow"


def test_a_crash_is_healed_while_a_pull_runs(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    files: dict[str, bytes | str | Path] = {
        str(p.relative_to(tiny_model)): p for p in tiny_model.iterdir() if p.is_file()
    }
    local_hub.commit(REPO, files)
    size = sum(p.stat().st_size for p in tiny_model.iterdir() if p.is_file())
    local_hub.rate = max(size // 20, 1)  # about 20 s for the whole model
    ports = free_ports(2)
    fast_tier = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}}
    pulled_tier = {"name": "pulled", "runtime": "mlx-lm", "model": {"hf": REPO}}
    tiers = [{**fast_tier, "port": ports[0]}, {**pulled_tier, "port": ports[1]}]
    mlxctl.write("stack.yaml", stack_yaml(tiers))
    mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", "3600", log=tmp_path / "c.log")
    fast = wait_for(lambda: ready_pid(mlxctl), 120, "the fast tier to be ready")

    def pulling() -> dict[str, object] | None:
        row = mlxctl.tier("pulled")
        return row if row["health"] == "preparing" and "MB" in str(row["detail"]) else None

    row = wait_for(pulling, 60, "the pull to show its progress")
    assert "downloading" in str(row["detail"]) or "%" in str(row["detail"])

    os.kill(fast, signal.SIGKILL)
    healed = wait_for(lambda: ready_pid(mlxctl, other_than=fast), 60, "the fast tier healed")
    # Healed while the model was still downloading.
    assert mlxctl.tier("pulled")["health"] == "preparing", "the pull ended before the heal"
    assert healed != fast

    wait_for(lambda: ready_pid(mlxctl, name="pulled"), 180, "the pulled tier to be ready")
