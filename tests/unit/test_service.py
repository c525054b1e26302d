"""``mlxctl service``: the rendered files (plistlib, ``systemd-analyze verify``) and the
install / uninstall / status use case against a fake service manager in a temp HOME."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from mlxctl.app import service
from mlxctl.errors import MlxctlError
from mlxctl.machine.services import launchd, systemd
from mlxctl.machine.services.base import Completed, ServiceSpec
from mlxctl.machine.services.registry import platform_for
from mlxctl.paths import Paths

LAUNCHCTL_PRINT = """gui/501/io.mlxctl.controller = {
\tactive count = 1
\tpath = /Users/me/Library/LaunchAgents/io.mlxctl.controller.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/me/venv/bin/python
\tpid = 4242
\tlast exit code = (never exited)
}
"""


class FakeManager:
    """launchctl / systemctl / loginctl as a recorder with a loaded flag and a PID."""

    def __init__(self, *, fail: str | None = None, linger: str = "no") -> None:
        self.commands: list[list[str]] = []
        self.loaded = False
        self.fail = fail
        self.linger = linger

    def run(self, argv: Sequence[str]) -> Completed:
        argv = list(argv)
        self.commands.append(argv)
        words = " ".join(argv)
        if self.fail and self.fail in words:
            return Completed(tuple(argv), 1, "", "Bootstrap failed: 5: Input/output error")
        if argv[:2] == ["launchctl", "print"]:
            if not self.loaded:
                return Completed(tuple(argv), 113, "", "Could not find service")
            return Completed(tuple(argv), 0, LAUNCHCTL_PRINT)
        if argv[:2] == ["launchctl", "bootstrap"]:
            self.loaded = True
        elif argv[:2] == ["launchctl", "bootout"]:
            self.loaded = False
        elif argv[:3] == ["systemctl", "--user", "show"]:
            state = (
                "UnitFileState=enabled\nActiveState=active\nSubState=running\nMainPID=4242\n"
                if self.loaded
                else "UnitFileState=\nActiveState=inactive\nSubState=dead\nMainPID=0\n"
            )
            return Completed(tuple(argv), 0, "LoadState=loaded\n" + state + "Result=success\n")
        elif "enable" in argv and "--now" in argv:
            self.loaded = True
        elif "disable" in argv:
            self.loaded = False
        elif argv[0] == "loginctl":
            return Completed(tuple(argv), 0, f"Linger={self.linger}\n")
        return Completed(tuple(argv), 0)

    def ran(self) -> list[str]:
        """The commands that change something (queries left out)."""
        queries = ("launchctl print", "systemctl --user show", "loginctl")
        return [" ".join(c) for c in self.commands if not " ".join(c).startswith(queries)]


def make_spec(tmp_path: Path, **env: str) -> tuple[ServiceSpec, Paths]:
    paths = Paths(config=tmp_path / "cfg", state=tmp_path / "state")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    spec = service.spec_for(
        paths,
        environ={"HOME": str(home), "USER": "me", **env},
        python=str(tmp_path / "venv" / "bin" / "python"),
        uid=501,
    )
    return spec, paths


# -- rendering -------------------------------------------------------------------------


def test_the_launch_agent_has_what_launchd_needs(tmp_path: Path) -> None:
    spec, _ = make_spec(tmp_path, MLXCTL_HOME="/data/mlx", HF_TOKEN="hf_secret")
    file = launchd.PLATFORM.render(spec)
    assert file.path == tmp_path / "home/Library/LaunchAgents/io.mlxctl.controller.plist"
    assert file.mode == 0o644
    plist = plistlib.loads(file.content.encode())
    assert plist["Label"] == "io.mlxctl.controller"
    venv_python = str(tmp_path / "venv/bin/python")
    assert plist["ProgramArguments"] == [
        venv_python, "-m", "mlxctl", "reconcile", str(tmp_path / "cfg/stacks"),
    ]  # fmt: skip
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] is True
    assert plist["ProcessType"] == "Interactive"
    assert 5 <= plist["ThrottleInterval"] <= 30
    assert plist["AbandonProcessGroup"] is True  # a dead controller's group kill spares nothing
    log = str(tmp_path / "state/logs/controller.launchd.log")
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == log
    env = plist["EnvironmentVariables"]
    assert env["PATH"].split(":")[0] == str(tmp_path / "venv/bin")  # finds mlx_lm, vllm-mlx
    assert "/opt/homebrew/bin" in env["PATH"].split(":")
    assert "/usr/sbin" in env["PATH"].split(":")  # sysctl
    assert env["MLXCTL_HOME"] == "/data/mlx"  # the same state directory as the CLI's
    assert "HF_TOKEN" not in env and "hf_secret" not in file.content  # never a secret
    assert plist["LimitLoadToSessionType"][0] == "Aqua"


def test_the_user_unit_has_what_systemd_needs(tmp_path: Path) -> None:
    spec, _ = make_spec(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    file = systemd.PLATFORM.render(spec)
    assert file.path == tmp_path / "xdg/systemd/user/mlxctl.service"
    lines = file.content.splitlines()
    assert "Restart=on-failure" in lines
    assert "WantedBy=default.target" in lines
    assert "KillMode=process" in lines  # the servers outlive a controller restart
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start.endswith(" -m mlxctl reconcile " + str(tmp_path / "cfg/stacks"))
    assert any(line.startswith(f"Environment=PATH={tmp_path / 'venv/bin'}:") for line in lines)


def test_unit_words_are_quoted_as_systemd_parses_them() -> None:
    assert systemd.quote("/usr/bin/python") == "/usr/bin/python"
    assert systemd.quote("/Users/Jane Doe/stacks") == '"/Users/Jane Doe/stacks"'
    assert systemd.quote("100%") == "100%%"  # not a specifier
    assert systemd.quote("$HOME") == '"$$HOME"'  # not a variable
    assert systemd.quote('a"b\\c') == '"a\\"b\\\\c"'


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_analyze
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """Including awkward paths: a space and a percent sign in the stack directory."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(shutil.which("python3") or "/usr/bin/python3")
    paths = Paths(config=tmp_path / "cfg", state=tmp_path / "state")
    spec = service.spec_for(
        paths,
        tmp_path / "my stacks 100%",
        environ={"HOME": str(tmp_path), "USER": "me", "MLXCTL_HOME": str(tmp_path / "a b")},
        python=str(python),
    )
    unit = tmp_path / "mlxctl.service"
    unit.write_text(systemd.PLATFORM.render(spec).content)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # unknown keys and bad values are warnings only: none


