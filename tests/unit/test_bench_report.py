"""The bench report (pure) and its text: the ceiling, the share per level, the chart."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlxctl.app.bench import Settings, Target, report
from mlxctl.capacity.bench_stats import LevelSummary, RequestSample, summarize
from mlxctl.capacity.memory import KvLayout
from mlxctl.capacity.roofline import Bandwidth, ceiling
from mlxctl.cli.bench_cmd import render

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "bench-report.schema.json"
HW = SimpleNamespace(profile_id="m4-pro-48", chip="Apple M4 Pro", accelerator="metal")
TARGET = Target("fast", None, "hf:mlx-community/Qwen3-8B-4bit@abc", "Qwen3-8B-4bit", None)


def level(path: str, concurrency: int, tpot: float) -> LevelSummary:
    # 33 tokens: 1 after TTFT 0.1 s, then 32 at ``tpot`` s each.
    samples = [
        RequestSample(True, e2e=0.1 + 32 * tpot, ttft=0.1, prompt_tokens=256,
                      output_tokens=33, itl=(tpot,) * 32)
        for _ in range(concurrency)
    ]  # fmt: skip
    return summarize(path, concurrency, samples, duration_s=0.1 + 32 * tpot)


def test_the_share_is_decode_rate_over_the_ceiling_at_each_level() -> None:
    bw = Bandwidth(273.0, "Apple's published figure for hardware profile m4-pro-48")
    limit = ceiling(4_610_000_000, KvLayout(36, 8, 128), 256, bw, moe=False)
    runs = [level("direct", 1, 1 / 50), level("gateway", 1, 1 / 49), level("direct", 4, 1 / 40)]
    settings = Settings(concurrency=(1, 4), requests=4, prompt_tokens=256, max_tokens=33)
    doc = report(TARGET, HW, settings, bw, limit, "", runs, 1_790_000_000.0)
    one = next(r for r in doc["runs"] if r["path"] == "direct" and r["concurrency"] == 1)
    assert one["decode_tps"] == pytest.approx(50.0)
    assert one["ceiling_tps"] == pytest.approx(273e9 / (4_610_000_000 + 256 * 147_456))
    assert one["share"] == pytest.approx(50.0 / one["ceiling_tps"])
    four = next(r for r in doc["runs"] if r["concurrency"] == 4)
    assert four["decode_tps"] == pytest.approx(160.0) and four["ceiling_tps"] > 4 * 50
    assert doc["gateway_added"] == {
        "1": {
            "ttft_ms_p50_added": pytest.approx(0.0),
            "e2e_ms_p50_added": pytest.approx(13.06, abs=0.01),
        }
    }
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(doc)), json.loads(SCHEMA.read_text()))
    text = render(doc)
    assert "ceiling: 273.0 GB/s / 4.65 GB per token (weights 4.61 GB + KV cache 37.75 MB" in text
    assert "= 58.7 tok/s for one stream" in text
    assert "\ndirect   4     4/4" in text  # a row per path and level
    assert "aggregate generation tok/s" not in text  # the chart is the terminal's alone
    assert "gateway adds at x1: TTFT p50 +0.0 ms, E2E p50 +13.1 ms" in text


def test_without_a_ceiling_the_text_says_why() -> None:
    bw = Bandwidth(None, "unknown: ...; pass --bandwidth GB/s")
    settings = Settings(concurrency=(1,), requests=1)
    doc = report(TARGET, HW, settings, bw, None, "the model's directory is not on this machine",
                 [level("gateway", 1, 0.02)], 0.0)  # fmt: skip
    text = render(doc)
    assert "ceiling: unknown (the model's directory is not on this machine)" in text
    assert "pass --bandwidth GB/s" in text
    assert doc["runs"][0]["share"] is None
