"""The benchmark's statistics (vllm bench serve's vocabulary), as decision tables."""

from __future__ import annotations

import math

import pytest

from mlxctl.capacity.bench_stats import (
    RequestSample,
    distribution,
    gateway_share,
    percentile,
    summarize,
    tpot,
)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),  # one value is every percentile
        ([5.0], 99, 5.0),
        ([1.0, 2.0], 50, 1.5),  # interpolated between the two ranks
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([3.0, 1.0, 2.0], 50, 2.0),  # order does not matter
        ([1.0, 2.0, 3.0, 4.0, 5.0], 90, 4.6),
        (list(map(float, range(1, 101))), 99, 99.01),
        ([1.0, 2.0, 3.0], 0, 1.0),
        ([1.0, 2.0, 3.0], 100, 3.0),
    ],
)
def test_percentile_interpolates_between_closest_ranks(
    values: list[float], q: float, expected: float
) -> None:
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses_what_has_no_answer(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_distribution_of_nothing_is_none_and_of_values_has_the_usual_moments() -> None:
    assert distribution([]) is None
    d = distribution([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert d is not None
    assert (d.count, d.mean, d.std, d.median) == (8, 5.0, 2.0, 4.5)
    assert d.p50 == d.median and d.p90 == pytest.approx(7.6) and d.p99 <= 9.0


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (RequestSample(True, e2e=1.0, ttft=0.1, output_tokens=10), 0.1),  # 0.9 s / 9 tokens
        (RequestSample(True, e2e=1.0, ttft=0.1, output_tokens=1), None),  # no decode step
        (RequestSample(True, e2e=1.0, ttft=None, output_tokens=10), None),  # nothing came
        (RequestSample(True, e2e=0.5, ttft=0.5, output_tokens=2), 0.0),
    ],
)
def test_tpot_counts_the_tokens_after_the_first(
    sample: RequestSample, expected: float | None
) -> None:
    assert tpot(sample) == (pytest.approx(expected) if expected is not None else None)


def test_a_level_reports_latencies_in_ms_rates_and_aggregate_throughput() -> None:
    samples = [
        RequestSample(True, e2e=1.0, ttft=0.2, prompt_tokens=100, output_tokens=9,
                      itl=(0.1,) * 8),
        RequestSample(True, e2e=2.0, ttft=0.4, prompt_tokens=100, output_tokens=17,
                      itl=(0.1,) * 16),
        RequestSample(False, error="HTTP 503: busy"),
    ]  # fmt: skip
    level = summarize("gateway", 2, samples, duration_s=2.0)
    assert (level.completed, level.failed, level.errors) == (2, 1, ("HTTP 503: busy",))
    assert level.total_output_tokens == 26 and level.output_throughput == 13.0
    assert level.request_throughput == 1.0
    ttft = level.metrics["ttft_ms"]
    assert ttft is not None and ttft.p50 == pytest.approx(300.0)
    tpot_ms = level.metrics["tpot_ms"]
    assert tpot_ms is not None and tpot_ms.mean == pytest.approx(100.0)
    gen = level.metrics["generation_tps"]
    assert gen is not None and gen.p50 == pytest.approx(10.0)  # 1 / 0.1 s
    prompt = level.metrics["prompt_tps"]
    assert prompt is not None and prompt.p99 <= 500.0 and prompt.p50 == pytest.approx(375.0)
    itl = level.metrics["itl_ms"]
    assert itl is not None and itl.count == 24
    data = level.to_dict()
    assert set(data["metrics"]) == {
        "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "prompt_tps", "generation_tps",
    }  # fmt: skip


def test_a_level_where_everything_failed_has_no_distributions() -> None:
    level = summarize("direct", 1, [RequestSample(False, error="boom")], duration_s=0.0)
    assert level.completed == 0 and all(v is None for v in level.metrics.values())
    assert level.output_throughput == 0.0 and math.isfinite(level.request_throughput)


def test_the_gateway_share_is_the_median_difference() -> None:
    slow = [RequestSample(True, e2e=0.5, ttft=0.105, output_tokens=2)]
    fast = [RequestSample(True, e2e=0.49, ttft=0.1, output_tokens=2)]
    added = gateway_share(summarize("gateway", 1, slow, 1), summarize("direct", 1, fast, 1))
    assert added["ttft_ms_p50_added"] == pytest.approx(5.0)
    assert added["e2e_ms_p50_added"] == pytest.approx(10.0)
