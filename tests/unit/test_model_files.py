"""Model-side files mlxctl reads (config.json, the converter's source marker, the
gateway's routes file): bounded, regular files only, never blocking; a present model
whose config.json cannot be read blocks its tier instead of starting a server that
would crash on it (issue 15, medium rows)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlxctl.desired.state import DesiredService, DesiredState, ModelRef
from mlxctl.machine.interfaces import ProgressFn, no_progress
from mlxctl.observe.gather import config_problem, observe
from mlxctl.observe.health import HealthSource
from mlxctl.observe.state import ObservedState
from mlxctl.plan.actions import PlanOptions
from mlxctl.plan.planner import plan
from mlxctl.runtimes.base import ProbeSpec
from mlxctl.sources.gguf_convert import SOURCE_MARKER, read_source_marker
from mlxctl.testing.fakes import FakeClock, FakeProcs


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s result, failing (not hanging) when it blocks longer than ``seconds``."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still blocked after {seconds}s"
    return out[0]


def model_dir(tmp_path: Path, config: str | None) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    if config is not None:
        (directory / "config.json").write_text(config)
    return directory


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ("{not json", "cannot read the model config"),
        ("[1, 2]", "not a JSON object"),
        ("\udcff", "cannot read the model config"),
    ],
)
def test_a_config_that_is_not_a_json_object_is_one_line_naming_it(
    tmp_path: Path, config: str, says: str
) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_bytes(config.encode("utf-8", "surrogateescape"))
    problem = config_problem(directory)
    assert problem is not None and says in problem and "\n" not in problem
    assert str(directory / "config.json") in problem


def test_a_fifo_or_device_config_is_refused_without_blocking(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, None)
    os.mkfifo(directory / "config.json")
    assert "FIFO" in within(5, lambda: config_problem(directory))
    (directory / "config.json").unlink()
    (directory / "config.json").symlink_to("/dev/zero")
    assert "character device" in within(5, lambda: config_problem(directory))


def test_a_good_or_absent_config_is_no_problem(tmp_path: Path) -> None:
    assert config_problem(model_dir(tmp_path, '{"model_type": "llama"}')) is None
    assert config_problem(tmp_path / "nowhere") is None


def test_a_fifo_source_marker_reads_as_absent_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / SOURCE_MARKER)
    assert within(5, lambda: read_source_marker(tmp_path)) is None
    (tmp_path / SOURCE_MARKER).unlink()
    (tmp_path / SOURCE_MARKER).write_bytes(b"{" + b" " * (1 << 20) + b"}")
    assert read_source_marker(tmp_path) is None  # over the cap: converted again


class Store:
    """Every model is there (the pull just finished)."""

    def present(self, model: ModelRef) -> bool:
        return True

    def prepare(self, model: ModelRef, progress: ProgressFn = no_progress) -> Path:
        raise AssertionError("nothing to prepare")


class NoHealth:
    def sample(self, records: Any) -> dict[str, Any]:
        return {}


class Clock:
    def time(self) -> float:
        return 1000.0


def tier(name: str, directory: Path, port: int) -> DesiredService:
    model = ModelRef("hf", f"hf:{name}", directory, name)
    return DesiredService(
        name=name, role="tier", runtime="mlx-lm", port=port, argv=("srv", name), env=(),
        files=(), model=model, launch={"runtime": "mlx-lm"}, spec_hash=f"v1:{name}",
        probe=ProbeSpec("mlx-lm", port), startup_timeout=300.0, source="stack.yaml:1",
    )  # fmt: skip


def test_a_just_pulled_broken_config_blocks_its_tier_and_the_other_starts(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good = model_dir(tmp_path / "a", '{"model_type": "llama"}')
    bad = model_dir(tmp_path / "b", "{not json")
    desired = DesiredState(tiers=(tier("good", good, 8001), tier("bad", bad, 8002)), gateway=None)
    health: HealthSource = NoHealth()  # type: ignore[assignment]
    seen = observe(
        {},
        desired,
        procs=FakeProcs(FakeClock()),
        health=health,
        clock=Clock(),
        store=Store(),  # type: ignore[arg-type]
    )
    assert seen.models_present == frozenset({"hf:good"})
    assert str(bad / "config.json") in seen.models_unusable["hf:bad"]
    the_plan = plan(desired, seen, PlanOptions())
    assert [(a.kind, a.target) for a in the_plan.actions if a.kind == "start"] == [
        ("start", "good")
    ]
    assert not any(a.target == "bad" and a.kind in ("start", "prepare") for a in the_plan.actions)
    assert "cannot be used" in the_plan.blocked["bad"]
    assert str(bad / "config.json") in the_plan.blocked["bad"]


def test_the_planner_blocks_an_unusable_model_and_never_prepares_it_again() -> None:
    service = tier("bad", Path("/m/bad"), 8002)
    seen = ObservedState(now=1000.0, models_unusable={"hf:bad": "/m/bad/config.json: not JSON"})
    the_plan = plan(DesiredState(tiers=(service,), gateway=None), seen, PlanOptions())
    assert the_plan.blocked == {"bad": "model bad cannot be used: /m/bad/config.json: not JSON"}
    assert [a.kind for a in the_plan.actions] == []
