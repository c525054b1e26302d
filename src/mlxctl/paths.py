"""Where mlxctl keeps its files.

Config (stack files) and state (inventory, logs, events, locks, generated gateway
config, converted models) follow the XDG layout. ``MLXCTL_HOME`` relocates both into
one directory, which is how tests and several side-by-side installs isolate themselves.
Models pulled from the hub stay in the Hugging Face cache, shared with mlx-lm and
vllm-mlx, so nothing is downloaded twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlxctl.files import make_private, private_dir


@dataclass(frozen=True)
class Paths:
    """The directories of one mlxctl installation."""

    config: Path
    state: Path

    @property
    def stacks(self) -> Path:
        """Default directory of stack files."""
        return self.config / "stacks"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def models(self) -> Path:
        """Models mlxctl converts itself (the offline demo model)."""
        return self.state / "models"

    @property
    def inventory(self) -> Path:
        return self.state / "inventory.json"

    @property
    def events(self) -> Path:
        return self.state / "events.jsonl"

    @property
    def lock(self) -> Path:
        return self.state / "reconcile.lock"

    @property
    def gateway(self) -> Path:
        return self.state / "gateway"

    @property
    def jobs(self) -> Path:
        """Progress of model prepares in flight (see mlxctl.observe.jobfiles)."""
        return self.state / "jobs"

    @property
    def last_good(self) -> Path:
        """The last valid version of each stack file (see mlxctl.spec.last_good)."""
        return self.state / "last-good"

    @property
    def ports(self) -> Path:
        return self.state / "ports.json"

    def secure_state(self) -> None:
        """Create the state directory 0700 and repair what is in it to 0700 / 0600.

        Run at every start (:func:`mlxctl.reconcile.context.real_context`): files
        written by an older mlxctl, or by hand, were 0644 in a 0755 directory, and
        they hold command lines, errors, events and the gateway's configuration.
        New files are created private by :mod:`mlxctl.files` in the first place.
        """
        private_dir(self.state)
        for directory in (self.state, self.logs, self.gateway, self.models):
            try:
                entries = list(directory.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                continue
            make_private(directory, directory=True)
            if directory == self.models:
                continue  # model files are the servers' to read; the directory guards them
            for entry in entries:
                if entry.is_file() and not entry.is_symlink():
                    make_private(entry)
                elif entry.is_dir() and not entry.is_symlink() and directory == self.state:
                    make_private(entry, directory=True)


def default_paths(environ: dict[str, str] | None = None) -> Paths:
    """Resolve the directories from the environment (``MLXCTL_HOME``, then XDG)."""
    env = dict(os.environ) if environ is None else environ
    home = env.get("MLXCTL_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(config=root / "config", state=root / "state")
    user = Path(env.get("HOME", str(Path.home())))
    config = Path(env.get("XDG_CONFIG_HOME") or user / ".config") / "mlxctl"
    state = Path(env.get("XDG_STATE_HOME") or user / ".local" / "state") / "mlxctl"
    return Paths(config=config, state=state)