@needs_analyze
def test_systemd_analyze_would_catch_a_bad_unit(tmp_path: Path) -> None:
    unit = tmp_path / "bad.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nRestart=sometimes\n")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        check=False,
    )
    assert "restart specifier" in done.stderr


def test_the_platform_follows_the_os_unless_named() -> None:
    assert platform_for(None, "darwin").name == "launchd"
    assert platform_for(None, "linux").name == "systemd"
    assert platform_for("launchd", "linux").name == "launchd"
    with pytest.raises(MlxctlError, match="win32"):
        platform_for(None, "win32")


# -- install / uninstall / status --------------------------------------------------------


@pytest.mark.parametrize("name", ["launchd", "systemd"])
def test_install_twice_is_harmless_and_uninstall_leaves_no_trace(tmp_path: Path, name: str) -> None:
    spec, _ = make_spec(tmp_path)
    platform = platform_for(name, "linux")
    manager = FakeManager()
    lines = service.install(platform, spec, manager)
    file = platform.render(spec)
    assert file.path.read_text() == file.content
    assert file.path.stat().st_mode & 0o777 == 0o644
    assert lines[0] == f"wrote {file.path}"
    if name == "launchd":
        assert manager.ran() == [
            "launchctl enable gui/501/io.mlxctl.controller",
            f"launchctl bootstrap gui/501 {file.path}",
        ]
        assert (tmp_path / "state/logs").is_dir()  # launchd creates no directory
    else:
        assert manager.ran() == [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now mlxctl.service",
        ]
        assert any("loginctl enable-linger me" in line for line in lines)
    before = file.path.stat().st_mtime_ns, file.path.stat().st_ino

    manager.commands.clear()
    again = service.install(platform, spec, manager)
    assert manager.ran() == []  # nothing loaded again, nothing restarted
    assert (file.path.stat().st_mtime_ns, file.path.stat().st_ino) == before  # not rewritten
    assert "already installed, unchanged" in again[0]
    assert "already loaded" in again[1]

    manager.commands.clear()
    gone = service.uninstall(platform, spec, manager)
    assert not file.path.exists()
    assert list(file.path.parent.iterdir()) == []  # no temporary file, nothing else
    assert manager.loaded is False
    assert gone[-1] == "the model servers keep running: `mlxctl down` stops them"
    if name == "launchd":
        assert manager.ran() == ["launchctl bootout gui/501/io.mlxctl.controller"]
    else:
        assert manager.ran() == [
            "systemctl --user disable --now mlxctl.service",
            "systemctl --user daemon-reload",
            "systemctl --user reset-failed mlxctl.service",
        ]
    manager.commands.clear()
    assert service.uninstall(platform, spec, manager) == [f"{file.path}: not installed"]


