"""mlxctl init: tier choice under the SUMMED budget, and the checked-in reference stacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlxctl.capacity.hardware import GIB, HardwareProfile
from mlxctl.capacity.init_stack import (
    INTENTS,
    REFERENCE_MEMORY_GIB,
    capacity,
    generate_stack,
    quality_of,
    reference_stacks,
    render_stack_yaml,
    speed_score,
)
from mlxctl.capacity.memory import budget_bytes, check_budget, estimate_catalog_variant
from mlxctl.catalog.entries import Catalog, load_catalog
from mlxctl.errors import AdmissionError
from mlxctl.spec.loader import load_stack_set
from mlxctl.spec.schema import StackDocument

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(ROOT / "catalog")


def summed_check(doc: dict[str, Any], memory_gib: float, catalog: Catalog) -> Any:
    tiers = [
        (
            t["name"],
            estimate_catalog_variant(
                catalog.get(t["model"]), t.get("quant"), context=t.get("context"),
                concurrency=t.get("concurrency", 1),
            ),
        )
        for t in doc["spec"]["tiers"]
    ]  # fmt: skip
    budget = budget_bytes(int(memory_gib * GIB), doc["spec"].get("memory", {}).get("budget"))
    return check_budget(tiers, budget)


@pytest.mark.parametrize("size", REFERENCE_MEMORY_GIB)
def test_checked_in_reference_stack_is_what_init_writes(size: int, catalog: Catalog) -> None:
    expected = reference_stacks(catalog)[f"mac-{size}gb.yaml"]
    path = ROOT / "stacks" / f"mac-{size}gb.yaml"
    assert path.read_text() == expected, "run: uv run python scripts/regenerate_stacks.py"


@pytest.mark.parametrize("size", REFERENCE_MEMORY_GIB)
def test_reference_stack_validates_and_fits(size: int, catalog: Catalog) -> None:
    path = ROOT / "stacks" / f"mac-{size}gb.yaml"
    stack = load_stack_set([path])
    assert [t.spec.name for t in stack.tiers] == ["standard", "fast"]
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(path.read_text())
    StackDocument.model_validate(doc)
    check = summed_check(doc, size, catalog)
    assert check.fits, check.message


@pytest.mark.parametrize("intent", INTENTS)
@pytest.mark.parametrize("size", [8, *REFERENCE_MEMORY_GIB])
def test_every_intent_and_size_validates_and_fits(intent: str, size: int, catalog: Catalog) -> None:
    stack, why = generate_stack(size, intent, None, catalog=catalog)
    StackDocument.model_validate(stack)
    assert summed_check(stack, size, catalog).fits
    models = [t["model"] for t in stack["spec"]["tiers"]]
    assert len(models) == len(set(models))
    for tier in stack["spec"]["tiers"]:
        assert why.tiers[tier["name"]], "every tier is explained"
        assert catalog.get(tier["model"]).measured, "only measured models are recommended"


def test_agents_run_on_vllm_mlx_with_the_models_tool_parser(catalog: Catalog) -> None:
    stack, _ = generate_stack(48, "agents", None, catalog=catalog)
    for tier in stack["spec"]["tiers"]:
        parser = catalog.get(tier["model"]).capabilities.tool_call_parser
        assert tier["runtime"] == "vllm-mlx"
        assert parser is not None
        assert tier["args"]["enable-auto-tool-choice"] is True
        assert tier["args"]["tool-call-parser"] == parser
        assert tier["concurrency"] == 2
        assert tier["args"]["continuous-batching"] is True


def test_balanced_tiers_run_on_mlx_lm(catalog: Catalog) -> None:
    stack, _ = generate_stack(24, "balanced", None, catalog=catalog)
    assert {t["runtime"] for t in stack["spec"]["tiers"]} == {"mlx-lm"}
    assert stack["metadata"] == {"name": "mac-24gb"}
    assert stack["spec"]["memory"] == {"budget": 0.75}
    assert stack["spec"]["gateway"] == {"port": 4000}


def test_small_machine_gets_one_tier(catalog: Catalog) -> None:
    stack, _ = generate_stack(8, "balanced", None, catalog=catalog)
    assert len(stack["spec"]["tiers"]) == 1
    assert stack["spec"]["memory"] == {"budget": 0.5}


def test_explicit_budget_is_written_and_respected(catalog: Catalog) -> None:
    stack, why = generate_stack(64, "balanced", "20GB", catalog=catalog)
    assert stack["spec"]["memory"] == {"budget": "20GB"}
    assert summed_check(stack, 64, catalog).total <= 20 * 10**9
    assert "memory budget 18.6 GiB" in why.header[1]


def test_budget_too_small_for_anything(catalog: Catalog) -> None:
    with pytest.raises(AdmissionError) as info:
        generate_stack(8, "balanced", "1GiB", catalog=catalog)
    assert "smollm2-135m-instruct" in str(info.value)


def test_detected_machine_uses_its_bandwidth(catalog: Catalog) -> None:
    hw = HardwareProfile(
        chip="Apple M5 Max", memory_bytes=128 * GIB, gpu_cores=40, bandwidth_gbps=614,
        bandwidth_estimated=False, profile_id="m5-max-128", os="macos", accelerator="metal",
    )  # fmt: skip
    stack, why = generate_stack(hw, "balanced", None, catalog=catalog)
    assert stack["metadata"]["name"] == "m5-max-128"
    assert "614 GB/s" in why.header[0]
    assert any("measured on m5-max-128" in line for line in why.tiers["standard"])


def test_a_runner_up_that_scores_higher_says_why_it_was_not_chosen(catalog: Catalog) -> None:
    why = generate_stack(16, "agents", None, catalog=catalog).explanations
    [runner_up] = [line for line in why.tiers["agent"] if line.startswith("runner-up:")]
    chosen = next(line for line in why.tiers["agent"] if " score " in line)
    # qwen3.5-9b scores higher alone than the chosen agent, but not beside 'fast'.
    assert float(runner_up.split("score ")[1].split(",")[0]) > float(
        chosen.split("score ")[1].split(" ")[0]
    )
    assert "does not fit beside 'fast'" in runner_up
    fits_beside = [line for line in why.tiers["fast"] if line.startswith("runner-up:")]
    assert fits_beside and "does not fit" not in fits_beside[0]


def test_yaml_carries_the_explanations_as_comments(catalog: Catalog) -> None:
    text = render_stack_yaml(generate_stack(24, "coding", None, catalog=catalog))
    assert text.startswith("# mlxctl init --intent coding")
    assert "    # coder: code chat and coding agents" in text
    assert "score" in text and "runner-up" in text
    assert generate_stack(24, "coding", None, catalog=catalog) == generate_stack(
        24, "coding", None, catalog=catalog
    )


def test_score_terms(catalog: Catalog) -> None:
    assert speed_score(0) == 0 and speed_score(200) == 1 and speed_score(1000) == 1
    assert capacity(0.5) == 0 and capacity(70) == 1
    q4, basis = quality_of(catalog.get("qwen3.5-9b"), "4bit", coding=False)
    q8, _ = quality_of(catalog.get("qwen3.5-9b"), "8bit", coding=False)
    assert q8 - q4 == pytest.approx(0.03)
    assert "measured pass 0.98" in basis
    _, heuristic = quality_of(catalog.get("qwen3-8b"), "4bit", coding=False)
    assert "heuristic" in heuristic


def test_unknown_intent(catalog: Catalog) -> None:
    with pytest.raises(ValueError):
        generate_stack(24, "gaming", None, catalog=catalog)


def test_linux_machine_is_named_by_its_profile(catalog: Catalog) -> None:
    hw = HardwareProfile(
        chip="AMD EPYC", memory_bytes=32 * GIB, gpu_cores=None, bandwidth_gbps=None,
        bandwidth_estimated=True, profile_id="linux-cpu-32", os="linux", accelerator="cpu",
    )  # fmt: skip
    stack, why = generate_stack(hw, "balanced", None, catalog=catalog)
    assert stack["metadata"]["name"] == "linux-cpu-32"
    assert "memory bandwidth unknown" in why.header[0]


def test_this_machines_bench_results_replace_the_catalogs_numbers(catalog: Catalog) -> None:
    from mlxctl.capacity.hardware import parse_macos
    from mlxctl.capacity.init_stack import ROLES, candidates
    from mlxctl.capacity.memory import ThroughputEstimate

    hw = parse_macos("Apple M4 Max", str(128 * GIB), "Total Number of Cores: 40")
    role = ROLES["balanced"][0]
    mine = ThroughputEstimate(7.0, 50.0, False, "measured here by mlxctl bench (tier 'fast')")
    # A variant the catalog never measured becomes a candidate once measured here.
    unmeasured = ("qwen3-32b", "4bit")
    before = candidates(catalog, role, context=8192, profile_id=hw.profile_id, bandwidth=546.0)
    assert unmeasured not in {(c.model.id, c.quant) for c in before}
    after = candidates(
        catalog, role, context=8192, profile_id=hw.profile_id, bandwidth=546.0,
        measured_here={unmeasured: mine, ("qwen3-8b", "4bit"): mine},
    )  # fmt: skip
    chosen = {(c.model.id, c.quant): c for c in after}
    assert chosen[unmeasured].tps == 7.0 and chosen[unmeasured].speed_basis == mine.basis
    assert chosen[("qwen3-8b", "4bit")].tps == 7.0  # the catalog's own number is replaced
    # And the whole choice takes them: what init picks, once measured slow here, is not
    # picked again.
    plain = generate_stack(hw, "balanced", catalog=catalog)
    first = [(t["model"], t["quant"]) for t in plain.stack["spec"]["tiers"]]
    slow = {pick: ThroughputEstimate(0.5, None, False, "here") for pick in first}
    measured = generate_stack(hw, "balanced", catalog=catalog, measured_here=slow)
    again = [(t["model"], t["quant"]) for t in measured.stack["spec"]["tiers"]]
    assert again and not set(again) & set(first), (first, again)
