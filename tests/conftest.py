"""Shared fixtures: every test gets its own MLXCTL_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def mlxctl_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "mlxctl-home"
    monkeypatch.setenv("MLXCTL_HOME", str(home))
    return home


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
