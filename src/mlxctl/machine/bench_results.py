"""Benchmark results kept in the state directory, one file per hardware profile and model.

``STATE/bench/<profile>/<model>.json`` holds the last ``mlxctl bench`` report for that
model on that machine (the whole report, as ``--output json`` prints it). A state file
is untrusted (see :mod:`mlxctl.machine.statemodel`): what is read back is what
:class:`StoredBench` validates; a file that fails is skipped with its reason.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from mlxctl.files import read_bounded
from mlxctl.machine.inventory import write_atomic
from mlxctl.machine.statemodel import ShortStr, StateModel, Text, Timestamp, problem

MAX_RESULT_BYTES = 1024 * 1024
BENCH_DIR = "bench"
Rate = Annotated[float, Field(ge=0.0, le=1e9, allow_inf_nan=False)]
Level = Annotated[int, Field(ge=1, le=4096)]


class StoredModel(StateModel):
    identity: Text
    display: Text
    weights_bytes: Annotated[int, Field(ge=0, le=1 << 50)]


class StoredHardware(StateModel):
    profile_id: ShortStr
    chip: ShortStr


class StoredDist(StateModel):
    p50: Rate
    p90: Rate
    p99: Rate
    mean: Rate


class StoredRun(StateModel):
    path: ShortStr
    concurrency: Level
    completed: Annotated[int, Field(ge=0, le=1 << 31)]
    output_throughput: Rate
    metrics: dict[ShortStr, StoredDist | None]


class StoredBench(StateModel):
    version: Annotated[int, Field(ge=1, le=1)]
    tier: ShortStr
    measured_at: Timestamp
    model: StoredModel
    hardware: StoredHardware
    runs: Annotated[list[StoredRun], Field(max_length=256)]

    def best(self, path: str = "direct") -> StoredRun | None:
        """The run with the highest single-stream median generation tok/s on ``path``."""
        runs = [r for r in self.runs if r.path == path and r.concurrency == 1]
        return runs[0] if runs else None

    def generation_tps(self, path: str = "direct") -> float | None:
        """Median decode tok/s of one stream (what the catalog's numbers mean)."""
        run = self.best(path) or self.best("gateway")
        dist = run.metrics.get("generation_tps") if run else None
        return dist.p50 if dist else None

    def prompt_tps(self, path: str = "direct") -> float | None:
        run = self.best(path) or self.best("gateway")
        dist = run.metrics.get("prompt_tps") if run else None
        return dist.p50 if dist else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "model"


def result_path(state: Path, profile_id: str, model_identity: str) -> Path:
    digest = hashlib.sha256(model_identity.encode()).hexdigest()[:10]
    name = _slug(model_identity.rsplit("/", 1)[-1])
    return state / BENCH_DIR / _slug(profile_id) / f"{name}-{digest}.json"


def save(state: Path, report: dict[str, Any]) -> Path:
    """Write ``report`` (validated first: what is saved can be read back)."""
    parsed = StoredBench.model_validate_json(json.dumps(report))
    path = result_path(state, parsed.hardware.profile_id, parsed.model.identity)
    write_atomic(path, json.dumps(report, indent=1) + "\n")
    return path


def load_all(state: Path, profile_id: str | None = None) -> tuple[list[StoredBench], list[str]]:
    """Every stored result (of ``profile_id`` when given), and one line per file skipped."""
    root = state / BENCH_DIR
    found: list[StoredBench] = []
    skipped: list[str] = []
    dirs = [root / _slug(profile_id)] if profile_id else sorted(root.glob("*"))
    for directory in dirs:
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            try:
                found.append(StoredBench.model_validate_json(read_bounded(path, MAX_RESULT_BYTES)))
            except ValidationError as exc:
                skipped.append(f"{path}: {problem(exc)}")
            except OSError as exc:
                skipped.append(f"{path}: {exc.strerror or exc}")
    return found, skipped
