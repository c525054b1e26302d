"""Linux: a systemd user unit in ``~/.config/systemd/user``, started with the user manager.

``Restart=on-failure`` (a crash or a kill restarts the controller; a clean stop, such as
``systemctl --user stop``, does not) and ``WantedBy=default.target`` (started with the
user's manager: at login, or at boot once ``loginctl enable-linger`` is set), as
Homebrew renders its services. Installed with ``daemon-reload`` then ``enable --now``,
removed with ``disable --now`` then ``daemon-reload``.

``KillMode=process``: a stop or a restart of the unit signals the controller alone.
The model servers it started live in the unit's cgroup, and with the default
``control-group`` systemd would kill them with every controller restart (and honcho's
``KillMode=process`` templates are criticised for orphaning children). mlxctl chose
the other way on purpose (docs/service.md): a restarted controller adopts the servers
from its inventory, so a crash or an upgrade of the controller never reloads a model,
and ``mlxctl down`` is how servers stop. Pure: nothing here has an effect.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mlxctl.machine.services.base import (
    RESTART_DELAY,
    UNIT,
    Completed,
    File,
    Loaded,
    ServiceSpec,
    environment,
)

SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")
_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def unit_path(spec: ServiceSpec) -> Path:
    return spec.config_home / "systemd" / "user" / UNIT


def quote(word: str) -> str:
    """One word of ``ExecStart=`` or ``Environment=`` as systemd parses it: ``%`` is a
    specifier (doubled), ``$`` a variable (doubled), quotes and backslashes escaped."""
    word = word.replace("%", "%%").replace("$", "$$")
    if _PLAIN.match(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemctl(*args: str) -> list[str]:
    return ["systemctl", "--user", *args]


class Systemd:
    name = "systemd"

    def render(self, spec: ServiceSpec) -> File:
        lines = [
            "# Written by `mlxctl service install`; `mlxctl service uninstall` removes it.",
            "[Unit]",
            f"Description=mlxctl controller for {spec.stacks}",
            "",
            "[Service]",
            "Type=simple",
            "ExecStart=" + " ".join(quote(w) for w in spec.argv),
            f"WorkingDirectory={quote(str(spec.home))}",
            *(f"Environment={quote(f'{k}={v}')}" for k, v in environment(spec, SYSTEM_PATH)),
            "Restart=on-failure",
            f"RestartSec={RESTART_DELAY}",
            "# The model servers outlive a controller restart: the next controller adopts",
            "# them (docs/service.md). `mlxctl down` stops them.",
            "KillMode=process",
            "TimeoutStopSec=30",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
        return File(unit_path(spec), "\n".join(lines), 0o644)

    def load(self, spec: ServiceSpec, file: File) -> list[list[str]]:
        return [_systemctl("daemon-reload"), _systemctl("enable", "--now", UNIT)]

    def reload(self, spec: ServiceSpec, file: File) -> list[list[str]]:
        return [
            _systemctl("daemon-reload"),
            _systemctl("enable", UNIT),
            _systemctl("restart", UNIT),
        ]

    def unload(self, spec: ServiceSpec, file: File) -> list[list[str]]:
        return [_systemctl("disable", "--now", UNIT)]

    def forget(self, spec: ServiceSpec) -> list[list[str]]:
        # reset-failed: a unit that crashed leaves a "failed" entry behind until then.
        return [_systemctl("daemon-reload"), _systemctl("reset-failed", UNIT)]

    def query(self, spec: ServiceSpec) -> list[list[str]]:
        properties = "LoadState,UnitFileState,ActiveState,SubState,MainPID,Result"
        return [
            _systemctl("show", UNIT, f"--property={properties}"),
            linger_query(spec.user),
        ]

    def parse(self, spec: ServiceSpec, answers: Sequence[Completed]) -> Loaded:
        show = answers[0]
        notes = []
        linger = parse_linger(answers[1]) if len(answers) > 1 else None
        if linger is not True:
            known = " (not set)" if linger is False else " (could not ask logind)"
            notes.append(
                f"linger{known}: the controller starts at login and stops at logout; "
                f"to start it at boot: loginctl enable-linger {spec.user}"
            )
        if not show.ok:
            return Loaded(False, False, detail=f"systemctl --user: {show.why()}", notes=(*notes,))
        fields = _fields(show.stdout)
        loaded = fields.get("UnitFileState") in ("enabled", "enabled-runtime") or fields.get(
            "ActiveState"
        ) in ("active", "activating", "reloading", "deactivating")
        pid_text = fields.get("MainPID", "0")
        pid = int(pid_text) if pid_text.isdigit() and int(pid_text) > 0 else None
        detail = ", ".join(
            f"{k} = {fields[k]}" for k in ("UnitFileState", "ActiveState", "SubState", "Result")
            if fields.get(k)
        )  # fmt: skip
        running = fields.get("ActiveState") == "active" and fields.get("SubState") == "running"
        return Loaded(loaded, running, pid, detail, tuple(notes))


# logind's own record of who lingers: one empty file per user, named after them.
LINGER_DIR = Path("/var/lib/systemd/linger")


def linger_query(user: str) -> list[str]:
    return ["loginctl", "show-user", user, "--property=Linger"]


def parse_linger(answer: Completed) -> bool | None:
    """What ``loginctl show-user USER --property=Linger`` says: True (set), False (not
    set: also when logind knows the user neither logged in nor lingering, which it says
    as a failure), None (logind did not answer)."""
    if answer.ok:
        value = _fields(answer.stdout).get("Linger")
        return True if value == "yes" else False if value == "no" else None
    return False if "not logged in or lingering" in answer.stderr else None


def _fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


PLATFORM = Systemd()
