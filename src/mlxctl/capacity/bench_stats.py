"""The statistics of a benchmark run, in ``vllm bench serve``'s vocabulary; pure.

Per request (one streamed chat completion):

- **TTFT**, time to first token: from sending the request to the first content chunk;
- **TPOT**, time per output token after the first: ``(e2e - ttft) / (output_tokens - 1)``;
- **ITL**, inter-token latency: each gap between two successive content chunks;
- **E2E**, end-to-end latency: from sending to the last byte;
- **prompt tok/s**: ``prompt_tokens / ttft`` (prefill, compute-bound);
- **generation tok/s**: ``(output_tokens - 1) / (e2e - ttft)`` (decode, bandwidth-bound).

Per concurrency level: each distribution's mean, median, standard deviation and p50,
p90, p99 (linear interpolation between closest ranks, numpy's default), and the
aggregate generation throughput: all output tokens over the level's wall time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)
METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "prompt_tps", "generation_tps")


@dataclass(frozen=True)
class RequestSample:
    """One request as the client saw it (seconds, relative to its own start)."""

    ok: bool
    e2e: float = 0.0
    ttft: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    # Gaps between successive content chunks, seconds.
    itl: tuple[float, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Distribution:
    count: int
    mean: float
    median: float
    std: float
    p50: float
    p90: float
    p99: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count, "mean": self.mean, "median": self.median, "std": self.std,
            "p50": self.p50, "p90": self.p90, "p99": self.p99,
        }  # fmt: skip


@dataclass(frozen=True)
class LevelSummary:
    """One concurrency level on one path (through the gateway, or direct to the tier)."""

    path: str
    concurrency: int
    completed: int
    failed: int
    duration_s: float
    total_prompt_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests per second of wall time
    output_throughput: float  # aggregate generation tok/s: output tokens / wall time
    metrics: dict[str, Distribution | None] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "concurrency": self.concurrency,
            "completed": self.completed,
            "failed": self.failed,
            "duration_s": self.duration_s,
            "total_prompt_tokens": self.total_prompt_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "metrics": {k: (v.to_dict() if v else None) for k, v in self.metrics.items()},
            "errors": list(self.errors),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> Distribution | None:
    """Mean, median, population standard deviation and p50/p90/p99; None when empty."""
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    p50, p90, p99 = (percentile(values, q) for q in PERCENTILES)
    return Distribution(len(values), mean, p50, std, p50, p90, p99)


def tpot(sample: RequestSample) -> float | None:
    """Seconds per output token after the first; None with fewer than two tokens."""
    if sample.ttft is None or sample.output_tokens < 2:
        return None
    return (sample.e2e - sample.ttft) / (sample.output_tokens - 1)


def summarize(
    path: str, concurrency: int, samples: Sequence[RequestSample], duration_s: float
) -> LevelSummary:
    """The level's distributions and aggregate throughput from its requests."""
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft for s in ok if s.ttft is not None]
    tpots = [t for t in (tpot(s) for s in ok) if t is not None]
    itl = [gap for s in ok for gap in s.itl]
    prompt_tps = [
        s.prompt_tokens / s.ttft for s in ok if s.ttft and s.ttft > 0 and s.prompt_tokens > 0
    ]
    gen_tps = [1 / t for t in tpots if t > 0]
    out_tokens = sum(s.output_tokens for s in ok)
    wall = max(duration_s, 1e-9)
    metrics = {
        "ttft_ms": distribution([t * 1000 for t in ttft]),
        "tpot_ms": distribution([t * 1000 for t in tpots]),
        "itl_ms": distribution([g * 1000 for g in itl]),
        "e2e_ms": distribution([s.e2e * 1000 for s in ok]),
        "prompt_tps": distribution(prompt_tps),
        "generation_tps": distribution(gen_tps),
    }
    errors = sorted({s.error for s in samples if not s.ok and s.error})
    return LevelSummary(
        path=path,
        concurrency=concurrency,
        completed=len(ok),
        failed=len(samples) - len(ok),
        duration_s=duration_s,
        total_prompt_tokens=sum(s.prompt_tokens for s in ok),
        total_output_tokens=out_tokens,
        request_throughput=len(ok) / wall,
        output_throughput=out_tokens / wall,
        metrics=metrics,
        errors=tuple(errors[:5]),
    )


def gateway_share(gateway: LevelSummary, direct: LevelSummary) -> dict[str, float | None]:
    """What the gateway adds, at the median: TTFT and E2E milliseconds (gateway - direct)."""
    out: dict[str, float | None] = {}
    for name in ("ttft_ms", "e2e_ms"):
        g, d = gateway.metrics.get(name), direct.metrics.get(name)
        out[f"{name}_p50_added"] = (g.p50 - d.p50) if g and d else None
    return out
