"""The lock file across machines: pinned once, reproduced elsewhere, moved by ``models update``.

Two "machines" are two state directories with two Hugging Face caches, reading the
same stack directory (the dotfiles repo) from the same local hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.integration.conftest import Mlxctl, free_ports, stack_yaml
from tests.integration.test_hub_pull import REPO, tiny_repo

from mlxctl.sources.lockfile import read_lock
from mlxctl.testing.hub import LocalHub


def test_another_machine_gets_the_locked_commit_and_update_restarts_only_that_tier(
    mlxctl: Mlxctl,
    local_hub: LocalHub,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = tiny_repo(local_hub, tiny_model)
    stack = mlxctl.write(
        "laptop.yaml",
        stack_yaml(
            [
                {"name": "hub", "runtime": "mlx-lm", "model": {"hf": REPO}},
                {"name": "local", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}},
            ]
        ),
    )
    lock = stack.with_name("laptop.lock.yaml")
    done = mlxctl.run("reconcile", "--once", str(mlxctl.stacks), timeout=180)
    assert done.returncode == 0, done.stderr
    assert [e.revision for e in read_lock(lock).values()] == [first]

    # The hub moves on: main gets a new commit (a changed runtime file).
    files = {str(p.relative_to(tiny_model)): p for p in tiny_model.iterdir() if p.is_file()}
    second = local_hub.commit(REPO, {**files, "generation_config.json": '{"temperature": 0.1}'})

    # Machine B: its own state and cache, the same stack directory and lock.
    other = Mlxctl(home=tmp_path / "home-b", stacks=mlxctl.stacks)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache-b"))
    # Both "machines" share this host: B's own port assignments (machine-local state).
    ports = free_ports(2)
    (other.home / "state").mkdir(parents=True)
    (other.home / "state" / "ports.json").write_text(
        json.dumps({"hub": ports[0], "local": ports[1]})
    )
    try:
        served = len(local_hub.downloads())
        converged = other.run("reconcile", "--once", str(mlxctl.stacks), timeout=180)
        assert converged.returncode == 0, converged.stderr
        fetched = local_hub.downloads()[served:]
        assert fetched and all(f"/resolve/{first}/" in r.path for r in fetched)
        assert f"snapshots/{first}" in " ".join(other.inventory()["hub"]["cmdline"])
        assert [e.revision for e in read_lock(lock).values()] == [first]  # untouched
    finally:
        other.cleanup()
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))

    # Machine A moves the lock on purpose; diff shows it as a restart of that tier only.
    local_pid = mlxctl.inventory()["local"]["pid"]
    updated = mlxctl.run("models", "update", "-f", str(stack), "-o", "json")
    assert updated.returncode == 0, updated.stderr
    [change] = json.loads(updated.stdout)["changes"]
    assert (change["tier"], change["old"], change["new"]) == ("hub", first, second)
    assert [e.revision for e in read_lock(lock).values()] == [second]

    diff = mlxctl.run("diff", str(mlxctl.stacks))
    assert diff.returncode == 1, diff.stderr
    # The new revision is pulled first while the old server keeps serving; the restart
    # follows once it is there.
    [line] = [ln for ln in diff.stdout.splitlines() if "restart" in ln and "Plan:" not in ln]
    assert "hub" in line and "restart once its model is ready" in line
    assert f"revision changed: {first[:12]} -> {second[:12]}" in line
    assert "1 model(s) to prepare" in diff.stdout

    again = mlxctl.run("reconcile", "--once", str(mlxctl.stacks), timeout=180)
    assert again.returncode == 0, again.stderr
    assert f"snapshots/{second}" in " ".join(mlxctl.inventory()["hub"]["cmdline"])
    assert mlxctl.inventory()["local"]["pid"] == local_pid  # the other tier never restarted

    # models update with nothing new changes nothing.
    unchanged = mlxctl.run("models", "update", "-f", str(stack))
    assert unchanged.returncode == 0, unchanged.stderr
    assert "every locked revision is current" in unchanged.stdout
