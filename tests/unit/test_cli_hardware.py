"""``mlxctl hardware`` with an injected detector."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from mlxctl.capacity.hardware import GIB, HardwareProfile, parse_macos
from mlxctl.cli import hardware_cmd
from tests.unit.cli_errors import reported

runner = CliRunner()
M4_PRO = parse_macos("Apple M4 Pro", str(48 * GIB), "Total Number of Cores: 20")


def app(profile: HardwareProfile) -> click.Group:
    local = click.Group()
    hardware_cmd.register(local, detect=lambda: profile)
    return local


def test_hardware_text() -> None:
    result = runner.invoke(app(M4_PRO), ["hardware"])
    assert result.exit_code == 0
    assert "m4-pro-48" in result.output
    assert "273 GB/s" in result.output
    assert "36.0 GiB by default" in result.output


def test_hardware_json() -> None:
    result = runner.invoke(app(M4_PRO), ["hardware", "--output", "json"])
    data = json.loads(result.output)
    assert data["profile_id"] == "m4-pro-48"
    assert data["bandwidth_gbps"] == 273
    assert data["bandwidth_estimated"] is False
    assert data["gpu_cores"] == 20
    assert data["default_budget_bytes"] == 36 * GIB


def test_hardware_detection_failure(capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> HardwareProfile:
        raise OSError("sysctl missing")

    local = click.Group()
    hardware_cmd.register(local, detect=broken)

    result = runner.invoke(local, ["hardware"])
    code, stderr = reported(result, capsys)
    assert code == 4
    assert stderr.strip() == "error: cannot detect the hardware: sysctl missing"
