"""``mlxctl doctor``: what is wrong with this installation, one check a line, each with a fix.

Every check is a small function from what was observed (versions, a sysctl value, a
port's owner, a lock line...) to a :class:`Check`, so a unit test hands it fakes;
:func:`run` observes the real machine and calls them in order. ``fail`` means mlxctl
cannot work as asked (a runtime the stack uses is missing, a port is held by a
stranger, the stack does not fit its budget); ``warn`` means it works, with a caveat.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlxctl.capacity.memory import BudgetCheck, gib
from mlxctl.desired.state import DesiredService, DesiredState, ModelRef
from mlxctl.errors import MlxctlError
from mlxctl.machine.lock_holder import pid_alive, recorded_holder
from mlxctl.machine.record import Record
from mlxctl.paths import SOCKET_PATH_MAX, Paths

if TYPE_CHECKING:
    from mlxctl.app.service import ServiceStatus
    from mlxctl.machine.services.base import Runner
    from mlxctl.reconcile.context import Context

Level = Literal["ok", "warn", "fail", "skip"]
GIB = 1 << 30
# Runtimes by distribution name, with the module each is imported as.
RUNTIMES = {"mlx": "mlx", "mlx-lm": "mlx_lm", "vllm-mlx": "vllm_mlx"}


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level, "detail": self.detail, "fix": self.fix}


def failed(checks: Iterable[Check]) -> bool:
    return any(c.level == "fail" for c in checks)


# -- the checks ------------------------------------------------------------------------


def check_runtimes(versions: Mapping[str, str | None], used: Iterable[str]) -> Check:
    """``versions``: distribution -> installed version (None: not importable); ``used``:
    the runtimes the stack's tiers name (``mlx-lm``, ``vllm-mlx``); both need ``mlx``."""
    needed = set(used)
    if needed:
        needed.add("mlx")
    found = [f"{name} {v}" for name, v in versions.items() if v]
    missing_needed = sorted(n for n in needed if not versions.get(n))
    detail = ", ".join(found) or "none installed"
    if missing_needed:
        return Check(
            "runtimes",
            "fail",
            f"{', '.join(missing_needed)} not importable (the stack uses it); found: {detail}",
            "reinstall mlxctl with its dependencies (`uv sync`, or `pip install mlxctl`)",
        )
    absent = sorted(n for n, v in versions.items() if not v)
    if absent:
        return Check("runtimes", "ok", f"{detail}; not installed: {', '.join(absent)} (unused)")
    return Check("runtimes", "ok", detail)


@dataclass(frozen=True)
class Backend:
    device: str  # mlx.core.default_device(), e.g. "Device(gpu, 0)"
    metal: bool
    cuda: bool


def check_backend(backend: Backend | str, sys_platform: str) -> Check:
    """``backend``: what MLX reports, or why it could not be asked."""
    if isinstance(backend, str):
        return Check(
            "mlx backend",
            "fail",
            f"MLX cannot start: {backend}",
            "reinstall mlx (`uv sync`); on Linux the CPU build is `mlx[cpu]`",
        )
    name = "Metal" if backend.metal else "CUDA" if backend.cuda else "CPU"
    detail = f"{name} ({backend.device})"
    if sys_platform == "darwin" and not backend.metal:
        return Check(
            "mlx backend",
            "fail",
            f"{detail}: Metal is not available",
            "run on Apple silicon with macOS 14 or later, with a native arm64 Python (not Rosetta)",
        )
    if name == "CPU":
        return Check(
            "mlx backend",
            "warn",
            f"{detail}: models run on the CPU, slowly",
            "on an NVIDIA machine install `mlx[cuda]`; elsewhere the CPU is all there is",
        )
    return Check("mlx backend", "ok", detail)


