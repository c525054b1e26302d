"""``mlxctl logs NAME``: a log name is a service name, nothing else (#11 row 9)."""

from __future__ import annotations

import pytest

from mlxctl.cli import main
from mlxctl.paths import default_paths


@pytest.fixture
def logs_with_a_secret_next_door() -> None:
    """A tier's log, and a readable ``*.log`` outside the logs directory."""
    paths = default_paths()
    paths.logs.mkdir(parents=True)
    (paths.logs / "fast.log").write_text("fast line\n")
    (paths.state / "private.log").write_text("not a service log\n")
    paths.gateway.mkdir()
    (paths.gateway / "x.log").write_text("not a service log either\n")


@pytest.mark.usefixtures("logs_with_a_secret_next_door")
@pytest.mark.parametrize(
    "name", ["../private", "../gateway/x", "/etc/passwd", "fast/../fast", "FAST", "", "a\nb", ".."]
)
def test_a_name_that_is_not_a_service_name_is_refused(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    assert main(["logs", name]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("error: ") and "is not a service name" in line


@pytest.mark.usefixtures("logs_with_a_secret_next_door")
def test_a_service_name_prints_its_log(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "fast"]) == 0
    assert capsys.readouterr().out == "fast line\n"
    assert main(["logs", "agent"]) == 7
    assert "no log for 'agent' (known: fast)" in capsys.readouterr().err
