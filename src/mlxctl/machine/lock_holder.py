"""Who the state lock names: read without taking it (``status`` and ``doctor`` ask).

The lock itself is :class:`mlxctl.reconcile.state_lock.StateLock` (an ``flock`` the
kernel releases when its holder dies); its file holds one JSON line naming the holder,
emptied on a clean release. A holder that was killed leaves its line behind: whether
that PID still lives says whether the line is current or stale (a stale line is
harmless, the next holder overwrites it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlxctl.files import read_text_bounded


def recorded_holder(path: Path) -> dict[str, Any] | None:
    """The holder the lock file names (``pid``, ``command``, ``since``), or None."""
    try:
        raw = read_text_bounded(path, 4096)
    except (OSError, UnicodeDecodeError):
        return None
    try:
        info: Any = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or info["pid"] <= 0:
        return None
    return info


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True
