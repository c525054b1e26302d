"""The ``down`` marker: a controller told to stop everything stays stopped across restarts.

``mlxctl down`` with a controller running stops every server and leaves the
controller up but suspended: its desired state is "nothing" (converged like ``down``
without a controller), so it starts and heals nothing. The marker is a file in the
state directory, so a controller restarted by a service manager (launchd, systemd)
reads it and stays suspended: a restart must not undo a ``down``. ``reconcile --once``
and ``up`` remove it (with or without a controller).

``down`` without a controller leaves no marker (it stops what runs, as it always did):
the next ``mlxctl reconcile`` starts the stack again, which is what a user who stops
everything by hand and later starts the controller expects. A marker already there
(from a controller's ``down``) is kept.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from mlxctl.files import read_text_bounded
from mlxctl.machine.inventory import write_atomic
from mlxctl.paths import Paths

MARKER = "suspended.json"


@dataclass(frozen=True)
class Suspended:
    """Why and since when the controller is suspended."""

    since: float
    by: str = "mlxctl down"


def marker_path(paths: Paths) -> Path:
    return paths.state / MARKER


def read(paths: Paths) -> Suspended | None:
    """The marker, or None. A damaged marker still suspends (the user asked ``down``;
    starting servers on a guess is the worse mistake): ``reconcile --once`` clears it."""
    try:
        raw = json.loads(read_text_bounded(marker_path(paths), 4096))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return Suspended(since=0.0, by="a damaged marker")
    if not isinstance(raw, dict):
        return Suspended(since=0.0, by="a damaged marker")
    since = raw.get("since")
    by = raw.get("by")
    return Suspended(
        since=float(since) if isinstance(since, int | float) else 0.0,
        by=by if isinstance(by, str) and by else "mlxctl down",
    )


def write(paths: Paths, marker: Suspended) -> None:
    """Persist the marker (atomically, 0600); a full disk raises StorageError."""
    write_atomic(marker_path(paths), json.dumps({"since": marker.since, "by": marker.by}) + "\n")


def clear(paths: Paths) -> bool:
    """Remove the marker; True when there was one."""
    with contextlib.suppress(FileNotFoundError):
        marker_path(paths).unlink()
        return True
    return False
