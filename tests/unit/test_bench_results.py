"""Stored benchmark results: what is saved reads back; a hostile file is skipped, not trusted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlxctl.machine.bench_results import load_all, result_path, save


def report(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "tier": "fast",
        "measured_at": 1_790_000_000.0,
        "model": {"identity": "hf:mlx-community/Qwen3-8B-4bit", "display": "Qwen3-8B",
                  "weights_bytes": 4_600_000_000},
        "hardware": {"profile_id": "m4-pro-48", "chip": "Apple M4 Pro", "accelerator": "metal"},
        "runs": [
            {"path": "direct", "concurrency": 1, "completed": 4, "output_throughput": 50.0,
             "metrics": {"generation_tps": {"p50": 55.0, "p90": 56.0, "p99": 57.0, "mean": 55.2},
                         "prompt_tps": {"p50": 400.0, "p90": 420.0, "p99": 430.0, "mean": 405.0},
                         "itl_ms": None}},
        ],
    }  # fmt: skip
    doc.update(changes)
    return doc


def test_a_saved_result_reads_back_with_its_single_stream_speeds(tmp_path: Path) -> None:
    where = save(tmp_path, report())
    assert where == result_path(tmp_path, "m4-pro-48", "hf:mlx-community/Qwen3-8B-4bit")
    assert where.stat().st_mode & 0o777 == 0o600
    found, skipped = load_all(tmp_path, "m4-pro-48")
    assert skipped == [] and len(found) == 1
    assert found[0].generation_tps() == 55.0 and found[0].prompt_tps() == 400.0
    assert load_all(tmp_path, "m5-max-128") == ([], [])


@pytest.mark.parametrize(
    "hostile",
    [
        {"version": 99},
        {"measured_at": float("nan")},
        {"runs": [{"path": "direct", "concurrency": 0, "completed": 1, "output_throughput": 1.0,
                   "metrics": {}}]},
        {"tier": "x" * 10_000},
        {"model": "not an object"},
    ],
)  # fmt: skip
def test_a_hostile_file_is_skipped_with_its_reason(tmp_path: Path, hostile: dict[str, Any]) -> None:
    save(tmp_path, report())
    bad = tmp_path / "bench" / "m4-pro-48" / "bad.json"
    bad.write_text(json.dumps(report(**hostile)))
    found, skipped = load_all(tmp_path)
    assert len(found) == 1 and len(skipped) == 1 and str(bad) in skipped[0]


def test_not_json_and_a_fifo_are_skipped(tmp_path: Path) -> None:
    import os

    directory = tmp_path / "bench" / "m4-pro-48"
    directory.mkdir(parents=True)
    (directory / "junk.json").write_text("{not json")
    os.mkfifo(directory / "pipe.json")
    found, skipped = load_all(tmp_path)
    assert found == [] and len(skipped) == 2
