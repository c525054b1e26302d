"""``mlxctl service install|uninstall|status``: the controller as a login service.

The platform adapters (``mlxctl.machine.services``) render the file and name the
commands; this use case decides what to do from what is there: the file is written
by one writer only when it differs (installing twice rewrites nothing and says so),
the manager is told to load it only when it does not know it yet (or reload it when
the file changed), and uninstall unloads then removes, leaving no file behind.

What a restart of the controller by the service manager does to the model servers:
nothing. They keep serving; the new controller adopts them from the inventory on its
first pass, and a ``down`` (its suspension marker) outlives the restart. See
docs/service.md.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxctl.errors import MlxctlError
from mlxctl.files import private_dir
from mlxctl.machine.lock_holder import pid_alive, recorded_holder
from mlxctl.machine.services import writer
from mlxctl.machine.services.base import (
    LAUNCHD_LOG,
    UNIT,
    File,
    Loaded,
    Platform,
    Runner,
    ServiceSpec,
)
from mlxctl.machine.services.registry import PLATFORMS, platform_for
from mlxctl.paths import Paths

__all__ = [
    "PLATFORMS", "Platform", "Runner", "ServiceSpec", "ServiceStatus", "platform_for", "spec_for",
]  # fmt: skip

# Variables the service inherits from the shell that installs it: where mlxctl keeps its
# files (the service must use the same state directory as the CLI that talks to it) and
# where the Hugging Face cache is. Never a token: the file is readable, and
# huggingface_hub finds a saved token by itself (``hf auth login``).
CARRIED = (
    "MLXCTL_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME",
    "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "PYTHONPATH",
)  # fmt: skip


def spec_for(
    paths: Paths,
    stacks: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    python: str | None = None,
    uid: int | None = None,
    user: str | None = None,
) -> ServiceSpec:
    """The service for this user and installation: the running interpreter (the venv's,
    not resolved), ``stacks`` (default: the stack directory), the carried variables."""
    env = dict(os.environ) if environ is None else dict(environ)
    home = Path(env.get("HOME") or Path.home())
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    the_uid = os.getuid() if uid is None else uid
    return ServiceSpec(
        python=os.path.abspath(python or sys.executable),
        stacks=Path(os.path.abspath(stacks if stacks is not None else paths.stacks)),
        state=Path(os.path.abspath(paths.state)),
        home=home,
        uid=the_uid,
        user=user or env.get("USER") or env.get("LOGNAME") or _user_name(the_uid),
        config_home=config_home,
        environment=tuple((k, env[k]) for k in CARRIED if env.get(k)),
    )


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def render(platform: Platform, spec: ServiceSpec) -> File:
    return platform.render(spec)


def _run(runner: Runner, commands: Sequence[Sequence[str]], done: list[str]) -> None:
    for argv in commands:
        answer = runner.run(argv)
        if not answer.ok:
            raise MlxctlError(f"`{' '.join(argv)}` failed: {answer.why()}")
        done.append(f"ran: {' '.join(argv)}")


def _loaded(platform: Platform, spec: ServiceSpec, runner: Runner) -> Loaded:
    return platform.parse(spec, [runner.run(q) for q in platform.query(spec)])


def install(platform: Platform, spec: ServiceSpec, runner: Runner) -> list[str]:
    """Write the file if it differs, then load (or reload) it; lines saying what was done."""
    file = platform.render(spec)
    before = _loaded(platform, spec, runner)
    if platform.name == "launchd":
        private_dir(spec.state / "logs")  # launchd opens the log; it creates no directory
    stacks_note = [] if spec.stacks.exists() else [f"note: {spec.stacks} does not exist yet"]
    changed = writer.write(file)
    done = [f"wrote {file.path}" if changed else f"{file.path}: already installed, unchanged"]
    try:
        if changed and before.loaded:
            _run(runner, platform.reload(spec, file), done)
        elif not before.loaded:
            _run(runner, platform.load(spec, file), done)
        else:
            done.append(f"{platform.name}: already loaded (nothing rewritten, nothing restarted)")
    except MlxctlError as exc:
        hint = ""
        if platform.name == "systemd" and "bus" in str(exc):
            hint = "; no user manager answers: log in to a session, or `loginctl enable-linger`"
        raise MlxctlError(
            f"{exc} ({file.path} is written but not loaded; "
            f"`mlxctl service uninstall` removes it{hint})"
        ) from None
    return done + stacks_note + list(_loaded(platform, spec, runner).notes)


def uninstall(platform: Platform, spec: ServiceSpec, runner: Runner) -> list[str]:
    """Stop the service and remove its file (the model servers keep running)."""
    file = platform.render(spec)
    before = _loaded(platform, spec, runner)
    done: list[str] = []
    if before.loaded:
        _run(runner, platform.unload(spec, file), done)
    removed = writer.remove(file)
    done.append(f"removed {file.path}" if removed else f"{file.path}: not installed")
    for argv in platform.forget(spec):
        runner.run(argv)  # best effort: nothing is left to forget when it fails
    if before.loaded:
        done.append("the model servers keep running: `mlxctl down` stops them")
    return done


@dataclass(frozen=True)
class ServiceStatus:
    platform: str
    file: Path
    installed: bool  # the file is there
    current: bool  # ... and is what `install` would write now
    manager: Loaded
    controller_pid: int | None  # the controller answering on the admin socket
    lock: dict[str, Any] | None  # the state lock's holder line
    lock_alive: bool
    log: str
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.installed and self.manager.loaded and self.manager.running

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "file": str(self.file),
            "installed": self.installed,
            "current": self.current,
            "loaded": self.manager.loaded,
            "running": self.manager.running,
            "service_pid": self.manager.pid,
            "detail": self.manager.detail,
            "controller_pid": self.controller_pid,
            "lock_pid": self.lock.get("pid") if self.lock else None,
            "lock_stale": bool(self.lock) and not self.lock_alive,
            "log": self.log,
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        yes = {True: "yes", False: "no"}
        installed = yes[self.installed]
        if self.installed and not self.current:
            installed += " (differs from what `mlxctl service install` writes now: run it)"
        running = yes[self.manager.running]
        if self.manager.pid:
            running += f" (pid {self.manager.pid})"
        if self.controller_pid is not None:
            controller = f"pid {self.controller_pid}, answering on the admin socket"
            if self.manager.pid and self.manager.pid != self.controller_pid:
                controller += " (not the service's: started by hand?)"
        else:
            controller = "none answers on the admin socket"
        if self.lock:
            holder = f"pid {self.lock['pid']} ({self.lock.get('command', '?')})"
            lock = holder if self.lock_alive else f"stale: names {holder}, which is gone"
        else:
            lock = "free"
        rows = [
            ("platform", self.platform),
            ("file", f"{self.file}"),
            ("installed", installed),
            ("loaded", yes[self.manager.loaded]),
            ("running", running),
            ("manager says", self.manager.detail or "-"),
            ("controller", controller),
            ("state lock", lock),
            ("log", self.log),
        ]
        width = max(len(k) for k, _ in rows)
        return [f"{k.ljust(width)}  {v}" for k, v in rows] + self.notes


def status(
    platform: Platform,
    spec: ServiceSpec,
    runner: Runner,
    paths: Paths,
    controller_pid: int | None,
) -> ServiceStatus:
    """Installed, loaded, running, with the controller's PID (the admin socket's answer,
    passed in by the caller) and the state lock's holder."""
    file = platform.render(spec)
    on_disk = writer.current(file)
    manager = _loaded(platform, spec, runner)
    holder = recorded_holder(paths.lock)
    log = (
        str(spec.state / "logs" / LAUNCHD_LOG)
        if platform.name == "launchd"
        else f"journalctl --user -u {UNIT}"
    )
    return ServiceStatus(
        platform=platform.name,
        file=file.path,
        installed=on_disk is not None,
        current=on_disk == file.content,
        manager=manager,
        controller_pid=controller_pid,
        lock=holder,
        lock_alive=holder is not None and pid_alive(int(holder["pid"])),
        log=log,
        notes=list(manager.notes),
    )


def real_runner() -> Runner:
    from mlxctl.machine.services.runner import SubprocessRunner

    return SubprocessRunner()
