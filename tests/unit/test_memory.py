"""The memory model: estimates, the summed budget check, and throughput scaling."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

from mlxctl.capacity.memory import (
    GIB,
    KvLayout,
    MemoryEstimate,
    budget_bytes,
    check_budget,
    default_budget_bytes,
    estimate,
    estimate_catalog_variant,
    estimate_throughput,
    kv_cache_bytes,
    layout_from_config,
    parse_size,
    runtime_overhead,
    smaller_variants,
)
from mlxctl.capacity.model_dir import estimate_from_model_dir
from mlxctl.catalog.entries import Catalog, load_catalog
from mlxctl.errors import AdmissionError, ExitCode, SpecError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(ROOT / "catalog")


def est(total_gib: float, kv_gib: float = 0.0) -> MemoryEstimate:
    kv = int(kv_gib * GIB)
    overhead = GIB // 2
    return MemoryEstimate.of(int(total_gib * GIB) - kv - overhead, kv, overhead)


def test_kv_cache_of_a_dense_model() -> None:
    qwen3_8b = KvLayout(full_layers=36, kv_heads=8, head_dim=128)
    # 2 (K, V) x 2 bytes x 8 heads x 128 dims x 36 layers = 147456 bytes per token
    assert kv_cache_bytes(qwen3_8b, 1) == 147456
    assert kv_cache_bytes(qwen3_8b, 32768) == 147456 * 32768
    assert kv_cache_bytes(qwen3_8b, 32768, concurrency=4) == 4 * 147456 * 32768


def test_sliding_window_layers_stop_growing_at_the_window() -> None:
    gemma = KvLayout(
        full_layers=5, kv_heads=4, head_dim=256, sliding_layers=29, sliding_window=1024
    )
    per_layer_token = 2 * 2 * 4 * 256
    assert kv_cache_bytes(gemma, 512) == per_layer_token * 34 * 512
    assert kv_cache_bytes(gemma, 32768) == per_layer_token * (5 * 32768 + 29 * 1024)


def test_kv_cache_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        kv_cache_bytes(KvLayout(1, 1, 1), 0)


def test_estimate_is_the_sum_of_its_parts() -> None:
    e = estimate(4 * GIB, KvLayout(36, 8, 128), context=8192, concurrency=2)
    assert e.total == e.weights + e.kv_cache + e.overhead
    assert e.overhead == runtime_overhead(4 * GIB) == GIB + int(0.2 * 4 * GIB)
    assert e.kv_cache == 2 * 147456 * 8192
    with pytest.raises(ValueError):
        MemoryEstimate(1, 1, 1, 4)


def test_describe_names_every_part() -> None:
    e = MemoryEstimate.of(4 * GIB, 2 * GIB, GIB, "qwen3-8b 4bit")
    assert e.describe() == "7.0 GiB (weights 4.0 + KV cache 2.0 + overhead 1.0); qwen3-8b 4bit"


def test_unknown_layout_uses_a_high_kv_guess() -> None:
    e = estimate(GIB, None, context=1000)
    assert e.kv_cache == 1000 * 512 * 1024


def test_catalog_estimate_never_undercounts_a_measured_peak(catalog: Catalog) -> None:
    for model in catalog.models:
        for key, variant in model.variants.items():
            for bench in variant.benchmarks.values():
                e = estimate_catalog_variant(model, key, context=2048)
                assert e.total >= bench.peak_memory_gib * GIB - 1, (model.id, key)


def test_catalog_estimate_defaults(catalog: Catalog) -> None:
    model = catalog.get("qwen3-8b")
    e = estimate_catalog_variant(model)
    assert e.weights == model.variants["4bit"].disk_bytes.value
    assert e.kv_cache == 147456 * 32768
    assert "32768 tokens x 1" in e.basis
    demo = estimate_catalog_variant(catalog.get("smollm2-135m-instruct"))
    assert "8192 tokens" in demo.basis  # capped at the model's own context


def test_smaller_variants(catalog: Catalog) -> None:
    options = smaller_variants(catalog.get("qwen3.5-9b"), "bf16")
    assert [k for k, _ in options] == ["4bit", "8bit"]
    assert smaller_variants(catalog.get("qwen3.5-9b"), "4bit") == ()


# --- budget ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory_gib", "budget_gib"), [(8, 4), (16, 12), (24, 18), (64, 48), (192, 144)]
)
def test_default_budget_leaves_room_for_macos(memory_gib: int, budget_gib: int) -> None:
    assert default_budget_bytes(memory_gib * GIB) == budget_gib * GIB


def test_budget_forms() -> None:
    assert budget_bytes(32 * GIB, None) == 24 * GIB
    assert budget_bytes(32 * GIB, 0.5) == 16 * GIB
    assert budget_bytes(32 * GIB, "0.5") == 16 * GIB
    assert budget_bytes(32 * GIB, "18GiB") == 18 * GIB
    assert budget_bytes(32 * GIB, "18GB") == 18 * 10**9
    assert parse_size("512MiB") == 512 * 1024**2
    with pytest.raises(SpecError):
        budget_bytes(32 * GIB, 1.5)
    with pytest.raises(SpecError):
        budget_bytes(32 * GIB, "lots")


def test_tiers_that_fit_together() -> None:
    check = check_budget([("fast", est(2)), ("standard", est(10))], 18 * GIB)
    assert check.fits
    assert check.total == 12 * GIB
    check.require()


def test_sum_is_checked_not_each_tier() -> None:
    tiers = [("a", est(8)), ("b", est(8)), ("c", est(8))]
    assert all(e.total <= 18 * GIB for _, e in tiers)
    check = check_budget(tiers, 18 * GIB)
    assert not check.fits
    with pytest.raises(AdmissionError) as info:
        check.require()
    assert info.value.exit_code == ExitCode.ADMISSION_REFUSED


def test_refusal_names_tiers_sum_budget_and_the_fix() -> None:
    tiers = [("fast", est(3, kv_gib=1)), ("standard", est(14, kv_gib=4)), ("coder", est(9))]
    check = check_budget(tiers, 18 * GIB)
    lines = check.message.splitlines()
    assert "memory budget" in lines[0]  # the planner maps this phrase to exit code 8
    assert "26.0 GiB" in lines[0] and "18.0 GiB" in lines[0] and "8.0 GiB" in lines[0]
    assert lines[1].split()[:2] == ["fast", "3.0"]
    assert lines[2].split()[:2] == ["standard", "14.0"]
    assert lines[3].split()[:2] == ["coder", "9.0"]
    assert "sum" in lines[4] and "26.0 GiB > budget 18.0 GiB" in lines[4]
    assert check.drop == ("standard",)
    assert "drop 'standard' (frees 14.0 GiB)" in lines[5]
    assert "KV caches take 5.0 GiB" in lines[5]


def test_fewest_tiers_to_drop_are_the_largest() -> None:
    tiers = [("a", est(6)), ("b", est(7)), ("c", est(8)), ("d", est(2))]
    check = check_budget(tiers, 9 * GIB)  # over by 14: c + b free 15
    assert check.drop == ("c", "b")


def test_alternatives_are_offered() -> None:
    tiers = [("standard", est(20)), ("fast", est(2))]
    alternatives = {"standard": [("quant 4bit", est(11)), ("quant 8bit", est(19))]}
    check = check_budget(tiers, 18 * GIB, alternatives=alternatives)
    assert "use quant 4bit for 'standard' (saves 9.0 GiB -- enough on its own)" in check.message
    assert "use quant 8bit for 'standard' (saves 1.0 GiB)" in check.message


def test_one_tier_too_big_suggests_shrinking_not_dropping_everything() -> None:
    check = check_budget([("only", est(30, kv_gib=10))], 18 * GIB)
    assert check.drop == ()
    assert "drop" not in check.message
    assert "shorten 'context'" in check.message


# --- models on disk --------------------------------------------------------------


def test_layout_from_llama_config() -> None:
    config = {
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "hidden_size": 576,
    }
    assert layout_from_config(config) == KvLayout(30, 3, 64)


def test_layout_from_hybrid_and_sliding_configs() -> None:
    qwen35 = {
        "model_type": "qwen3_5",
        "text_config": {
            "num_hidden_layers": 8,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "layer_types": ["linear_attention"] * 3
            + ["full_attention"]
            + ["linear_attention"] * 3
            + ["full_attention"],
        },
    }
    assert layout_from_config(qwen35) == KvLayout(2, 4, 256)
    gemma = {
        "num_hidden_layers": 12, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 256, "sliding_window": 1024, "sliding_window_pattern": 6,
    }  # fmt: skip
    assert layout_from_config(gemma) == KvLayout(2, 4, 256, 10, 1024)
    nemotron = {
        "num_hidden_layers": 6, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "hybrid_override_pattern": "M-M*-M",
    }  # fmt: skip
    assert layout_from_config(nemotron) == KvLayout(1, 8, 128)
    assert layout_from_config({"model_type": "mystery"}) is None


def test_estimate_from_model_dir(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "hidden_size": 64,
                "max_position_embeddings": 4096,
            }
        )
    )
    for name, size in (("model-00001.safetensors", 3000), ("model-00002.safetensors", 1000)):
        with open(tmp_path / name, "wb") as handle:
            handle.truncate(size)
    e = estimate_from_model_dir(tmp_path)
    assert e.weights == 4000
    assert e.kv_cache == 2 * 2 * 2 * 16 * 2 * 4096  # K,V x bf16 x heads x dim x layers x ctx
    assert "4096 tokens x 1" in e.basis
    assert (
        estimate_from_model_dir(tmp_path, context=100, concurrency=3).kv_cache
        == 2 * 2 * 2 * 16 * 2 * 300
    )


def test_model_dir_without_config_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError):
        estimate_from_model_dir(tmp_path)


# --- throughput ------------------------------------------------------------------


def test_measured_throughput_is_used_as_is(catalog: Catalog) -> None:
    variant = catalog.get("qwen3-8b").variants["4bit"]
    t = estimate_throughput(variant, "m4-pro-64", 273)
    assert t is not None and (t.generation_tps, t.estimated) == (51.1, False)


def test_unmeasured_machine_is_scaled_by_bandwidth(catalog: Catalog) -> None:
    variant = catalog.get("qwen3-8b").variants["4bit"]
    t = estimate_throughput(variant, "m1-max-64", 400)
    assert t is not None and t.estimated
    # the closest measured bandwidth is M4 Pro's 273 GB/s
    assert t.generation_tps == round(51.6 * 400 / 273, 1)
    assert "273" in t.basis and t.prompt_tps is None
    fast = estimate_throughput(variant, "m3-ultra-192", 819)
    assert fast is not None and fast.generation_tps == round(104.1 * 819 / 614, 1)


def test_no_measurement_no_throughput(catalog: Catalog) -> None:
    assert estimate_throughput(catalog.get("llama-3.3-70b").variants["4bit"], None, 400) is None


# --- the documented error ----------------------------------------------------------


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "memory_model_check", ROOT / "benchmarks" / "memory_model_check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_report_the_measured_error(tmp_path: Path) -> None:
    checker = _checker()
    out = tmp_path / "check.json"
    assert checker.main(["--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["n"] == 147
    docs = (ROOT / "docs" / "memory.md").read_text()
    assert re.search(rf"median absolute error\D+{summary['median_abs_error_pct']}%", docs)
    assert re.search(rf"maximum absolute error\D+{summary['max_abs_error_pct']}%", docs)