@pytest.mark.parametrize("name", ["launchd", "systemd"])
def test_a_changed_file_is_rewritten_and_reloaded(tmp_path: Path, name: str) -> None:
    spec, _ = make_spec(tmp_path)
    platform = platform_for(name, "linux")
    manager = FakeManager()
    service.install(platform, spec, manager)
    manager.commands.clear()
    moved, _ = make_spec(tmp_path, MLXCTL_HOME=str(tmp_path / "elsewhere"))
    lines = service.install(platform, moved, manager)
    assert lines[0].startswith("wrote ")
    if name == "launchd":  # launchd reads a plist at bootstrap only
        assert manager.ran()[0].startswith("launchctl bootout")
        assert manager.ran()[-1].startswith("launchctl bootstrap")
    else:
        assert manager.ran() == [
            "systemctl --user daemon-reload",
            "systemctl --user enable mlxctl.service",
            "systemctl --user restart mlxctl.service",
        ]
    assert "elsewhere" in platform.render(moved).path.read_text()


def test_a_failed_load_says_the_file_stays_and_how_to_remove_it(tmp_path: Path) -> None:
    spec, _ = make_spec(tmp_path)
    manager = FakeManager(fail="bootstrap")
    with pytest.raises(MlxctlError, match=r"Input/output error.*written but not loaded"):
        service.install(launchd.PLATFORM, spec, manager)


@pytest.mark.parametrize("name", ["launchd", "systemd"])
def test_status_says_installed_loaded_running_and_the_pids(tmp_path: Path, name: str) -> None:
    spec, paths = make_spec(tmp_path)
    platform = platform_for(name, "linux")
    manager = FakeManager(linger="yes")
    result = service.status(platform, spec, manager, paths, None)
    assert (result.installed, result.manager.loaded, result.manager.running) == (
        False,
        False,
        False,
    )
    service.install(platform, spec, manager)
    paths.state.mkdir(exist_ok=True)
    paths.lock.write_text(json.dumps({"pid": os.getpid(), "command": "mlxctl reconcile"}))
    result = service.status(platform, spec, manager, paths, 4242)
    record = result.to_json()
    assert record["installed"] and record["current"] and record["loaded"] and record["running"]
    assert record["service_pid"] == 4242 and record["controller_pid"] == 4242
    assert record["lock_pid"] == os.getpid() and record["lock_stale"] is False
    text = "\n".join(result.lines())
    assert "pid 4242, answering on the admin socket" in text
    assert "linger" not in text  # set: nothing to say
    manager.commands.clear()
    service.status(platform, spec, manager, paths, None)
    assert manager.ran() == []  # status changes nothing


def test_status_names_a_stale_lock_and_a_hand_started_controller(tmp_path: Path) -> None:
    spec, paths = make_spec(tmp_path)
    manager = FakeManager()
    service.install(launchd.PLATFORM, spec, manager)
    dead = subprocess.Popen(["true"])
    dead.wait()
    paths.lock.write_text(json.dumps({"pid": dead.pid, "command": "mlxctl reconcile"}))
    manager.commands.clear()
    result = service.status(launchd.PLATFORM, spec, manager, paths, 999)
    text = "\n".join(result.lines())
    assert f"stale: names pid {dead.pid}" in text
    assert "not the service's: started by hand?" in text
    assert manager.ran() == []


def test_a_user_logind_knows_neither_logged_in_nor_lingering_has_linger_off(
    tmp_path: Path,
) -> None:
    """loginctl answers a user with no session and no linger with a failure; that is
    "not set", not "could not ask"."""
    spec, _ = make_spec(tmp_path)
    systemd = platform_for("systemd", "linux")
    show = Completed(("systemctl",), 0, "ActiveState=inactive\n")
    refused = Completed(("loginctl",), 1, "", "User ID 1000 is not logged in or lingering")
    [note] = systemd.parse(spec, [show, refused]).notes
    assert note.startswith("linger (not set)") and "loginctl enable-linger" in note
    down = Completed(("loginctl",), 1, "", "Failed to connect to bus: Host is down")
    [note] = systemd.parse(spec, [show, down]).notes
    assert note.startswith("linger (could not ask logind)")
