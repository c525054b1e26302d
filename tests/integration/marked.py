"""Finding the processes a test's state directory owns, by what they carry in their
environment (the state directory marker every child of mlxctl carries, and the
instance marker), whatever the inventory says: the check that nothing was left
unowned."""

from __future__ import annotations

import os

import psutil
from tests.integration.conftest import Mlxctl


def ours(ctl: Mlxctl) -> list[psutil.Process]:
    """Live processes started for this test's state directory (servers, their workers)."""
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            state = env.get("MLXCTL_STATE")
            mine = state == str(ctl.home / "state") and "MLXCTL_INSTANCE" in env
            if mine and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def server_leaders(ctl: Mlxctl) -> set[int]:
    """The process-group leaders among :func:`ours`: one per running server."""
    leaders = set()
    for proc in ours(ctl):
        try:
            if proc.pid == os.getpgid(proc.pid):
                leaders.add(proc.pid)
        except ProcessLookupError:
            continue
    return leaders
