"""The layering the brief asks for, checked on the source so that it cannot erode unnoticed.

- Layers by folder: the tree reads as the flow (spec -> desired -> observe -> plan ->
  apply -> status -> reconcile -> app -> admin -> cli), with adapters and knowledge below it.
  A module may import its own folder and the folders below, never one above: the
  core never imports the CLI, the planner never reaches the executor.
- Adapters are independent: a runtime adapter (a file defining ``RUNTIME``) never
  imports another one, nor a model source (a file defining ``SOURCE``) another
  source, nor a service platform (``PLATFORM``: launchd, systemd) another platform;
  only the registries know them all.
- The planner is pure: its whole closure inside mlxctl is pure data and functions,
  imports nothing that does I/O, starts processes, sleeps or reads a clock, and calls
  nothing that touches a file (``open``, ``Path.read_text``, ``os.stat``, ``glob``, ...:
  an import check alone misses ``pathlib``, which every module may import for types).
- One clock: only ``machine/clock.py`` reads the time or sleeps; everything else is
  handed a clock (``machine.interfaces.Clock``) by a composition root, so a test's
  ``FakeClock`` drives it. The clock is a leaf (it imports no mlxctl module), so every
  layer may import it, the gateway and the CLI included.
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
    ("gateway",),  # the gateway process (its own program: only errors, paths, runtimes below it,
    # and the clock)
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
    ("admin",),  # the controller's admin API: its server runs the use cases for clients
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
# Calls that touch the filesystem: ``open(...)`` and these methods or ``os``/``os.path``
# functions (``Path.read_text``, ``os.stat``, ``path.stat()``, ``os.listdir``, ...).
FILE_CALLS = frozenset(
    {
        "open", "read_text", "read_bytes", "write_text", "write_bytes", "stat", "lstat",
        "listdir", "scandir", "iterdir", "glob", "rglob", "walk", "exists", "is_file",
        "is_dir", "is_symlink", "mkdir", "unlink", "rmdir", "rename",
        "touch", "readlink", "getsize", "getmtime", "realpath", "samefile", "chmod",
        # mlxctl's own readers and writers (mlxctl.files, machine.inventory).
        "read_bounded", "read_text_bounded", "open_private", "write_atomic",
    }
)  # fmt: skip
# tenacity's wait strategies are pure values: each maps an attempt number to seconds
# (tenacity/wait.py reads nothing else). The planner may use the deterministic ones;
# ``wait_random*`` draw random numbers, and the rest of tenacity sleeps and reads the clock.
PURE_EFFECT_MODULES = {
    "tenacity.wait": frozenset(
        {"wait_base", "wait_exponential", "wait_fixed", "wait_none", "wait_incrementing",
         "wait_chain", "wait_combine"}
    ),
}  # fmt: skip
HEAVY = ("mlx", "mlx_lm", "litellm", "transformers", "huggingface_hub", "torch", "vllm_mlx")
# Modules any layer may import: leaves that import no mlxctl module (checked below).
LEAVES = frozenset({"mlxctl.machine.clock"})


def is_leaf(imported: str) -> bool:
    """A leaf, or a name in one (``from mlxctl.machine.clock import SystemClock``)."""
    return imported in LEAVES or imported.rsplit(".", 1)[0] in LEAVES


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("mlxctl", *parts)).removesuffix(".__init__")


def source_of(name: str) -> str:
    path = SRC / Path(*name.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path.read_text(encoding="utf-8")


def import_nodes(source: str) -> list[ast.Import | ast.ImportFrom]:
    """The imports ``source`` runs (anywhere, but not under ``if TYPE_CHECKING``)."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in skipped
    ]


@cache
def runtime_imports(name: str) -> frozenset[str]:
    """Modules ``name`` imports at run time (anywhere in the file, not under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in import_nodes(source_of(name)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "mlxctl" or node.module.startswith("mlxctl."):
                # ``from mlxctl.sources import demo`` imports the module mlxctl.sources.demo.
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(found)


def file_calls(source: str) -> list[str]:
    """``line: call`` for every call in ``source`` that touches the filesystem: a function
    or method named in :data:`FILE_CALLS`, whatever it is called on or imported as
    (``open(p)``, ``Path(p).read_text()``, ``os.stat(p)``, ``p.stat()``, ``listdir(d)``)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if called in FILE_CALLS:
            found.append(f"{node.lineno}: {ast.unparse(func)}")
    return found


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
        if imported.startswith("mlxctl.")
        and not is_leaf(imported)
        and RANK.get(folder(imported), -1) > rank
    )
    assert upward == [], f"{module} imports a higher layer"


