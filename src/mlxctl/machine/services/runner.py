"""Runs the service manager's commands (``launchctl``, ``systemctl``, ``loginctl``)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from mlxctl.machine.services.base import Completed

TIMEOUT = 60.0


class SubprocessRunner:
    def run(self, argv: Sequence[str]) -> Completed:
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            return Completed(tuple(argv), 127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return Completed(tuple(argv), 124, "", f"{argv[0]}: no answer in {TIMEOUT:.0f}s")
        return Completed(tuple(argv), done.returncode, done.stdout, done.stderr)
