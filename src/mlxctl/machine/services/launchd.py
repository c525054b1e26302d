"""macOS: a LaunchAgent in ``~/Library/LaunchAgents``, loaded into the user's GUI domain.

Rendered the way Homebrew renders its services (``Library/Homebrew/service.rb``
``to_plist``), plus ``ProcessType`` = ``Interactive``: without it launchd applies
"light resource limits", throttling CPU and I/O (launchd.plist(5)), which a controller
that must notice a dead server within seconds cannot afford. Loaded with ``launchctl
enable`` then ``bootstrap gui/UID``, removed with ``bootout`` (Homebrew's
``services_cli.rb``).

A controller restarted by launchd (``KeepAlive``) adopts the servers it finds in the
inventory: they run in process groups of their own, and ``AbandonProcessGroup`` says
so explicitly, so launchd's kill of a dead job's process group never reaches them.
Pure: nothing here reads or writes a file or runs a command.
"""

from __future__ import annotations

import plistlib
import re
from collections.abc import Sequence
from pathlib import Path

from mlxctl.machine.services.base import (
    LABEL,
    LAUNCHD_LOG,
    RESTART_DELAY,
    Completed,
    File,
    Loaded,
    ServiceSpec,
    environment,
)

# Homebrew's prefixes first (Apple silicon, Intel), then the system's (``sysctl`` is in
# /usr/sbin), after the venv's own bin.
SYSTEM_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
# Homebrew loads its agents in every session type, so that a service also starts in an
# ssh-only session of a headless Mac.
SESSION_TYPES = ["Aqua", "Background", "LoginWindow", "StandardIO", "System"]


def plist_path(spec: ServiceSpec) -> Path:
    return spec.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def log_path(spec: ServiceSpec) -> Path:
    return spec.state / "logs" / LAUNCHD_LOG


def _target(spec: ServiceSpec) -> str:
    return f"gui/{spec.uid}/{LABEL}"


class Launchd:
    name = "launchd"

    def render(self, spec: ServiceSpec) -> File:
        log = str(log_path(spec))
        document = {
            "Label": LABEL,
            "ProgramArguments": spec.argv,
            "EnvironmentVariables": dict(environment(spec, SYSTEM_PATH)),
            "WorkingDirectory": str(spec.home),
            "RunAtLoad": True,
            "KeepAlive": True,
            "ProcessType": "Interactive",
            "ThrottleInterval": RESTART_DELAY,
            "AbandonProcessGroup": True,
            "LimitLoadToSessionType": SESSION_TYPES,
            "StandardOutPath": log,
            "StandardErrorPath": log,
        }
        content = plistlib.dumps(document, fmt=plistlib.FMT_XML, sort_keys=False).decode()
        return File(plist_path(spec), content, 0o644)

    def load(self, spec: ServiceSpec, file: File) -> list[list[str]]:
        return [
            ["launchctl", "enable", _target(spec)],
            ["launchctl", "bootstrap", f"gui/{spec.uid}", str(file.path)],
        ]

    def reload(self, spec: ServiceSpec, file: File) -> list[list[str]]:
        # launchd reads a plist only when it is bootstrapped: out, then in again.
        return [*self.unload(spec, file), *self.load(spec, file)]

    def unload(self, spec: ServiceSpec, file: File) -> list[list[str]]:
        return [["launchctl", "bootout", _target(spec)]]

    def forget(self, spec: ServiceSpec) -> list[list[str]]:
        return []

    def query(self, spec: ServiceSpec) -> list[list[str]]:
        return [["launchctl", "print", _target(spec)]]

    def parse(self, spec: ServiceSpec, answers: Sequence[Completed]) -> Loaded:
        answer = answers[0]
        if not answer.ok:
            return Loaded(loaded=False, running=False)
        # ``launchctl print`` is for humans, but its ``key = value`` lines are stable.
        fields = dict(re.findall(r"^\t(\w[\w ]*?) = (.*)$", answer.stdout, re.MULTILINE))
        pid = int(fields["pid"]) if fields.get("pid", "").isdigit() else None
        state = fields.get("state", "")
        detail = f"state = {state}" if state else ""
        if "last exit code" in fields:
            detail += f"; last exit code = {fields['last exit code']}"
        return Loaded(loaded=True, running=state == "running", pid=pid, detail=detail)


PLATFORM = Launchd()