def test_the_gateway_stands_alone() -> None:
    """The gateway runs in its own process: it sees only errors, paths and runtimes (and
    the clock, a leaf), and nothing else in mlxctl imports it (the core talks to it
    through its routes file)."""
    inside = [m for m in all_modules() if folder(m) == "gateway"]
    assert "mlxctl.gateway.app" in inside  # the check sees the package
    allowed = {"gateway", "errors", "paths", "runtimes"}
    for module in inside:
        below = {
            folder(i) for i in runtime_imports(module) if i.startswith("mlxctl.") and not is_leaf(i)
        }
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


@pytest.mark.parametrize("kind", ["RUNTIME", "SOURCE", "PLATFORM"])
def test_adapters_are_independent_of_each_other(kind: str) -> None:
    found = adapters(kind)
    assert len(found) >= 2  # the check sees the adapters it should
    crossing = {
        module: sorted(runtime_imports(module) & (set(found) - {module})) for module in found
    }
    assert {m: i for m, i in crossing.items() if i} == {}


def impure_imports(source: str) -> set[str]:
    """What ``source`` imports that acts on the machine: an :data:`EFFECT_IMPORTS`
    module, or from a :data:`PURE_EFFECT_MODULES` module anything but its pure names."""
    found: set[str] = set()
    for node in import_nodes(source):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in EFFECT_IMPORTS)
        elif node.module and node.level == 0:
            if node.module.split(".")[0] not in EFFECT_IMPORTS:
                continue
            pure = PURE_EFFECT_MODULES.get(node.module)
            if pure is None:
                found.add(node.module)
            else:
                found.update(f"{node.module}.{a.name}" for a in node.names if a.name not in pure)
    return found


def test_the_planner_is_pure() -> None:
    reached = closure("mlxctl.plan.planner")
    impure = {m for m in reached if not m.startswith("mlxctl.plan.") and m not in PURE_FOR_PLANNER}
    assert impure == set()
    for module in reached | {"mlxctl.plan.planner"}:
        effects = {m for m in runtime_imports(module) if m.split(".")[0] in EFFECT_IMPORTS}
        effects -= set(PURE_EFFECT_MODULES)  # checked name by name just below
        assert effects == set(), f"{module} imports {effects}"
        assert impure_imports(source_of(module)) == set(), module
    # The crash-loop backoff is tenacity's schedule, reached as a pure value.
    assert "tenacity.wait" in runtime_imports("mlxctl.plan.backoff")
    # The check sees what it should: the planner does reach the desired and observed state.
    assert {"mlxctl.desired.state", "mlxctl.observe.state", "mlxctl.machine.record"} <= reached


def test_the_planner_touches_no_file() -> None:
    """No module the planner reaches reads, writes, lists or stats a file: the estimate's
    file reading lives in ``capacity/model_dir.py``, outside the closure."""
    reached = closure("mlxctl.plan.planner") | {"mlxctl.plan.planner"}
    assert "mlxctl.capacity.memory" in reached  # the estimate is in the closure
    touching = {m: calls for m in sorted(reached) if (calls := file_calls(source_of(m)))}
    assert touching == {}


def test_the_checks_would_catch_a_violation() -> None:
    """The scanner finds imports inside functions, ignores TYPE_CHECKING blocks, and the
    layer rule rejects an upward import."""
    assert "mlxctl.sources.demo" in runtime_imports("mlxctl.sources.catalog")
    # TYPE_CHECKING only:
    assert "mlxctl.apply.executor" not in runtime_imports("mlxctl.status.report")
    assert "subprocess" in runtime_imports("mlxctl.capacity.detect")  # inside run_command
    assert RANK["cli"] > RANK["reconcile"] > RANK["apply"] > RANK["plan"] > RANK["spec"]
    # tenacity in the planner: the pure wait strategies only.
    assert impure_imports("from tenacity.wait import wait_exponential, wait_fixed") == set()
    assert impure_imports("from tenacity.wait import wait_random_exponential") == {
        "tenacity.wait.wait_random_exponential"
    }
    assert impure_imports("import tenacity") == {"tenacity"}
    assert impure_imports("from tenacity import Retrying") == {"tenacity"}
    assert impure_imports("from time import monotonic") == {"time"}
    assert impure_imports("if TYPE_CHECKING:\n    from tenacity import RetryCallState") == set()


