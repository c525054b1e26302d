"""Shared fixtures: every test gets its own MLXCTL_HOME."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def mlxctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "mlxctl-home"
    monkeypatch.setenv("MLXCTL_HOME", str(home))
    return home


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A user's process (its own session, no mlxctl marker) that nothing of mlxctl's may
    signal; killed by its PID at the end."""
    proc = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration starts real servers: mark it so.

    The long fuzz run (``fuzz``) runs only when a ``-m`` expression names it: a
    ``-m "not integration"`` replaces the default ``addopts`` one, and must not turn
    the few-seconds unit run into minutes.
    """
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
    if "fuzz" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("fuzz") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
