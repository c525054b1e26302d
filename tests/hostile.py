"""A sandbox for the hostile-input suite (issue #15): one root, a sentinel tree, a CLI runner.

The trust-boundary property is about what mlxctl may touch, so every test builds a
:class:`Sandbox`: one temporary root holding ``MLXCTL_HOME``, ``HF_HUB_CACHE``, the
stack directory with its lock file, and *sentinel* files and directories that are
none of those (``victim/.bashrc``, ``victimdir/``, a repo in the shared cache that
another tool downloaded). :meth:`Sandbox.snapshot` records type, mode and content of
everything mlxctl may not change; :meth:`Sandbox.damage` says what changed since.

:func:`run_cli` runs ``mlxctl.cli.main`` in a forked child of the test process: the
imports are paid once here (a subprocess ``python -m mlxctl`` costs ~0.5 s, a fork
~30 ms), and the child is still a process of its own, so a hang is killed at a
deadline, memory is bounded with ``RLIMIT_AS`` and a signal it sends lands on a
sentinel process, not on the test. :class:`Sentinel` is that process: a ``sleep``
the test starts, checks and stops by PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = "org/m"
FOREIGN = "org/keep"
FOREIGN_COMMIT = "f" * 40
STACK_NAME = "s.yaml"
LOCK_NAME = "s.lock.yaml"
# Every exit code docs/exit-codes.md documents (70: the runner's own "an exception
# escaped main", never a documented one).
DOCUMENTED = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 130})
ESCAPED = 70
# Wall clock per call: a bounded call takes well under a second here; a FIFO read or a
# retry loop never ends. Generous for a 2-core machine shared with other test runs.
CALL_SECONDS = 8.0
# Address space a call may add on top of what the forked test process already maps:
# reading /dev/zero or a 50 MB lock whole must fail, a real command never comes close.
EXTRA_ADDRESS_SPACE = 1 << 30
# What the CLI lazily imports, imported once in the test process so each fork skips it.
PRELOAD = (
    "mlxctl.cli",
    "mlxctl.app.stacks",
    "mlxctl.app.models",
    "mlxctl.app.ops",
    "mlxctl.reconcile.controller",
    "mlxctl.reconcile.passes",
    "mlxctl.reconcile.teardown",
    "mlxctl.status.report",
    "mlxctl.sources.registry",
    "mlxctl.machine.processes",
    "mlxctl.machine.probes",
    "ruamel.yaml",
    "huggingface_hub",
    "huggingface_hub.hf_api",
    "huggingface_hub.file_download",
)


def preload() -> None:
    """Import what every CLI call needs, in this process (forks inherit it)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    for name in PRELOAD:
        importlib.import_module(name)
    from mlxctl import cli

    cli._register()


# --------------------------------------------------------------------------- CLI runner


@dataclass(frozen=True)
class Call:
    """One CLI call and everything the property checks about it."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool

    def problems(self) -> list[str]:
        """What makes this call a failure whatever its input: no exit code the docs
        list, an escaped exception, a hang, a multi-line or traceback error."""
        name = " ".join(self.args)[:120]
        last = (self.stderr.strip().splitlines() or [""])[-1][:300]
        out = []
        if self.timed_out:
            out.append(f"`{name}` did not finish in {CALL_SECONDS:.0f}s (killed)")
        elif self.code not in DOCUMENTED:
            out.append(f"`{name}` exited {self.code} (undocumented): {last!r}")
        if "Traceback" in self.stderr:
            out.append(f"`{name}` printed a traceback ending {last!r}")
        return out


def _address_space_limit() -> int:
    """This process's mapped size plus the allowance (the fork starts with the same maps)."""
    return int(psutil.Process().memory_info().vms) + EXTRA_ADDRESS_SPACE


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path,
    output: Path,
    timeout: float = CALL_SECONDS,
    entry: Callable[[list[str]], int] | None = None,
) -> Call:
    """``mlxctl ARGS`` in a forked child with ``env``; killed (its group) at ``timeout``.

    ``entry``: what the child runs instead of ``mlxctl.cli.main`` (the runner's own tests).
    """
    out, err = output / "stdout", output / "stderr"
    limit = _address_space_limit()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(list(args), dict(env), cwd, out, err, limit, entry)
    timed_out = False
    status = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - started > timeout:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    seconds = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    text = (out.read_bytes().decode(errors="replace"), err.read_bytes().decode(errors="replace"))
    return Call(tuple(args), code, text[0], text[1], seconds, timed_out)