PLANTED_FILE_IO = """
import os
from os import listdir
from pathlib import Path as P
def estimate(model_dir: P, name: str) -> int:
    with open(model_dir / "config.json") as f:  # line 6
        f.read()
    (model_dir / "config.json").read_text()
    model_dir.joinpath("w").read_bytes()
    os.open(name, os.O_RDONLY)
    os.stat(name)
    model_dir.stat()
    os.listdir(name)
    list(model_dir.iterdir())
    list(model_dir.glob("*.safetensors"))
    listdir(name)
    return os.path.getsize(name)
"""
PURE_LOOKALIKES = """
def fine(names: dict[str, int], text: str) -> int:
    opened = names.get("open", 0)  # a key named open, not a call of it
    return opened + len(text.split()) + len(sorted(names)) + len(text.replace("a", "b"))
"""


def test_the_file_scan_would_catch_file_io() -> None:
    """A planted estimate that reads, stats and lists files is caught call by call;
    pure code is not; and the scan sees the real reader the planner must not reach."""
    found = file_calls(PLANTED_FILE_IO)
    assert [f.split(": ")[1] for f in found if f.startswith("6:")] == ["open"]
    called = {f.split(": ")[1].rsplit(".", 1)[-1] for f in found}
    assert called == {
        "open",
        "read_text",
        "read_bytes",
        "stat",
        "listdir",
        "iterdir",
        "glob",
        "getsize",
    }
    assert len(found) == 11  # both opens, both stats, both listdirs
    assert file_calls(PURE_LOOKALIKES) == []
    # The estimate's file reading, kept outside the closure, is what the scan would flag.
    assert file_calls(source_of("mlxctl.capacity.model_dir")) != []
    assert "mlxctl.capacity.model_dir" not in closure("mlxctl.plan.planner")


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
CLI_MAY_IMPORT = (
    "app", "admin", "status", "errors", "paths", "catalog", "capacity", "cli", "__init__",
)  # fmt: skip


@pytest.mark.parametrize("module", [m for m in all_modules() if folder(m) == "cli"])
def test_the_cli_reaches_the_core_through_the_use_cases(module: str) -> None:
    reached = {
        m
        for m in runtime_imports(module)
        if m.startswith("mlxctl.") and m in set(all_modules()) | {"mlxctl"}
    }
    outside = sorted(
        m
        for m in reached
        if folder(m) not in CLI_MAY_IMPORT and m != "mlxctl.plan.actions" and not is_leaf(m)
    )
    assert outside == []


# -- one clock ---------------------------------------------------------------------------

# Functions that read the time or sleep, by module.
# (``time.strftime`` and friends read "now" unless given a time.)
CLOCK_FUNCTIONS = {
    "time": {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "sleep",
             "strftime", "localtime", "gmtime", "ctime", "asctime"},
    "datetime": {"now", "utcnow", "today"},  # datetime.datetime.now(), datetime.date.today()
    "asyncio": {"sleep"},
}  # fmt: skip
# Modules that may read the clock themselves (and only that way), and why.
READS_THE_CLOCK: dict[str, set[str]] = {
    "mlxctl.machine.clock": {"time.time", "time.monotonic", "time.sleep"},  # the clock
    # Between attempts to reach a restarting tier the gateway must yield to its event
    # loop (the clock's sleep would block it; the hold's deadline is the clock's), and
    # its module-level ``log`` stamps lines before any Gateway (and its clock) exists.
    "mlxctl.gateway.app": {"asyncio.sleep", "time.strftime"},
    # The demand report loop spaces its reports and polls a loading tier's port, in the
    # gateway's event loop (deadlines and stamps are the clock's).
    "mlxctl.gateway.demand": {"asyncio.sleep"},
    # A request whose tier answered "busy" waits a little in the gateway's event loop
    # before asking again (the deadline is the clock's, passed in).
    "mlxctl.gateway.capacity": {"asyncio.sleep"},
    # The liveness budget: how long a watcher thread's server has answered only "busy"
    # (the watcher threads already wait on real time, tenacity's event sleeps).
    "mlxctl.reconcile.monitor": {"time.monotonic"},
    # Prometheus durations (a request's total, first token, queue, the gateway's own
    # microseconds) measure real elapsed time and decide nothing.
    "mlxctl.gateway.metrics": {"time.perf_counter"},
    # The fake hub paces its replies (a slow link) inside a real HTTP server thread
    # that integration tests download from: real time is what it simulates.
    "mlxctl.testing.hub": {"time.sleep"},
    # The lock holder's "since" stamp: StateLock is taken by the use cases, which are
    # being reshaped to take an explicit context (issue 16); it moves to the clock then.
    "mlxctl.reconcile.state_lock": {"datetime.now"},
}


