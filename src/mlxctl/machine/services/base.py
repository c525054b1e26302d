"""What every service platform renders and answers: values, no effects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# What the service is called: the launchd label and the systemd unit's name.
LABEL = "io.mlxctl.controller"
UNIT = "mlxctl.service"
# The controller's own log when launchd runs it (systemd sends it to the journal). Not a
# tier name (a tier's log is ``NAME.log``, NAME without dots), so the two never meet.
LAUNCHD_LOG = "controller.launchd.log"
# Seconds between a controller's exit and its restart (launchd's ThrottleInterval, also
# its minimum run time before a respawn; systemd's RestartSec).
RESTART_DELAY = 10


@dataclass(frozen=True)
class File:
    """A file to write: where, what, and its mode (honcho's ``export`` value)."""

    path: Path
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs and where, for one user: everything a renderer reads."""

    python: str  # the venv's interpreter, unresolved (a resolved symlink loses the venv)
    stacks: Path  # the stack directory (or file) the controller reconciles
    state: Path  # the state directory: the launchd log goes in its logs folder
    home: Path
    uid: int
    user: str
    config_home: Path  # XDG_CONFIG_HOME (systemd's user units live under it)
    environment: tuple[tuple[str, str], ...] = ()  # what the CLI carries over (not PATH)

    @property
    def argv(self) -> list[str]:
        return [self.python, "-m", "mlxctl", "reconcile", str(self.stacks)]


def environment(spec: ServiceSpec, system_path: tuple[str, ...]) -> list[tuple[str, str]]:
    """The service's variables: a PATH that finds the venv's programs first (``mlx_lm``,
    ``vllm-mlx``), then the system's; then what the CLI carried over; unbuffered output
    so the log is current."""
    bin_dir = str(Path(spec.python).parent)
    path = ":".join(dict.fromkeys((bin_dir, *system_path)))
    carried = [(k, v) for k, v in spec.environment if k not in ("PATH", "PYTHONUNBUFFERED")]
    return [("PATH", path), *carried, ("PYTHONUNBUFFERED", "1")]


@dataclass(frozen=True)
class Completed:
    """How a command ended: what a :class:`Runner` returns."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def why(self) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        return text[-1] if text else f"exit {self.returncode}"


class Runner(Protocol):
    """Runs ``launchctl`` / ``systemctl`` / ``loginctl`` (tests record the commands)."""

    def run(self, argv: Sequence[str]) -> Completed: ...


@dataclass(frozen=True)
class Loaded:
    """What the service manager says about the service."""

    loaded: bool  # known to the manager (launchd: bootstrapped; systemd: enabled or active)
    running: bool
    pid: int | None = None
    detail: str = ""  # the manager's own words (its state, the last exit)
    notes: tuple[str, ...] = ()  # what else the user should know (e.g. linger)


class Platform(Protocol):
    """One service manager: pure functions from a spec to a file and to commands.

    The use case (``mlxctl.app.service``) writes the file through the writer and runs
    the commands through a :class:`Runner`; nothing here has an effect.
    """

    name: str

    def render(self, spec: ServiceSpec) -> File:
        """The service file."""
        ...

    def load(self, spec: ServiceSpec, file: File) -> list[list[str]]:
        """After the file is written: start it now and at every login."""
        ...

    def reload(self, spec: ServiceSpec, file: File) -> list[list[str]]:
        """After the file changed while loaded: run the new one."""
        ...

    def unload(self, spec: ServiceSpec, file: File) -> list[list[str]]:
        """Before the file is removed: stop it and make the manager forget it."""
        ...

    def forget(self, spec: ServiceSpec) -> list[list[str]]:
        """After the file is removed (systemd: ``daemon-reload``)."""
        ...

    def query(self, spec: ServiceSpec) -> list[list[str]]:
        """Commands whose answers :meth:`parse` reads (read-only)."""
        ...

    def parse(self, spec: ServiceSpec, answers: Sequence[Completed]) -> Loaded:
        """What the answers to :meth:`query` say."""
        ...
