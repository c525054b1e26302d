"""``mlxctl init`` with an injected catalog and machine."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from mlxctl.capacity.hardware import GIB, HardwareProfile, parse_macos
from mlxctl.capacity.init_stack import INTENTS
from mlxctl.catalog.entries import load_catalog
from mlxctl.cli import init_cmd
from mlxctl.spec.schema import StackDocument
from tests.unit.cli_errors import reported

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
M4_PRO = parse_macos("Apple M4 Pro", str(48 * GIB), "Total Number of Cores: 20")


def app(profile: HardwareProfile = M4_PRO) -> click.Group:
    local = click.Group()
    init_cmd.register(local, load=lambda: load_catalog(ROOT / "catalog"), detect=lambda: profile)
    return local


def test_intent_choices_match_the_planner() -> None:
    assert init_cmd.INTENTS == INTENTS


def test_init_prints_a_valid_stack_for_this_machine() -> None:
    result = runner.invoke(app(), ["init"])
    assert result.exit_code == 0
    assert result.output.startswith("# mlxctl init --intent balanced: Apple M4 Pro, m4-pro-48")
    doc = YAML(typ="safe").load(result.output)
    StackDocument.model_validate(doc)
    assert doc["metadata"]["name"] == "m4-pro-48"


def test_init_for_a_stated_memory_size_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "stack.yaml"
    result = runner.invoke(
        app(), ["init", "--memory", "24", "--intent", "agents", "--output", str(out)]
    )
    assert result.exit_code == 0
    assert f"wrote {out}" in result.output
    doc = YAML(typ="safe").load(out.read_text())
    assert doc["metadata"]["name"] == "mac-24gb"
    assert {t["runtime"] for t in doc["spec"]["tiers"]} == {"vllm-mlx"}


def test_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "stack.yaml"
    out.write_text("keep me")
    result = runner.invoke(app(), ["init", "--output", str(out)])
    code, stderr = reported(result, capsys)
    assert code == 2
    assert stderr.strip() == f"error: {out} exists; pass --force to overwrite it"
    assert out.read_text() == "keep me"
    assert runner.invoke(app(), ["init", "--output", str(out), "--force"]).exit_code == 0


def test_init_budget_forms() -> None:
    share = YAML(typ="safe").load(runner.invoke(app(), ["init", "--budget", "0.5"]).output)
    assert share["spec"]["memory"] == {"budget": 0.5}
    size = YAML(typ="safe").load(runner.invoke(app(), ["init", "--budget", "20GB"]).output)
    assert size["spec"]["memory"] == {"budget": "20GB"}


def test_init_bad_budget_and_impossible_budget(capsys: pytest.CaptureFixture[str]) -> None:
    code, stderr = reported(runner.invoke(app(), ["init", "--budget", "lots"]), capsys)
    assert code == 3
    assert stderr.startswith("error: memory size 'lots'")
    code, stderr = reported(runner.invoke(app(), ["init", "--budget", "1GiB"]), capsys)
    assert code == 8
    assert stderr.startswith("error: no measured catalog model fits")


def test_init_scores_with_this_machines_bench_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlxctl.machine.bench_results import save
    from tests.unit.test_bench_results import report

    monkeypatch.setenv("MLXCTL_HOME", str(tmp_path))
    catalog = load_catalog(ROOT / "catalog")
    plain = YAML(typ="safe").load(runner.invoke(app(), ["init"]).output)
    picks = [(t["model"], t["quant"]) for t in plain["spec"]["tiers"]]
    for model_id, quant in picks:  # measured here: far slower than the catalog says
        repo = catalog.get(model_id).variants[quant].repo
        slow = report(
            model={"identity": f"hf:{repo}@abc", "display": repo, "weights_bytes": 1},
            hardware={"profile_id": M4_PRO.profile_id, "chip": M4_PRO.chip},
        )
        slow["runs"][0]["metrics"]["generation_tps"]["p50"] = 0.5
        save(tmp_path / "state", slow)
    hostile = tmp_path / "state" / "bench" / M4_PRO.profile_id / "bad.json"
    hostile.write_text('{"version": 1}')
    result = runner.invoke(app(), ["init"])
    assert result.exit_code == 0, result.output
    again = YAML(typ="safe").load(result.stdout)
    assert not {(t["model"], t["quant"]) for t in again["spec"]["tiers"]} & set(picks)
    assert f"warning: bench result skipped: {hostile}" in result.stderr
