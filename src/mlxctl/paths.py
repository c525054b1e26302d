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

# The longest Unix socket path every platform binds: macOS's ``sun_path`` is 104 bytes
# with its NUL (Linux's 108). One limit everywhere, so a long ``MLXCTL_HOME`` takes the
# same fallback on Linux as on a Mac (and the tests here exercise it).
SOCKET_PATH_MAX = 103
# Where the admin socket goes when ``STATE/admin.sock`` is too long: a per-user 0700
# directory, the socket named from a hash of the state directory (client and server
# compute the same name; two state directories never share one).
SHORT_SOCKET_ROOT = Path("/tmp")


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

    @property
    def admin_socket(self) -> Path:
        """The controller's admin socket: see :func:`admin_socket_path`."""
        return admin_socket_path(self)

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


def admin_socket_path(paths: Paths) -> Path:
    """Where the controller serves its admin API (and where clients and the gateway find it).

    ``STATE/admin.sock`` when that path fits a socket address (:data:`SOCKET_PATH_MAX`
    bytes); otherwise ``/tmp/mlxctl-UID/HASH.sock``, HASH naming the absolute state
    directory. Pure: nothing is created or checked here (``mlxctl.admin.sockdir`` checks
    the short directory's owner and mode before anything binds or connects there).
    """
    state = Path(os.path.abspath(paths.state))
    preferred = state / "admin.sock"
    if len(os.fsencode(preferred)) <= SOCKET_PATH_MAX:
        return preferred
    import hashlib  # only here: every command imports this module, few need the fallback

    digest = hashlib.sha256(os.fsencode(state)).hexdigest()[:20]
    return SHORT_SOCKET_ROOT / f"mlxctl-{os.getuid()}" / f"{digest}.sock"


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