def _child(
    args: list[str],
    env: dict[str, str],
    cwd: Path,
    out: Path,
    err: Path,
    limit: int,
    entry: Callable[[list[str]], int] | None,
) -> None:
    code = ESCAPED
    try:
        os.setpgid(0, 0)  # its own group: a timeout kills whatever it left behind too
        for fd, path in ((1, out), (2, err)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(handle, fd)
            os.close(handle)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child's lifetime
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if entry is None:
            from mlxctl.cli import main

            entry = main
        code = entry(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else ESCAPED
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        code = ESCAPED
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# --------------------------------------------------------------------------- sentinel process


@dataclass
class Sentinel:
    """A ``sleep 1000`` of "the user's": nothing mlxctl does may signal it.

    ``marker``: environment it carries, e.g. another state directory's marker (a copy
    of a state directory names processes that are not this one's).
    """

    marker: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    create_time: float = 0.0
    cmdline: tuple[str, ...] = ()

    def ensure(self) -> Sentinel:
        """Started, or started again when an earlier example killed it."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            ["sleep", "1000"],
            env={**os.environ, **self.marker},
            start_new_session=True,  # never in the test's process group
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + 5
        while not process.cmdline() and time.monotonic() < deadline:
            time.sleep(0.005)  # exec not visible yet
        self.create_time = process.create_time()
        self.cmdline = tuple(process.cmdline())
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Kill it by PID (and reap it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------- the sandbox


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    digest: str


def _entry(path: Path) -> Entry:
    info = path.lstat()
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return Entry("symlink", 0, os.readlink(path))
    if stat.S_ISDIR(info.st_mode):
        return Entry("dir", mode, "")
    if stat.S_ISREG(info.st_mode):
        return Entry("file", mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return Entry("special", mode, str(stat.S_IFMT(info.st_mode)))


class Sandbox:
    """One root holding mlxctl's directories, the stack and the sentinel tree.

    May change: ``home/`` (MLXCTL_HOME: config and state), the lock file and its
    temporary siblings, and the cache, except the foreign repo and the modes of the
    cache directories that were there before. Anything else is a sentinel.
    """

    def __init__(self, root: Path, endpoint: str) -> None:
        self.root = root
        self.home = root / "home"
        self.state = self.home / "state"
        self.cache = root / "hf-cache"
        self.stacks = root / "stacks"
        self.stack = self.stacks / STACK_NAME
        self.lock = self.stacks / LOCK_NAME
        self.victim = root / "victim"
        self.victimdir = root / "victimdir"
        self.endpoint = endpoint
        self.work = root / ".runner"  # the runner's own output files, not mlxctl's
        self._before: dict[str, Entry] = {}
        self._cache_dirs: dict[str, int] = {}
        self.build()

    # -- layout ----------------------------------------------------------------------

    def build(self) -> None:
        for directory in (self.stacks, self.victim, self.victimdir, self.root / "srv"):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        self.work.mkdir(exist_ok=True)
        (self.victim / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
        (self.victim / "notes.txt").write_text("the user's notes\n")
        (self.victim / "config.json").write_text('{"user": true}\n')
        for path in self.victim.iterdir():
            path.chmod(0o644)
        self.write_stack()
        self._foreign_repo()
        # The shared cache's repo directory of REPO, as another tool left it (0755).
        refs = self.cache / f"models--{REPO.replace('/', '--')}" / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        for directory in (self.cache, refs.parent, refs):
            directory.chmod(0o755)

    def _foreign_repo(self) -> None:
        """A repo another tool downloaded: mlxctl has no ledger for it, no stack names it."""
        repo = self.cache / f"models--{FOREIGN.replace('/', '--')}"
        blob = repo / "blobs" / ("b" * 40)
        snap = repo / "snapshots" / FOREIGN_COMMIT
        for directory in (blob.parent, snap, repo / "refs"):
            directory.mkdir(parents=True, exist_ok=True)
        blob.write_text('{"foreign": true}\n')
        link = snap / "config.json"
        if not link.is_symlink():
            link.symlink_to(Path("..") / ".." / "blobs" / blob.name)
        (repo / "refs" / "main").write_text(FOREIGN_COMMIT)

    def write_stack(self, revision: str = "main", repo: str = REPO) -> None:
        """One tier on a hub model, no gateway (a call must never start a LiteLLM)."""
        model = json.dumps({"hf": repo, "revision": revision})
        self.stack.write_text(
            "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: hostile}\nspec:\n"
            "  gateway: {enabled: false}\n"
            f"  tiers:\n  - {{name: fast, runtime: mlx-lm, model: {model}}}\n"
        )
        self.stack.chmod(0o644)

    @property
    def env(self) -> dict[str, str]:
        """The environment of a call: everything mlxctl may use points into the root."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HF_", "HUGGINGFACE_", "XDG_", "MLXCTL_"))
        }
        env.update(
            HOME=str(self.victim),  # `~` is the victim's home: ~/.bashrc is a sentinel
            MLXCTL_HOME=str(self.home),
            HF_HUB_CACHE=str(self.cache),
            HF_ENDPOINT=self.endpoint,
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_ETAG_TIMEOUT="3",
            HF_HUB_DOWNLOAD_TIMEOUT="3",
            PYTHONUNBUFFERED="1",
        )
        return env

    def run(self, *args: str) -> Call:
        """One call; a call killed at its deadline is run once more before it counts as a
        hang (a forked child can, rarely, inherit a lock another thread of the test held;
        a real hang hangs twice)."""
        call = run_cli(args, self.env, cwd=self.stacks, output=self.work)
        if call.timed_out:
            call = run_cli(args, self.env, cwd=self.stacks, output=self.work)
        return call

    # -- the sentinel tree -------------------------------------------------------------

    def _may_change(self, path: Path) -> bool:
        if path == self.home or self.home in path.parents or path == self.work:
            return True
        if self.work in path.parents:
            return True
        if path.parent == self.stacks and (
            path.name == LOCK_NAME or path.name.startswith(f".{LOCK_NAME}.")
        ):
            return True
        foreign = self.cache / f"models--{FOREIGN.replace('/', '--')}"
        if path == foreign or foreign in path.parents:
            return False
        return self.cache in path.parents  # the cache itself: its mode is a sentinel

    def _walk(self) -> Iterator[Path]:
        stack = [self.root]
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                path = Path(entry.path)
                yield path
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)

    def snapshot(self) -> None:
        """Record the sentinel tree, and the modes of the cache's directories."""
        self._before = self._sentinels()
        self._cache_dirs = {
            str(p): stat.S_IMODE(p.lstat().st_mode)
            for p in [self.cache, *self.cache.rglob("*")]
            if p.is_dir() and not p.is_symlink()
        }

    def _sentinels(self) -> dict[str, Entry]:
        found = {str(self.root): _entry(self.root)}
        for path in self._walk():
            if not self._may_change(path):
                with contextlib.suppress(OSError):
                    found[str(path)] = _entry(path)
        return found

    def damage(self) -> list[str]:
        """Every sentinel created, removed or changed since :meth:`snapshot`."""
        after = self._sentinels()
        out = [f"removed {p}" for p in sorted(self._before.keys() - after.keys())]
        out += [f"created {p}" for p in sorted(after.keys() - self._before.keys())]
        for path in sorted(self._before.keys() & after.keys()):
            old, new = self._before[path], after[path]
            if old != new:
                out.append(f"changed {path}: {_describe(old)} -> {_describe(new)}")
        for path, mode in sorted(self._cache_dirs.items()):
            with contextlib.suppress(OSError):
                now = stat.S_IMODE(Path(path).lstat().st_mode)
                if now != mode:
                    out.append(f"changed mode of the cache's {path}: {mode:o} -> {now:o}")
        return out

    def stop_leftovers(self) -> list[int]:
        """Kill, by PID, any process carrying this sandbox's state marker (a server a call
        started); returns their PIDs. The calls here should never start one."""
        killed = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("MLXCTL_STATE") == str(self.state):
                    proc.kill()
                    killed.append(proc.pid)
        return killed


def _describe(entry: Entry) -> str:
    detail = entry.digest[:12] if entry.kind == "file" else entry.digest
    return f"{entry.kind} {entry.mode:o} {detail}".strip()


def write_json(path: Path, value: Any) -> None:
    """``value`` as JSON, NaN and infinities included (Python's json reads them back)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def make_fifo(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def replace_with(path: Path, kind: str, data: bytes = b"", target: Path | None = None) -> None:
    """Put a hostile file at ``path``: ``bytes``, ``fifo`` or ``symlink`` to ``target``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        assert target is not None
        path.symlink_to(target)
    else:
        path.write_bytes(data)
