"""Hostile lock files, hub answers and state files never delete, write or signal (issue #15).

A property over the three inputs mlxctl reads but does not own: the committed lock
file (a dotfiles repo), the hub's answers (file lists, commit ids) and the state
directory. Each example builds a sandbox root (``tests/hostile.py``: MLXCTL_HOME,
HF_HUB_CACHE, the stack directory with its lock, and a sentinel tree of the user's
files around them), plants hostile input, and drives the real CLI through ``status``,
``diff``, ``down``, ``models pull|rm|gc|update`` and ``reconcile --once`` (one
controller pass). After every call:

- no sentinel file or directory is created, changed (content, mode) or removed, nor
  the mode of the stack directory or of the cache's directories;
- the sentinel process (a ``sleep`` that looks like a recorded server) is alive;
- the exit code is one docs/exit-codes.md lists, stderr holds no traceback, the call
  ended within a few seconds and under a bounded address space (``RLIMIT_AS``);
- input the issue says must be refused (a path with ``..``, a commit that is not 40
  hex, a lock that is not a regular bounded file) is refused: ``diff`` exits 3 for a
  lock, ``models pull`` exits 4 for a lying hub.

The default run is a few derandomized examples per property (reproducible in CI, well
under 90 s); ``pytest -m fuzz`` runs a larger random budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from mlxctl.testing.hub import LocalHub
from tests.hostile import (
    ESCAPED,
    FOREIGN_COMMIT,
    REPO,
    Call,
    Sandbox,
    Sentinel,
    make_fifo,
    preload,
    replace_with,
    run_cli,
)

QUICK, LONG = 6, 200
BUDGETS = [
    pytest.param(QUICK, True, id="quick"),
    pytest.param(LONG, False, id="long", marks=pytest.mark.fuzz),
]
ROOT = "{root}"  # replaced by the sandbox's root: absolute paths stay inside the sandbox
HEX40 = st.from_regex(r"[0-9a-f]{40}", fullmatch=True)
HEX64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)

# Repo-relative paths a lock entry (or a hub listing) may carry. The snapshot is
# cache/models--org--m/snapshots/COMMIT/, so four `..` reach the sandbox root.
REFUSED_PATHS = [
    f"{ROOT}/victim/.bashrc",
    "../../../../victim/.bashrc",
    "../../../../victim/notes.txt",
    "config.json/../../../../../victim/.bashrc",
    f"../../../models--org--keep/snapshots/{FOREIGN_COMMIT}/config.json",
    "../../x",
    "a/../../x",
    "..",
    ".",
    "",
    "./config.json",
    "config.json\x00",
    "a\x00/../../../../victim/.bashrc",
]
ODD_PATHS = ["a" * 5000, "d/" * 3000 + "x", "\u202ecfg.json", " config.json"]
BENIGN_PATHS = ["config.json", "model.safetensors", "tokenizer.json", "sub/dir/file.txt"]
# Commits a lock (or a hub) may claim. Only 40 lowercase hex digits are a commit.
REFUSED_REVISIONS = [
    "../../../victimdir/x",
    "../../../../../victimdir/x",
    f"{ROOT}/victimdir/evil",
    f"{ROOT}/srv/x",
    "a" * 39,
    "a" * 41,
    "A" * 40,
    "g" * 40,
    "",
    "main",
    "../" + "a" * 40,
]
# Branch and tag names a stack (or a CLI `@revision`) may ask for; `..`, a leading `/`
# and NUL are never a git ref. They become refs/NAME in the cache.
REFUSED_REQUESTED = [
    "../../../../victim/.bashrc",
    "../../victim/.bashrc",
    f"{ROOT}/victim/.bashrc",
    "a/../../b",
    "a..b",
]
BENIGN_REQUESTED = ["main", "v1.0", "release/2024"]
HUGE = [-1, 0, 2**63, 10**29, 10**400]


@pytest.fixture(scope="module", autouse=True)
def _imports() -> None:
    preload()


@pytest.fixture
def sentinel() -> Iterator[Sentinel]:
    """The user's ``sleep``, carrying another state directory's marker (a copy of a state
    directory names processes this one must never touch)."""
    proc = Sentinel(
        marker={
            "MLXCTL_STATE": "/nonexistent/other-state",
            "MLXCTL_INSTANCE": "inst-sentinel",
            "MLXCTL_SERVICE": "fast",
        }
    )
    try:
        yield proc.ensure()
    finally:
        proc.stop()


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    with LocalHub() as the_hub:
        assert the_hub._server is not None
        # Quiet: a client that hangs up mid-answer is no error here, and a server thread
        # writing to stderr while the test forks a CLI call is a lock the child inherits.
        the_hub._server.handle_error = lambda *args: None  # type: ignore[method-assign]
        yield the_hub


def fresh(root: Path, endpoint: str) -> Sandbox:
    """A new sandbox at ``root`` (examples share the test's tmp_path: wipe it first)."""
    if root.exists():
        shutil.rmtree(root)
    return Sandbox(root, endpoint)


def rooted(value: Any, root: Path) -> Any:
    """``{root}`` inside strings (and nested values) replaced by the sandbox root."""
    if isinstance(value, str):
        return value.replace(ROOT, str(root))
    if isinstance(value, list):
        return [rooted(v, root) for v in value]
    if isinstance(value, dict):
        return {k: rooted(v, root) for k, v in value.items()}
    return value


def check(box: Sandbox, call: Call, sentinel: Sentinel | None = None) -> list[str]:
    """Everything wrong after one call: the call's own problems, then what it damaged
    (since the previous call: each finding is reported once, by the call that made it)."""
    name = " ".join(call.args)[:80]
    problems = call.problems()
    problems += [f"`{name}`: {d}" for d in box.damage()]
    if sentinel is not None and not sentinel.alive():
        problems.append(f"`{name}` signalled the sentinel process (pid {sentinel.pid})")
        sentinel.ensure()
    box.stop_leftovers()  # a server a pass started is no fault; the next example starts clean
    box.snapshot()
    return problems


def drive(
    box: Sandbox,
    commands: list[tuple[str, ...]],
    *,
    sentinel: Sentinel | None = None,
    expect: Callable[[Call], str | None] = lambda call: None,
) -> None:
    """Run every command in order, then fail with everything that broke the property
    (all of it, not only the first: a refusal missing in ``diff`` and a file deleted by
    ``models pull`` are different rows of the issue)."""
    box.snapshot()
    problems: list[str] = []
    for args in commands:
        call = box.run(*args)
        problems += check(box, call, sentinel)
        wrong = expect(call)
        if wrong:
            problems.append(wrong)
        if call.timed_out:
            problems.append("(the remaining commands skipped: one hang is enough)")
            break
    assert not problems, "\n".join(problems)


def run_property(
    strategy: st.SearchStrategy[Any],
    budget: int,
    quick: bool,
    body: Any,
    examples: Sequence[Any] = (),
) -> None:
    """``body`` over ``strategy``, after ``examples`` (each row's case, always run)."""

    @settings(
        max_examples=budget,
        deadline=None,  # each call has its own bound (CALL_SECONDS)
        derandomize=quick,
        # The quick run reports the first failing example as generated: shrinking reruns
        # every hang of today's code for minutes. The fuzz run shrinks.
        phases=[Phase.explicit, Phase.generate] if quick else list(Phase),
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(value: Any) -> None:
        body(value)

    for explicit in reversed(examples):
        run = example(explicit)(run)
    run()


# --------------------------------------------------------------------------- lock files

LOCK_FILE = st.fixed_dictionaries(
    {
        "path": st.sampled_from(REFUSED_PATHS + ODD_PATHS + BENIGN_PATHS),
        "size": st.sampled_from([5, *HUGE]) | st.sampled_from(["5", None, [5], 1.5]),
    },
    optional={
        "sha256": HEX64 | st.sampled_from(["zz", 7, None, "A" * 64]),
        "blob": HEX40 | st.sampled_from(["../x", 1]),
    },
)
ENTRY = st.fixed_dictionaries(
    {
        "requested": st.sampled_from(BENIGN_REQUESTED + REFUSED_REQUESTED),
        "revision": HEX40 | st.sampled_from(REFUSED_REVISIONS),
        "files": st.lists(LOCK_FILE, min_size=1, max_size=3),
    }
)
# A lock that is not a readable bounded mapping at all.
RAW_LOCKS = st.sampled_from(
    ["fifo", "dev-zero", "outside-file", "50MB", "not-utf8", "a-list", "a-scalar", "directory"]
) | st.binary(max_size=300).map(lambda raw: ("bytes", raw))


def _refused_entry(entry: dict[str, Any]) -> bool:
    """Whether the issue requires this entry to be refused (exit 3 for a lock)."""
    paths = [f.get("path") for f in entry["files"]]
    return (
        entry["revision"] in REFUSED_REVISIONS
        or entry["requested"] in REFUSED_REQUESTED
        or any(p in REFUSED_PATHS for p in paths)
    )


def _write_entry_lock(box: Sandbox, entry: dict[str, Any]) -> None:
    """The stack asks for ``requested``; its lock pins ``revision`` with ``files``. A
    commit-shaped revision's snapshot directory exists (an earlier pull of it), so a
    relative path climbs out of it as it would on a user's machine."""
    requested = rooted(entry["requested"], box.root)
    box.write_stack(revision=requested)
    files = rooted(entry["files"], box.root)
    if re.fullmatch(r"[0-9a-f]{40}", str(entry["revision"])):
        snapshot = box.cache / "models--org--m" / "snapshots" / entry["revision"]
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
    doc = {
        "apiVersion": "mlxctl/v1",
        "kind": "Lock",
        "models": {
            f"{REPO}@{requested}": {
                "repo": REPO,
                "requested": requested,
                "revision": rooted(entry["revision"], box.root),
                "files": files,
            }
        },
    }
    # JSON is YAML; 10**400 stays an integer literal, NUL is escaped (\u0000).
    box.lock.write_text(json.dumps(doc))


def _write_raw_lock(box: Sandbox, kind: str | tuple[str, bytes]) -> None:
    if isinstance(kind, tuple):
        replace_with(box.lock, "bytes", kind[1])
    elif kind == "fifo":
        make_fifo(box.lock)
    elif kind == "dev-zero":
        replace_with(box.lock, "symlink", target=Path("/dev/zero"))
    elif kind == "outside-file":
        replace_with(box.lock, "symlink", target=box.victim / "notes.txt")
    elif kind == "50MB":
        with box.lock.open("wb") as handle:
            handle.write(b"# " + b"x" * (50 * 1024 * 1024) + b"\n")
    elif kind == "not-utf8":
        replace_with(box.lock, "bytes", b"kind: Lock\nmodels: {\xff\xfe: 1}\n")
    elif kind == "a-list":
        replace_with(box.lock, "bytes", b"- kind: Lock\n- models: {}\n")
    elif kind == "a-scalar":
        replace_with(box.lock, "bytes", b"just a string\n")
    elif kind == "directory":
        box.lock.mkdir()


def _lock_commands(requested: str) -> list[tuple[str, ...]]:
    stacks, stack = "{stacks}", "{stack}"
    return [
        ("diff", stacks),
        ("status", stacks),
        ("models", "pull", "-f", stack),
        ("models", "pull", f"hf:{REPO}@{requested}", "-f", stack),
        ("reconcile", "--once", "--timeout", "3", stacks),
        ("models", "gc", "--yes", stacks),
        ("models", "rm", REPO),
        ("down",),
        ("models", "update", "-f", stack),
    ]


def _bind(box: Sandbox, commands: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    names = {"{stacks}": str(box.stacks), "{stack}": str(box.stack)}
    return [tuple(names.get(a, a) for a in args) for args in commands]


def _first_is_refused(code: int) -> Callable[[Call], str | None]:
    """The issue's refusal: `diff` on a lock the issue calls hostile exits ``code``."""

    def expect(call: Call) -> str | None:
        if call.args[0] == "diff" and call.code != code:
            return (
                f"`diff` exited {call.code}, expected {code} (refused in one line): "
                f"{(call.stderr or call.stdout)[-300:]!r}"
            )
        return None

    return expect


def lock_example(root: Path, hub: LocalHub, sentinel: Sentinel, example: Any) -> None:
    """One hostile lock (an entry, or a file that is no lock) through every command."""
    box = fresh(root, hub.endpoint)
    kind, value = example
    if kind == "entry":
        _write_entry_lock(box, value)
        requested = rooted(value["requested"], box.root)
        refused = _refused_entry(value)
    else:
        _write_raw_lock(box, value)
        requested = "main"
        refused = not isinstance(value, tuple)  # random bytes may be a valid empty lock
    expect = _first_is_refused(3) if refused else lambda call: None
    drive(box, _bind(box, _lock_commands(requested)), sentinel=sentinel, expect=expect)


LOCKS = ENTRY.map(lambda e: ("entry", e)) | RAW_LOCKS.map(lambda r: ("raw", r))


def _entry(path: str = "config.json", revision: str = "a" * 40, requested: str = "main") -> Any:
    return (
        "entry",
        {
            "requested": requested,
            "revision": revision,
            "files": [{"path": path, "size": 5, "sha256": "0" * 64}],
        },
    )


# The issue's own cases, run before the generated ones in every budget.
LOCK_EXAMPLES = [
    _entry(path=f"{ROOT}/victim/.bashrc"),  # row 1
    _entry(path="../../../../victim/notes.txt"),  # row 1
    _entry(path="config.json\x00"),  # medium: NUL in a path
    _entry(revision="../../../../../victimdir/x"),  # row 2
    _entry(revision=f"{ROOT}/srv/x"),  # row 2
    _entry(revision="A" * 40),  # row 2
    ("raw", "fifo"),  # row 7
    ("raw", "dev-zero"),  # row 7
    ("raw", "50MB"),  # row 7
    ("raw", "not-utf8"),  # row 7
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("budget", "quick"), BUDGETS)
def test_a_hostile_lock_file_touches_nothing_outside(
    tmp_path: Path, hub: LocalHub, sentinel: Sentinel, budget: int, quick: bool
) -> None:
    """Rows 1, 2, 7: a lock's paths and commits never become paths outside the snapshot,
    and a lock that is not a bounded regular file is refused without a hang."""
    run_property(
        LOCKS,
        budget,
        quick,
        lambda ex: lock_example(tmp_path / "sb", hub, sentinel, ex),
        LOCK_EXAMPLES,
    )


# --------------------------------------------------------------------------- hub answers

# Tree paths that pass mlx-lm's allow patterns (*.json, *.txt): four `..` from the
# snapshot reach the sandbox root.
HUB_PATHS = [
    "../../../../victim/notes.txt",
    "../../../../victim/config.json",
    f"{ROOT}/victim/notes.txt",
    "sub/../../../../../victim/config.json",
    "../../x.json",
]
HUB_SHAS = [
    "../../../victimdir/evil",
    "../../../../../victimdir/evil",
    f"{ROOT}/victimdir/evil",
    "A" * 40,
    "a" * 39,
    "not-a-commit",
]
LIE = st.one_of(
    st.tuples(st.just("path"), st.sampled_from(HUB_PATHS)),
    st.tuples(st.just("sha"), st.sampled_from(HUB_SHAS)),
    # A branch the hub really has, named like a path: pulling it writes refs/NAME.
    st.tuples(st.just("ref"), st.sampled_from(REFUSED_REQUESTED)),
)
LIAR = "org/liar"


def lie_on(hub: LocalHub, box: Sandbox, kind: str, value: str) -> None:
    """Make ``LIAR`` on ``hub`` answer with a hostile tree path or commit id."""
    hub.repos.clear()
    files: dict[str, bytes | str | Path] = {"config.json": '{"model_type": "llama"}'}
    if kind == "ref":
        hub.commit(LIAR, files, branch=rooted(value, box.root))
        return
    if kind == "path":
        files[rooted(value, box.root)] = "hub bytes\n"
        hub.commit(LIAR, files)
        return
    sha = hub.commit(LIAR, files)
    repo = hub.repos[LIAR]
    lie = rooted(value, box.root)
    repo.commits[lie] = repo.commits.pop(sha)
    repo.refs["main"] = lie


def hub_example(root: Path, hub: LocalHub, sentinel: Sentinel, lie: tuple[str, str]) -> None:
    """One lie of the hub through pull, update, diff, a pass and gc."""
    box = fresh(root, hub.endpoint)
    kind, value = lie
    requested = rooted(value, box.root) if kind == "ref" else "main"
    box.write_stack(repo=LIAR, revision=requested)
    lie_on(hub, box, kind, value)
    # A lie of the hub is exit 4; a revision that is no git ref is refused before the hub
    # is asked (any documented refusal).
    refusal = {4} if kind != "ref" else {2, 3, 4, 7}

    def expect(call: Call) -> str | None:
        if call.args[:2] == ("models", "pull") and call.code not in refusal:
            return f"`models pull` of a lying hub exited {call.code}, expected {sorted(refusal)}"
        return None

    commands = [
        ("models", "pull", f"hf:{LIAR}@{requested}"),
        ("models", "update", "-f", str(box.stack)),
        ("diff", str(box.stacks)),
        ("reconcile", "--once", "--timeout", "3", str(box.stacks)),
        ("models", "gc", "--yes", str(box.stacks)),
    ]
    drive(box, commands, sentinel=sentinel, expect=expect)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("budget", "quick"), BUDGETS)
def test_a_lying_hub_touches_nothing_outside(
    tmp_path: Path, hub: LocalHub, sentinel: Sentinel, budget: int, quick: bool
) -> None:
    """Rows 1, 2: a hub's tree path or commit id is refused (exit 4) before it becomes a
    path; nothing outside the cache, the state directory and the lock is touched."""
    examples = [("path", f"{ROOT}/victim/notes.txt"), ("sha", f"{ROOT}/victimdir/evil")]
    examples.append(("ref", f"{ROOT}/victim/.bashrc"))
    run_property(
        LIE,
        budget,
        quick,
        lambda lie: hub_example(tmp_path / "sb", hub, sentinel, lie),
        examples,
    )


# --------------------------------------------------------------------------- state files

NAN, INF = math.nan, math.inf
# Values json.dumps writes as NaN / Infinity, and markers replaced by literals it cannot
# write (an integer literal too large for a float).
BIG_LITERAL = "__1e400__"
BAD_NUMBERS = [NAN, INF, -INF, -1, 10**29, BIG_LITERAL, "x", None, [1], True]


def _json_text(value: Any) -> str:
    return json.dumps(value).replace(json.dumps(BIG_LITERAL), "1e400")


RAW_FILE = st.sampled_from(["fifo", "dev-zero", "outside", "not-utf8", "a-list"]) | st.binary(
    max_size=200
).map(lambda raw: ("bytes", raw))
RECORD = st.fixed_dictionaries(
    {
        "create_time": st.sampled_from(["real", "missing", *BAD_NUMBERS]),
        "pid": st.sampled_from(["sentinel", "sentinel", 0, -1, 4_000_000, 10**29, "1"]),
        "cmdline": st.sampled_from(["sentinel", "sentinel", [], [1]]),
        "instance": st.sampled_from(["inst-sentinel", "other"]),
        "pgid": st.sampled_from(["sentinel", 0]),
    }
)
JOB = st.fixed_dictionaries(
    {
        "owner_pid": st.sampled_from(["sentinel", *BAD_NUMBERS]),
        "owner_created": st.sampled_from(["sentinel", *BAD_NUMBERS]),
        "identity": st.sampled_from(["hf:org/m@main", [1], {"a": 1}, None, 5]),
        "finished_at": st.sampled_from([None, NAN, BIG_LITERAL, "x"]),
        "done": st.sampled_from([None, 10**29, -1, NAN]),
    }
)
PORT = st.sampled_from([70000, -1, 10**29, "8001", NAN, BIG_LITERAL, True, 0, 65536, 1.5])
PLANT = st.one_of(
    st.tuples(st.just("inventory"), RECORD),
    st.tuples(st.just("inventory-file"), RAW_FILE),
    st.tuples(st.just("job"), JOB),
    st.tuples(st.just("job-file"), RAW_FILE),
    st.tuples(st.just("ports"), PORT),
    st.tuples(st.just("ports-file"), RAW_FILE),
    st.tuples(st.just("last-good-file"), RAW_FILE),
    st.tuples(
        st.just("ref"),
        st.sampled_from(
            ["../../x", "../../../victimdir/x", f"{ROOT}/victimdir/x", "A" * 40, "a" * 41]
        ),
    ),
    st.tuples(st.just("ref-file"), RAW_FILE),
)
PLANTS = st.lists(PLANT, min_size=1, max_size=3, unique_by=lambda p: p[0].split("-")[0])


SENTINEL_RECORD = {
    "create_time": "real",
    "pid": "sentinel",
    "cmdline": "sentinel",
    "instance": "inst-sentinel",
    "pgid": "sentinel",
}
SENTINEL_JOB = {
    "owner_pid": "sentinel",
    "owner_created": "sentinel",
    "identity": "hf:org/m@main",
    "finished_at": None,
    "done": None,
}
# The issue's own cases, run before the generated ones in every budget.
STATE_EXAMPLES = [
    [("inventory", {**SENTINEL_RECORD, "create_time": NAN})],  # row 4
    [("inventory", SENTINEL_RECORD)],  # row 5: exact identity, another state's marker
    [("inventory", {**SENTINEL_RECORD, "pid": 0, "pgid": 0, "create_time": 0.0})],  # row 5
    [("job", {**SENTINEL_JOB, "owner_pid": BIG_LITERAL})],  # row 9
    [("job", {**SENTINEL_JOB, "identity": [1]})],  # row 9
    [("job-file", "fifo")],  # row 9
    [("ports", 70000)],  # row 9
    [("ports-file", "fifo")],  # row 9
    [("last-good-file", "fifo")],  # row 7
    [("ref-file", "fifo")],  # row 7
    [("ref-file", "not-utf8")],  # row 7
]


def _resolve(value: Any, sentinel: Sentinel, field: str) -> Any:
    if value != "sentinel":
        return value
    return {
        "pid": sentinel.pid,
        "pgid": sentinel.pid,
        "cmdline": list(sentinel.cmdline),
        "owner_pid": sentinel.pid,
        "owner_created": sentinel.create_time,
    }[field]


def _record(spec: dict[str, Any], sentinel: Sentinel) -> dict[str, Any]:
    """An inventory record naming the sentinel (or nearly): a user's process mlxctl
    must never adopt or signal, whatever the record claims."""
    record: dict[str, Any] = {
        "name": "fast",
        "role": "tier",
        "pid": _resolve(spec["pid"], sentinel, "pid"),
        "pgid": _resolve(spec["pgid"], sentinel, "pgid"),
        "cmdline": _resolve(spec["cmdline"], sentinel, "cmdline"),
        "instance": spec["instance"],
        "spec_hash": "x",
        "port": 8001,
        "log": "/nonexistent/fast.log",
        "started_at": 1.0,
    }
    if spec["create_time"] == "real":
        record["create_time"] = sentinel.create_time
    elif spec["create_time"] != "missing":
        record["create_time"] = spec["create_time"]
    return record


def _raw(path: Path, kind: str | tuple[str, bytes], box: Sandbox) -> None:
    if isinstance(kind, tuple):
        replace_with(path, "bytes", kind[1])
    elif kind == "fifo":
        replace_with(path, "fifo")
    elif kind == "dev-zero":
        replace_with(path, "symlink", target=Path("/dev/zero"))
    elif kind == "outside":
        replace_with(path, "symlink", target=box.victim / ".bashrc")
    elif kind == "not-utf8":
        replace_with(path, "bytes", b'{"services": {"\xff": 1}}')
    elif kind == "a-list":
        replace_with(path, "bytes", b"[1, 2]")


def plant(box: Sandbox, sentinel: Sentinel, kind: str, value: Any) -> None:
    """Write one hostile state file (or cache ref) into ``box``."""
    state, ref = box.state, box.cache / "models--org--m" / "refs" / "main"
    jobs = state / "jobs" / "0123456789abcdef.json"
    last_good = (
        state
        / "last-good"
        / (hashlib.sha256(str(box.stack.resolve()).encode()).hexdigest()[:16] + ".json")
    )
    state.mkdir(parents=True, exist_ok=True)
    if kind == "inventory":
        doc = {"version": 1, "services": {"fast": _record(value, sentinel)}}
        (state / "inventory.json").write_text(_json_text(doc))
    elif kind == "job":
        job = {k: _resolve(v, sentinel, k) for k, v in value.items()}
        job.update(display="x", started_at=1.0, step="downloading")
        jobs.parent.mkdir(parents=True, exist_ok=True)
        jobs.write_text(_json_text(job))
    elif kind == "ports":
        # A tier whose model is present: a pass gets as far as its port (a junk model
        # directory: a server started on it exits at once).
        model = box.root / "model"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text("{}")
        with box.stack.open("a") as stack:
            stack.write(f"  - {{name: local, runtime: mlx-lm, model: {{path: {model}}}}}\n")
        (state / "ports.json").write_text(_json_text({"local": value}))
    elif kind == "ref":
        ref.write_text(rooted(value, box.root))
    else:
        if kind == "last-good-file":
            # The last valid copy stands in only while the stack file is invalid.
            box.stack.write_text("apiVersion: mlxctl/v1\nkind: Stack\nspec: [\n")
        target = {
            "inventory-file": state / "inventory.json",
            "job-file": jobs,
            "ports-file": state / "ports.json",
            "last-good-file": last_good,
            "ref-file": ref,
        }[kind]
        _raw(target, value, box)


def state_example(
    root: Path, hub: LocalHub, sentinel: Sentinel, plants: list[tuple[str, Any]]
) -> None:
    """Hostile state files (and cache refs) through status, diff, a pass, gc, rm, down."""
    sentinel.ensure()
    box = fresh(root, hub.endpoint)
    for kind, value in plants:
        plant(box, sentinel, kind, value)
    stacks = str(box.stacks)
    commands = [
        ("status", stacks),
        ("diff", stacks),
        ("reconcile", "--once", "--timeout", "3", stacks),
        ("models", "gc", "--yes", stacks),
        ("models", "rm", REPO),
        ("down",),
    ]
    drive(box, commands, sentinel=sentinel)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("budget", "quick"), BUDGETS)
def test_hostile_state_files_never_signal_a_stranger_nor_hang(
    tmp_path: Path, hub: LocalHub, sentinel: Sentinel, budget: int, quick: bool
) -> None:
    """Rows 4, 5, 7, 9: inventory records with a NaN, infinite, missing or merely equal
    start time, another state directory's process, job files, ports.json, last-good
    copies and the cache's refs/ as FIFOs, /dev/zero, huge numbers, wrong types: no
    signal to the user's process, no traceback, no hang, nothing written outside."""
    run_property(
        PLANTS,
        budget,
        quick,
        lambda p: state_example(tmp_path / "sb", hub, sentinel, p),
        STATE_EXAMPLES,
    )


# --------------------------------------------------------------------------- models rm


def _shared_commit_cache(box: Sandbox, commit: str) -> None:
    """Two repos holding the same commit (a fork), both pulled by mlxctl (ledgers)."""
    for repo in ("org/a", "org/b"):
        directory = box.cache / f"models--{repo.replace('/', '--')}"
        blob = directory / "blobs" / ("c" * 40)
        snap = directory / "snapshots" / commit
        for d in (blob.parent, snap, directory / "refs"):
            d.mkdir(parents=True, exist_ok=True)
        blob.write_text("{}")
        (snap / "config.json").symlink_to(Path("..") / ".." / "blobs" / blob.name)
        (directory / "refs" / "main").write_text(commit)
        ledger = box.state / "models" / "hub" / repo.replace("/", "--") / f"{commit}.json"
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_text(json.dumps({"repo": repo, "commit": commit, "files": {}}))


def test_models_rm_deletes_exactly_the_named_repo(tmp_path: Path, hub: LocalHub) -> None:
    """Row 3: two repos holding one commit; removing either leaves the other whole.

    Deletion by commit picks whichever repo huggingface_hub's scan lists first, and
    that order changes with every cache built (it hashes timestamps): eight removals,
    alternating the name, find a wrong one with probability 1 - 1/256.
    """
    commit = "d" * 40
    for named, other in [("org/b", "org/a"), ("org/a", "org/b")] * 4:
        box = fresh(tmp_path / "sb", hub.endpoint)
        _shared_commit_cache(box, commit)
        call = box.run("models", "rm", named)
        assert call.code == 0, call.stderr
        kept = box.cache / f"models--{other.replace('/', '--')}" / "snapshots" / commit
        gone = box.cache / f"models--{named.replace('/', '--')}" / "snapshots" / commit
        assert (kept / "config.json").is_file(), f"`models rm {named}` deleted {other}"
        assert not gone.exists(), f"`models rm {named}` left {named} in place"


# --------------------------------------------------------------------------- the sandbox itself


def test_the_sandbox_sees_damage_and_a_killed_sentinel(
    tmp_path: Path, hub: LocalHub, sentinel: Sentinel
) -> None:
    """The checks themselves can fail: a deleted, chmodded or created sentinel is seen."""
    box = fresh(tmp_path / "sb", hub.endpoint)
    box.snapshot()
    (box.victim / ".bashrc").unlink()
    box.victimdir.chmod(0o700)
    (box.victimdir / "x.json").write_text("{}")
    (box.cache / "models--org--m" / "refs").chmod(0o700)
    (box.state / "anything").parent.mkdir(parents=True, exist_ok=True)
    (box.state / "anything").write_text("allowed")
    damage = box.damage()
    assert any(d.startswith("removed") and d.endswith("victim/.bashrc") for d in damage)
    assert any("victimdir:" in d and "755 -> dir 700" in d for d in damage), damage
    assert any(d.startswith("created") and d.endswith("victimdir/x.json") for d in damage)
    assert any("refs: 755 -> 700" in d for d in damage), damage
    assert not any("anything" in d for d in damage)
    assert sentinel.alive()
    assert sentinel.proc is not None
    sentinel.proc.terminate()
    sentinel.proc.wait(5)
    assert not sentinel.alive()


def _hangs(args: list[str]) -> int:
    time.sleep(60)
    return 0


def _raises(args: list[str]) -> int:
    raise RuntimeError("an escaped exception")


def _allocates(args: list[str]) -> int:
    return len(bytearray(4 << 30))


def test_the_runner_catches_a_hang_a_traceback_and_a_memory_hog(
    tmp_path: Path, hub: LocalHub
) -> None:
    """The runner kills a call at its deadline, reports an escaped exception and stops a
    call that maps more than its allowance."""
    box = fresh(tmp_path / "sb", hub.endpoint)
    started = time.monotonic()
    hung = run_cli(["x"], box.env, cwd=box.root, output=box.work, timeout=1, entry=_hangs)
    assert hung.timed_out and time.monotonic() - started < 10
    assert hung.problems() and "did not finish" in hung.problems()[0]
    raised = run_cli(["x"], box.env, cwd=box.root, output=box.work, entry=_raises)
    assert raised.code == ESCAPED and "Traceback" in raised.stderr
    assert len(raised.problems()) == 2, raised.problems()
    hog = run_cli(["x"], box.env, cwd=box.root, output=box.work, entry=_allocates)
    assert hog.code == ESCAPED and "MemoryError" in hog.stderr


# Cases mlxctl already handled before issue 15: the harness must pass them (no false alarm).
ALREADY_HANDLED = [
    ("lock", ("raw", "a-list")),
    ("lock", ("raw", "a-scalar")),
    ("lock", ("raw", "directory")),
    ("lock", ("raw", "outside-file")),
    ("state", [("inventory", {**SENTINEL_RECORD, "create_time": INF})]),
    ("state", [("inventory", {**SENTINEL_RECORD, "create_time": -1})]),
    ("state", [("inventory", {**SENTINEL_RECORD, "create_time": "missing"})]),
    ("state", [("inventory-file", "fifo"), ("ports-file", "a-list")]),
]


CASE_IDS = [str(c)[:60] for _, c in ALREADY_HANDLED]


@pytest.mark.parametrize(("kind", "case"), ALREADY_HANDLED, ids=CASE_IDS)
def test_inputs_mlxctl_already_refused_pass_the_same_checks(
    tmp_path: Path, hub: LocalHub, sentinel: Sentinel, kind: str, case: Any
) -> None:
    """The same checks, on inputs handled before the fixes: what the suite flags is the
    input, not the harness."""
    if kind == "lock":
        lock_example(tmp_path / "sb", hub, sentinel, case)
    else:
        state_example(tmp_path / "sb", hub, sentinel, case)