def check_wired_limit(
    sys_platform: str, limit_mb: int | None, memory_bytes: int, need_bytes: int | None
) -> Check:
    """macOS: the GPU wired-memory limit (``iogpu.wired_limit_mb``, 0 = the default,
    about two thirds of RAM: Metal's recommended working set) against what the stack's
    tiers need together (the always tiers plus the largest on-demand one)."""
    if sys_platform != "darwin":
        return Check("gpu wired limit", "skip", "macOS only (iogpu.wired_limit_mb); not on Linux")
    if limit_mb is None:
        return Check("gpu wired limit", "warn", "could not read `sysctl iogpu.wired_limit_mb`")
    default = limit_mb == 0
    limit = memory_bytes * 2 // 3 if default else limit_mb << 20
    shown = f"{gib(limit)} ({'the default, about 2/3 of RAM' if default else f'{limit_mb} MB'})"
    if need_bytes is None:
        return Check("gpu wired limit", "ok", f"{shown}; the stack's need is not estimated")
    if need_bytes > limit:
        want = min(need_bytes * 11 // 10, memory_bytes - 4 * GIB) >> 20
        return Check(
            "gpu wired limit",
            "fail" if want > (limit >> 20) else "warn",
            f"{shown}, the stack needs {gib(need_bytes)}: Metal would page or refuse",
            f"sudo sysctl iogpu.wired_limit_mb={want} (until reboot), or smaller models",
        )
    return Check("gpu wired limit", "ok", f"{shown} >= the stack's {gib(need_bytes)}")


def check_ports(
    wanted: Sequence[tuple[str, int]],
    owner: Callable[[int], str | None],
    ours: Mapping[int, str],
) -> Check:
    """``wanted``: (service, port); ``owner``: who listens on a port (None: free);
    ``ours``: ports our recorded, live services hold -> their name."""
    if not wanted:
        return Check("ports", "skip", "no stack: no ports to check")
    taken = []
    mine = []
    for name, port in wanted:
        holder = owner(port)
        if holder is None:
            continue
        if port in ours:
            mine.append(f"{port} ({ours[port]})")
        else:
            taken.append(f"{port} ({name}) held by {holder}")
    if taken:
        return Check(
            "ports",
            "fail",
            "; ".join(taken),
            "stop that program, or give the tier another `port:` (or none: one is assigned)",
        )
    detail = f"{len(wanted)} port(s) free or ours"
    return Check("ports", "ok", detail + (f": in use by us: {', '.join(mine)}" if mine else ""))


@dataclass(frozen=True)
class DiskNeed:
    where: Path  # the existing directory the downloads land under
    missing: int  # bytes not on disk yet
    free: int
    models: tuple[str, ...]
    unknown: tuple[str, ...] = ()  # hub models with no pinned sizes (not locked yet)


def check_disk(needs: Sequence[DiskNeed], has_stack: bool = True) -> Check:
    if not has_stack:
        return Check("disk", "skip", "no stack")
    if not needs:
        return Check("disk", "ok", "every model of the stack is on disk")
    short = [n for n in needs if n.missing > n.free]
    parts = [
        f"{gib(n.missing)} to pull ({', '.join(n.models)}), {gib(n.free)} free in {n.where}"
        for n in needs
        if n.missing
    ]
    unknown = sorted({m for n in needs for m in n.unknown})
    if unknown:
        parts.append(f"size unknown until pinned: {', '.join(unknown)}")
    if short:
        return Check(
            "disk",
            "fail",
            "; ".join(parts),
            "free space there, or move the Hugging Face cache (HF_HUB_CACHE) to a larger disk",
        )
    fix = "`mlxctl models update` pins them (and their sizes)" if unknown else ""
    return Check("disk", "warn" if unknown else "ok", "; ".join(parts), fix)


def check_memory(budget: BudgetCheck | None, has_stack: bool) -> Check:
    if not has_stack:
        return Check("memory budget", "skip", "no stack")
    if budget is None:
        return Check("memory budget", "ok", "no budget set for this stack")
    if budget.fits:
        return Check("memory budget", "ok", f"{gib(budget.total)} of {gib(budget.budget)} budget")
    fix = budget.suggestions[0] if budget.suggestions else "smaller variants, or fewer tiers"
    return Check("memory budget", "fail", budget.message.splitlines()[0], fix)


def check_hf_token(has_token: bool, repos: Sequence[str]) -> Check:
    """Whether huggingface_hub finds a token (its value is never shown)."""
    if has_token:
        return Check("hf token", "ok", "a token is configured (gated repos can be pulled)")
    if not repos:
        return Check("hf token", "ok", "no token; the stack pulls nothing from the hub")
    return Check(
        "hf token",
        "warn",
        f"no token: a gated repo among {', '.join(sorted(set(repos)))} would fail to pull",
        "`hf auth login` (or HF_TOKEN in the environment), after accepting the repo's terms",
    )


def check_controller(controller_pid: int | None, service: ServiceStatus | None) -> Check:
    """``service``: :class:`mlxctl.app.service.ServiceStatus`, or None (no manager here)."""
    parts = []
    level: Level = "ok"
    fix = ""
    if controller_pid is not None:
        parts.append(f"a controller answers (pid {controller_pid})")
    else:
        parts.append("no controller runs")
    if service is None:
        parts.append("no service manager here")
    elif not service.installed:
        parts.append(f"service not installed ({service.platform})")
        if controller_pid is None:
            level, fix = "warn", "`mlxctl service install` (or run `mlxctl reconcile`)"
    else:
        state = "running" if service.manager.running else "not running"
        loaded = "loaded" if service.manager.loaded else "not loaded"
        parts.append(f"service installed, {loaded}, {state}")
        if not service.current:
            level, fix = "warn", "`mlxctl service install` (the file is out of date)"
        elif not service.manager.running:
            level, fix = "warn", f"see its log: {service.log}"
    return Check("controller", level, "; ".join(parts), fix)


LINGER_FIX = "loginctl enable-linger $USER to start at boot, not only at login"


def check_linger(service: ServiceStatus | None, linger: bool | None) -> Check:
    """Linux with the systemd user unit installed: whether logind starts the user's
    manager (and the controller with it) at boot and keeps it across logouts (linger),
    or only from login to logout. Never a failure: serving from login is a choice."""
    if service is None or service.platform != "systemd":
        return Check("linger", "skip", "Linux (systemd) only")
    if not service.installed:
        return Check("linger", "skip", "the systemd user service is not installed")
    if linger is None:
        return Check(
            "linger",
            "skip",
            "unknown: logind did not answer (no /var/lib/systemd/linger entry)",
        )
    if linger:
        return Check("linger", "ok", "on: the controller starts at boot, and outlives logouts")
    return Check(
        "linger",
        "warn",
        "off: the controller starts at your login and stops at your last logout",
        LINGER_FIX,
    )


@dataclass(frozen=True)
class Mode:
    path: Path
    mode: int | None  # None: absent
    uid: int | None = None


def check_socket(socket: Path, modes: Sequence[Mode], my_uid: int) -> Check:
    """The admin socket's path fits a socket address everywhere, and it and the
    directories above it are private and ours."""
    length = len(os.fsencode(socket))
    if length > SOCKET_PATH_MAX:
        return Check(
            "admin socket",
            "fail",
            f"{socket} is {length} bytes, over {SOCKET_PATH_MAX}",
            "a shorter MLXCTL_HOME / XDG_STATE_HOME",
        )
    loose = [
        f"{m.path} is {m.mode:o}"
        for m in modes
        if m.mode is not None and m.mode & 0o077
    ]  # fmt: skip
    foreign = [f"{m.path} belongs to uid {m.uid}" for m in modes if m.uid not in (None, my_uid)]
    if loose or foreign:
        return Check(
            "admin socket",
            "fail",
            "; ".join(foreign + loose),
            "`chmod 700` the directory (600 the socket), or restart the controller, which repairs "
            "them",
        )
    exists = any(m.path == socket and m.mode is not None for m in modes)
    return Check(
        "admin socket",
        "ok",
        f"{socket} ({length} bytes; {'private' if exists else 'not bound: no controller'})",
    )


def check_lock(holder: Mapping[str, Any] | None, alive: bool) -> Check:
    if holder is None:
        return Check("state lock", "ok", "free")
    who = f"pid {holder['pid']} ({holder.get('command', '?')}, since {holder.get('since', '?')})"
    if alive:
        return Check("state lock", "ok", f"held by {who}")
    return Check(
        "state lock",
        "warn",
        f"stale: names {who}, which is gone (killed: the kernel released the lock)",
        "nothing to do: the next controller or `mlxctl reconcile --once` overwrites the line",
    )


def check_inventory(records: Mapping[str, Record] | str, gone: Callable[[Record], bool]) -> Check:
    """``records``: the inventory, or why it cannot be read; ``gone``: whether a record's
    processes are all gone."""
    if isinstance(records, str):
        return Check("inventory", "fail", records, "see docs/reliability-runtime.md")
    dead = sorted(
        f"{name} (pid {r.pid})"
        for name, r in records.items()
        if r.spawned and r.died_at is None and gone(r)
    )
    if dead:
        return Check(
            "inventory",
            "warn",
            f"recorded but gone: {', '.join(dead)}",
            "`mlxctl reconcile --once` (or the controller's next pass) restarts or forgets them",
        )
    return Check("inventory", "ok", f"{len(records)} record(s), each alive or known dead")


# -- observing the machine ----------------------------------------------------------------


def runtime_versions() -> dict[str, str | None]:
    """Installed and importable (found without importing: importing vllm-mlx takes seconds)."""
    import importlib.metadata
    import importlib.util

    found: dict[str, str | None] = {}
    for dist, module in RUNTIMES.items():
        try:
            spec = importlib.util.find_spec(module)
            found[dist] = importlib.metadata.version(dist) if spec is not None else None
        except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
            found[dist] = None
    return found


def mlx_backend() -> Backend | str:
    try:
        import mlx.core as mx

        metal = bool(mx.metal.is_available())
        cuda_mod = getattr(mx, "cuda", None)
        cuda = bool(cuda_mod.is_available()) if cuda_mod is not None else False
        return Backend(str(mx.default_device()), metal, cuda)
    except Exception as exc:  # an import or runtime failure is what this check reports
        return f"{type(exc).__name__}: {exc}"


def disk_needs(desired: DesiredState) -> list[DiskNeed]:
    """Hub models not yet (wholly) on disk, by the filesystem they will land on."""
    import shutil

    by_place: dict[Path, tuple[int, list[str], list[str]]] = {}
    for tier in desired.tiers:
        model = tier.model
        if model is None or not model.repo:
            continue
        missing, known = _missing_bytes(model)
        if known and missing == 0:
            continue
        place = _existing_ancestor(model.directory)
        total, names, unknown = by_place.get(place, (0, [], []))
        (names if known else unknown).append(model.display)
        by_place[place] = (total + missing, names, unknown)
    needs = []
    for place, (missing, names, unknown) in sorted(by_place.items()):
        free = shutil.disk_usage(place).free
        needs.append(DiskNeed(place, missing, free, tuple(names), tuple(unknown)))
    return needs


def _missing_bytes(model: ModelRef) -> tuple[int, bool]:
    """Bytes of the pinned files not in the snapshot yet; False when nothing is pinned."""
    if not model.files:
        return 0, model.directory.is_dir()
    return sum(f.size for f in model.files if not (model.directory / f.path).exists()), True


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def wired_limit_mb(runner: Runner) -> int | None:
    answer = runner.run(["sysctl", "-n", "iogpu.wired_limit_mb"])
    text = answer.stdout.strip()
    return int(text) if answer.ok and text.isdigit() else None


def linger_state(user: str, runner: Runner, linger_dir: Path | None = None) -> bool | None:
    """Whether ``user`` lingers: logind's file for them (``/var/lib/systemd/linger/USER``)
    when its directory is there, else logind's own answer (None: no answer)."""
    from mlxctl.machine.services.systemd import LINGER_DIR, linger_query, parse_linger

    where = LINGER_DIR if linger_dir is None else linger_dir
    try:
        if (where / user).exists():
            return True
        if where.is_dir():
            return False
    except OSError:
        pass
    return parse_linger(runner.run(linger_query(user)))


def has_hf_token() -> bool:
    try:
        from huggingface_hub import get_token

        return bool(get_token())
    except Exception:  # an unreadable token file reads as none
        return False


def socket_modes(paths: Paths, socket: Path) -> list[Mode]:
    found = []
    for path in dict.fromkeys((paths.state, socket.parent, socket)):
        try:
            st = os.stat(path)
        except OSError:
            found.append(Mode(path, None))
            continue
        found.append(Mode(path, stat.S_IMODE(st.st_mode), st.st_uid))
    return found


def run(ctx: Context, targets: Sequence[Path], controller_pid: int | None) -> list[Check]:
    """Every check, in order, on the real machine (``ctx``: the CLI's context)."""
    from mlxctl.app import service, stacks
    from mlxctl.plan.planner import memory_check

    paths = ctx.paths
    desired = stacks.current_desired(ctx, targets)
    runner = service.real_runner()
    checks = [check_runtimes(runtime_versions(), {t.runtime for t in _tiers(desired)})]
    checks.append(check_backend(mlx_backend(), sys.platform))
    budget = memory_check(desired) if desired is not None else None
    need = budget.total if budget is not None else None
    limit = wired_limit_mb(runner) if sys.platform == "darwin" else None
    checks.append(check_wired_limit(sys.platform, limit, ctx.memory_bytes(), need))
    records: dict[str, Record] | str
    try:
        records = ctx.inventory.load()
    except MlxctlError as exc:
        records = str(exc)

    def gone(record: Record) -> bool:
        return bool(ctx.procs.remaining(record.identity()) == 0)

    live = {} if isinstance(records, str) else records
    ours = {r.port: name for name, r in live.items() if r.spawned and not gone(r)}
    wanted = [(s.name, s.port) for s in (desired.services if desired else ())]
    checks.append(check_ports(wanted, ctx.procs.port_owner, ours))
    has_stack = bool(desired and desired.tiers)
    checks.append(check_disk(disk_needs(desired) if desired else [], has_stack))
    checks.append(check_memory(budget, has_stack))
    repos = [t.model.repo for t in _tiers(desired) if t.model is not None and t.model.repo]
    checks.append(check_hf_token(has_hf_token(), repos))
    status = None
    linger = None
    if sys.platform in ("darwin", "linux"):
        platform = service.platform_for(None, sys.platform)
        spec = service.spec_for(paths)
        status = service.status(platform, spec, runner, paths, controller_pid)
        if status.platform == "systemd" and status.installed:
            linger = linger_state(spec.user, runner)
    checks.append(check_controller(controller_pid, status))
    checks.append(check_linger(status, linger))
    socket = paths.admin_socket
    checks.append(check_socket(socket, socket_modes(paths, socket), os.getuid()))
    holder = recorded_holder(paths.lock)
    checks.append(check_lock(holder, holder is not None and pid_alive(int(holder["pid"]))))
    checks.append(check_inventory(records, gone))
    return checks


def _tiers(desired: DesiredState | None) -> tuple[DesiredService, ...]:
    return desired.tiers if desired is not None else ()
