"""The layering the brief asks for, checked on the source so that it cannot erode unnoticed.

- The core never imports the CLI (the CLI is thin wiring over it).
- The planner and the other pure modules import nothing that does I/O or reads a
  clock; the planner's whole closure inside mlxctl stays clear of the effect modules.
- ``status``, ``diff``, ``render`` and ``validate`` never import the heavy packages
  (mlx, mlx-lm, LiteLLM, transformers, huggingface_hub): every user pays for those
  imports on each call. This last check runs the CLI in a fresh interpreter, since
  this test process has imported everything already.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "mlxctl"

PURE_MODULES = (
    "plan.backoff",
    "desired.resolve",
    "runtimes.litellm",
    "capacity.init_stack",
    "capacity.memory",
    "observe.state",
    "plan.planner",
    "desired.render",
    "status.report",
    "runtimes.base",
    "status.services",
)
# Modules (top-level names) that start processes, talk to the network, sleep or read
# the clock, or otherwise act on the machine.
EFFECT_IMPORTS = frozenset(
    {
        "fcntl", "http", "httpx", "os", "psutil", "random", "shutil", "signal", "socket",
        "subprocess", "tempfile", "tenacity", "threading", "time", "urllib", "watchfiles",
    }
)  # fmt: skip
EFFECT_MODULES = frozenset(
    {
        "desired.admission", "cli", "machine.clock", "reconcile.controller", "reconcile.engine",
        "apply.events", "apply.executor", "reconcile.lock", "machine.logfiles", "machine.logpump",
        "sources.store", "machine.probes", "machine.processes",
    }
)  # fmt: skip
HEAVY = ("mlx", "mlx_lm", "litellm", "transformers", "huggingface_hub", "torch", "vllm_mlx")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("mlxctl", *parts)).removesuffix(".__init__")


@cache
def runtime_imports(name: str) -> frozenset[str]:
    """Modules ``name`` imports at run time (anywhere in the file, not under TYPE_CHECKING)."""
    path = SRC / Path(*name.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "mlxctl":
                found.update(f"mlxctl.{alias.name}" for alias in node.names)
    return frozenset(found)


def closure(name: str) -> set[str]:
    """Every mlxctl module reachable from ``name`` through run-time imports."""
    known = {module_name(p) for p in SRC.rglob("*.py")}
    seen: set[str] = set()
    todo = [name]
    while todo:
        for imported in runtime_imports(todo.pop()):
            if imported in known and imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen


def test_the_core_never_imports_the_cli() -> None:
    """``python -m mlxctl`` (``__main__``) is the one entry point outside the CLI package."""
    offenders = [
        module_name(path)
        for path in SRC.rglob("*.py")
        if "cli" not in path.relative_to(SRC).parts
        and path.name != "__main__.py"
        and any(
            m == "mlxctl.cli" or m.startswith("mlxctl.cli.")
            for m in runtime_imports(module_name(path))
        )
    ]
    assert offenders == []


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_nothing_that_acts(module: str) -> None:
    effects = {m for m in runtime_imports(f"mlxctl.{module}") if m.split(".")[0] in EFFECT_IMPORTS}
    assert effects == set()


def test_the_planner_reaches_no_effect_module() -> None:
    reached = {m.removeprefix("mlxctl.") for m in closure("mlxctl.plan.planner")}
    assert reached & EFFECT_MODULES == set()
    # The check sees what it should: the planner does reach the desired and observed state.
    assert {"desired.resolve", "observe.state", "capacity.memory"} <= reached


def test_the_checks_would_catch_a_violation() -> None:
    """The import scanner finds imports inside functions and ignores TYPE_CHECKING blocks."""
    assert "mlxctl.sources.demo" in runtime_imports("mlxctl.sources.store")  # inside a method
    assert "mlxctl.apply.executor" not in runtime_imports(
        "mlxctl.status.report"
    )  # TYPE_CHECKING only
    assert "subprocess" in runtime_imports("mlxctl.capacity.hardware")  # inside run_command


CLI_PROBE = """
import json, sys
from mlxctl.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps({{"codes": codes, "heavy": heavy}}))
"""


def test_status_diff_render_and_validate_import_no_heavy_package(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    layout = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    (model / "config.json").write_text(json.dumps({**layout, "hidden_size": 64}))
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n  tiers:\n"
        f"    - {{name: local, runtime: mlx-lm, model: {{path: {model}}}}}\n"
        "    - {name: catalog, runtime: vllm-mlx, model: qwen3-8b, quant: 4bit}\n"
    )
    commands = [
        ["validate", str(stack)],
        ["render", str(stack)],
        ["status", str(stack), "-o", "json"],
        ["diff", str(stack), "-o", "json"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", CLI_PROBE.format(heavy=set(HEAVY)), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"MLXCTL_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    result = json.loads(done.stdout.splitlines()[-1])
    # validate, render and status succeed; diff has changes (exit 1): all ran for real.
    assert result["codes"] == [0, 0, 0, 1]
    assert result["heavy"] == []