def clock_reads(source: str) -> list[str]:
    """Where ``source`` reads the time or sleeps directly: ``time.monotonic()``, a
    reference such as ``sleep=time.sleep``, ``from time import sleep``,
    ``_dt.datetime.now()``, ``asyncio.sleep(...)``; aliases of the modules followed."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> module
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in CLOCK_FUNCTIONS:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in CLOCK_FUNCTIONS:
            for alias in node.names:
                if alias.name in CLOCK_FUNCTIONS[node.module]:
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                elif node.module == "datetime":
                    aliases[alias.asname or alias.name] = "datetime"  # the class
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        # ``_dt.datetime.now``: the class reached through the module.
        if (
            isinstance(base, ast.Attribute)
            and isinstance(base.value, ast.Name)
            and aliases.get(base.value.id) == "datetime"
            and base.attr in ("datetime", "date")
        ):
            base = ast.Name(id=base.value.id)
        if isinstance(base, ast.Name) and base.id in aliases:
            module = aliases[base.id]
            if node.attr in CLOCK_FUNCTIONS[module]:
                found.append(f"line {node.lineno}: {module}.{node.attr}")
    return found


@pytest.mark.parametrize("module", all_modules())
def test_only_the_clock_reads_the_time(module: str) -> None:
    path = SRC / Path(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    reads = clock_reads(path.read_text(encoding="utf-8"))
    allowed = READS_THE_CLOCK.get(module, set())
    used = {r.split(": ", 1)[1] for r in reads}
    assert used <= allowed, f"{module} reads the time directly ({reads}): take a Clock instead"
    # An allowance no longer needed goes (the list says why each one is there).
    assert used == allowed, f"{module} no longer uses {allowed - used}: drop it"


def test_the_clock_is_a_leaf() -> None:
    for leaf in LEAVES:
        assert not {m for m in runtime_imports(leaf) if m.startswith("mlxctl")}


def test_the_clock_check_would_catch_a_violation() -> None:
    source = (
        "import time\nimport time as t\nimport datetime as _dt\nimport asyncio\n"
        "from time import sleep\nfrom datetime import datetime\n"
        "def f(wait=time.sleep):\n"
        "    t.monotonic(); _dt.datetime.now(); datetime.utcnow(); _dt.date.today()\n"
        "    time.perf_counter()\n"
        "async def g():\n    await asyncio.sleep(1)\n"
        # Not clock reads: the clock's own methods, and datetime arithmetic.
        "def h(clock):\n    clock.monotonic(); clock.sleep(1); _dt.datetime.fromtimestamp(0)\n"
    )
    reads = clock_reads(source)
    assert [r.split(": ", 1)[1] for r in reads] == [
        "from time import sleep",
        "time.sleep",
        "time.monotonic",
        "datetime.now",
        "datetime.utcnow",
        "datetime.today",
        "time.perf_counter",
        "asyncio.sleep",
    ], reads


@pytest.mark.parametrize(
    "module", [m for m in all_modules() if folder(m) == "app" and m != "mlxctl.app.context"]
)
def test_use_cases_neither_build_their_context_nor_take_the_lock(module: str) -> None:
    """So a controller that holds the state lock can call them (the admin API will): the
    front door builds the context and takes the lock (mlxctl.app.context)."""
    reached = runtime_imports(module)
    assert "mlxctl.reconcile.state_lock" not in reached
    assert "mlxctl.reconcile.state_lock.StateLock" not in reached
    assert "mlxctl.reconcile.context.real_context" not in reached
