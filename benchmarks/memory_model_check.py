"""Compare the memory formula with the peak memory measured in the benchmark data.

    uv run python benchmarks/memory_model_check.py [--json FILE] [--context N]

For every catalog variant with a measurement, the pure formula of ``mlxctl.capacity.memory``
(weights from the catalog's disk size + KV cache for ``--context`` tokens + 1 GiB +
20% of the weights; no calibration from the measurement itself) is compared with the
measured peak. Prints one row per (variant, hardware profile) and the median and
maximum absolute percentage error; ``--json`` writes the rows and the summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from mlxctl.capacity.memory import BENCHMARK_CONTEXT, GIB, estimate, layout_of
from mlxctl.catalog.entries import load_catalog


def rows(context: int) -> list[dict[str, Any]]:
    out = []
    for model in load_catalog().models:
        for key, variant in model.variants.items():
            for profile, bench in sorted(variant.benchmarks.items()):
                est = estimate(variant.disk_bytes.value, layout_of(model), context=context)
                measured = bench.peak_memory_gib
                estimated = est.total / GIB
                out.append(
                    {
                        "model": model.id,
                        "quant": key,
                        "profile": profile,
                        "measured_gib": measured,
                        "estimated_gib": round(estimated, 2),
                        "weights_gib": round(est.weights / GIB, 2),
                        "kv_cache_gib": round(est.kv_cache / GIB, 3),
                        "overhead_gib": round(est.overhead / GIB, 2),
                        "error_pct": round((estimated - measured) / measured * 100, 1),
                    }
                )
    return out


def summary(data: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error_pct"] for r in data]
    absolute = [abs(e) for e in errors]
    worst = max(data, key=lambda r: abs(r["error_pct"]))
    return {
        "n": len(data),
        "median_abs_error_pct": round(statistics.median(absolute), 1),
        "max_abs_error_pct": round(max(absolute), 1),
        "mean_error_pct": round(statistics.mean(errors), 1),
        "underestimates": sum(1 for e in errors if e < 0),
        "worst": f"{worst['model']} {worst['quant']} on {worst['profile']}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write rows and summary to this file")
    parser.add_argument("--context", type=int, default=BENCHMARK_CONTEXT)
    args = parser.parse_args(argv)
    data = rows(args.context)
    header = (
        f"{'model':<36} {'quant':<5} {'profile':<11} {'measured':>8} {'estimate':>8} {'error':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in data:
        print(
            f"{r['model']:<36} {r['quant']:<5} {r['profile']:<11} "
            f"{r['measured_gib']:>8.2f} {r['estimated_gib']:>8.2f} {r['error_pct']:>6.1f}%"
        )
    stats = summary(data)
    print(
        f"\n{stats['n']} measurements: median |error| {stats['median_abs_error_pct']}%, "
        f"max |error| {stats['max_abs_error_pct']}% ({stats['worst']}), "
        f"mean error {stats['mean_error_pct']}%, {stats['underestimates']} underestimates"
    )
    if args.json:
        args.json.write_text(json.dumps({"summary": stats, "rows": data}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
