"""The layering the brief asks for, checked on the source so that it cannot erode unnoticed.

- Layers by folder: the tree reads as the flow (spec -> desired -> observe -> plan ->
  apply -> status -> reconcile -> app -> cli), with adapters and knowledge below it.
  A module may import its own folder and the folders below, never one above: the
  core never imports the CLI, the planner never reaches the executor.
- Adapters are independent: a runtime adapter (a file defining ``RUNTIME``) never
  imports another one, nor a model source (a file defining ``SOURCE``) another
  source; only the registries know them all.
- The planner is pure: its whole closure inside mlxctl is pure data and functions,
  and imports nothing that does I/O, starts processes, sleeps or reads a clock.
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

# Bottom to top. A module of one rank may import modules of the same or a lower rank.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "files", "paths"),
    ("runtimes",),  # runtime adapters: data and pure functions
    ("gateway",),  # the gateway process (its own program: only errors, paths, runtimes below it)
    ("spec",),  # the stack files as written
    ("catalog",),  # knowledge
    ("capacity",),  # knowledge: hardware, memory, init
    ("machine",),  # effect adapters: processes, probes, clock, state files
    ("desired",),
    ("sources",),  # model-source adapters (they produce desired ModelRefs)
    ("observe",),
    ("plan",),
    ("apply",),
    ("status",),
    ("reconcile",),
    ("app", "testing"),
    ("cli",),
    ("__main__",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# What the planner's closure may contain: pure values and functions only.
PURE_FOR_PLANNER = frozenset(
    {
        "mlxctl.errors", "mlxctl.runtimes.base", "mlxctl.capacity.hardware",
        "mlxctl.capacity.memory", "mlxctl.machine.interfaces", "mlxctl.machine.record",
        "mlxctl.desired.state", "mlxctl.desired.hub_names", "mlxctl.observe.state",
    }
)  # fmt: skip
# Modules (top-level names) that start processes, talk to the network, sleep or read
# the clock, or otherwise act on the machine.
EFFECT_IMPORTS = frozenset(
    {
        "fcntl", "http", "httpx", "os", "psutil", "random", "shutil", "signal", "socket",
        "subprocess", "tempfile", "tenacity", "threading", "time", "urllib", "watchfiles",
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
            if node.module == "mlxctl" or node.module.startswith("mlxctl."):
                # ``from mlxctl.sources import demo`` imports the module mlxctl.sources.demo.
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
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


def all_modules() -> list[str]:
    return sorted(module_name(p) for p in SRC.rglob("*.py"))


def folder(name: str) -> str:
    """``mlxctl.plan.planner`` -> ``plan``; ``mlxctl.errors`` -> ``errors``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_folder_has_a_layer() -> None:
    unknown = {folder(m) for m in all_modules()} - set(RANK) - {"__init__"}
    assert unknown == set()


@pytest.mark.parametrize("module", all_modules())
def test_imports_go_down_the_layers(module: str) -> None:
    if module == "mlxctl":
        return
    rank = RANK[folder(module)]
    upward = sorted(
        imported
        for imported in runtime_imports(module)
        if imported.startswith("mlxctl.") and RANK.get(folder(imported), -1) > rank
    )
    assert upward == [], f"{module} imports a higher layer"


def test_the_gateway_stands_alone() -> None:
    """The gateway runs in its own process: it sees only errors, paths and runtimes, and
    nothing else in mlxctl imports it (the core talks to it through its routes file)."""
    inside = [m for m in all_modules() if folder(m) == "gateway"]
    assert "mlxctl.gateway.app" in inside  # the check sees the package
    allowed = {"gateway", "errors", "paths", "runtimes"}
    for module in inside:
        below = {folder(i) for i in runtime_imports(module) if i.startswith("mlxctl.")}
        assert below <= allowed, f"{module} imports {below - allowed}"
    users = [
        m
        for m in all_modules()
        if folder(m) != "gateway"
        and any(i.startswith("mlxctl.gateway") for i in runtime_imports(m))
    ]
    assert users == []


def adapters(kind: str) -> dict[str, str]:
    """Adapter modules (``RUNTIME`` or ``SOURCE`` defined at module level) -> their folder."""
    found: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == kind for t in node.targets
            ):
                found[module_name(path)] = folder(module_name(path))
    return found


@pytest.mark.parametrize("kind", ["RUNTIME", "SOURCE"])
def test_adapters_are_independent_of_each_other(kind: str) -> None:
    found = adapters(kind)
    assert len(found) >= 2  # the check sees the adapters it should
    crossing = {
        module: sorted(runtime_imports(module) & (set(found) - {module})) for module in found
    }
    assert {m: i for m, i in crossing.items() if i} == {}


def test_the_planner_is_pure() -> None:
    reached = closure("mlxctl.plan.planner")
    impure = {m for m in reached if not m.startswith("mlxctl.plan.") and m not in PURE_FOR_PLANNER}
    assert impure == set()
    for module in reached | {"mlxctl.plan.planner"}:
        effects = {m for m in runtime_imports(module) if m.split(".")[0] in EFFECT_IMPORTS}
        assert effects == set(), f"{module} imports {effects}"
    # The check sees what it should: the planner does reach the desired and observed state.
    assert {"mlxctl.desired.state", "mlxctl.observe.state", "mlxctl.machine.record"} <= reached


def test_the_checks_would_catch_a_violation() -> None:
    """The scanner finds imports inside functions, ignores TYPE_CHECKING blocks, and the
    layer rule rejects an upward import."""
    assert "mlxctl.sources.demo" in runtime_imports("mlxctl.sources.catalog")
    # TYPE_CHECKING only:
    assert "mlxctl.apply.executor" not in runtime_imports("mlxctl.status.report")
    assert "subprocess" in runtime_imports("mlxctl.capacity.detect")  # inside run_command
    assert RANK["cli"] > RANK["reconcile"] > RANK["apply"] > RANK["plan"] > RANK["spec"]


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
        "    - {name: hub, runtime: mlx-lm, model: {hf: org/tiny, revision: v1}}\n"
        f"    - {{name: gguf, runtime: mlx-lm, model: {{gguf: {tmp_path / 'm.gguf'}}}}}\n"
        "    - {name: hubgguf, runtime: mlx-lm, model: {gguf: org/repo/m.Q4_0.gguf}}\n"
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


# What the thin CLI may reach at run time: the use cases, presentation, knowledge, and
# the plan's option and result types. Everything else goes through mlxctl.app.
CLI_MAY_IMPORT = ("app", "status", "errors", "paths", "catalog", "capacity", "cli", "__init__")


@pytest.mark.parametrize("module", [m for m in all_modules() if folder(m) == "cli"])
def test_the_cli_reaches_the_core_through_the_use_cases(module: str) -> None:
    reached = {
        m
        for m in runtime_imports(module)
        if m.startswith("mlxctl.") and m in set(all_modules()) | {"mlxctl"}
    }
    outside = sorted(
        m for m in reached if folder(m) not in CLI_MAY_IMPORT and m != "mlxctl.plan.actions"
    )
    assert outside == []


@pytest.mark.parametrize(
    "module", [m for m in all_modules() if folder(m) == "app" and m != "mlxctl.app.context"]
)
def test_use_cases_neither_build_their_context_nor_take_the_lock(module: str) -> None:
    """So a controller that holds the state lock can call them (the admin API will): the
    front door builds the context and takes the lock (mlxctl.app.context)."""
    reached = runtime_imports(module)
    assert "mlxctl.reconcile.lock" not in reached
    assert "mlxctl.reconcile.lock.StateLock" not in reached
    assert "mlxctl.reconcile.context.real_context" not in reached
