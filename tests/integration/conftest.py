"""Real-process fixtures: a tiny model built by the tests, the mlxctl CLI as a subprocess,
and a cleanup that stops, by PID, every process the test (or mlxctl for it) started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from tests.integration.lan import Lan, LanUnavailable, stop_gracefully

MLXCTL = [sys.executable, "-m", "mlxctl"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlxctl.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


@dataclass
class Mlxctl:
    """Runs the real CLI against its own MLXCTL_HOME and cleans up after itself."""

    home: Path
    stacks: Path
    background: list[subprocess.Popen[str]] = field(default_factory=list)
    # What runs the CLI elsewhere (``ip netns exec NS``: on another host of a LAN) and
    # the environment it adds there (``MLXCTL_HOST``).
    prefix: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MLXCTL_HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *MLXCTL, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str, log: Path) -> subprocess.Popen[str]:
        handle = open(log, "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [*self.prefix, *MLXCTL, *args],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.background.append(proc)
        return proc

    def status(self) -> dict[str, Any]:
        result = self.run("status", str(self.stacks), "-o", "json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def tier(self, name: str) -> dict[str, Any]:
        return next(t for t in self.status()["tiers"] if t["name"] == name)

    def inventory(self) -> dict[str, Any]:
        path = self.home / "state" / "inventory.json"
        return dict(json.loads(path.read_text())["services"]) if path.exists() else {}

    def write(self, name: str, text: str) -> Path:
        path = self.stacks / name
        path.write_text(text)
        return path

    def cleanup(self) -> None:
        for proc in self.background:
            stop_gracefully(proc)
        self.run("down", timeout=120)
        for record in self.inventory().values():
            kill_group_if_ours(record)


def tier_key_headers(ctl: Mlxctl, tier: str) -> dict[str, str]:
    """What only mlxctl's gateway and probes send a tier: its own key (every model server
    starts through mlxctl's tier guard, which refuses requests without it)."""
    from mlxctl.desired.tier_route import tier_key_path

    key = tier_key_path(ctl.home / "state", tier).read_text().strip()
    return {"Authorization": f"Bearer {key}"}


def kill_group_if_ours(record: dict[str, Any]) -> None:
    """SIGKILL a recorded process group, only if its leader is still the recorded process."""
    if int(record.get("pid") or 0) <= 0 or int(record.get("pgid") or 0) <= 0:
        return  # an intent record: no process confirmed (never killpg(0): that is us)
    try:
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - record["create_time"]) < 0.05:
            os.killpg(record["pgid"], signal.SIGKILL)
    except (psutil.Error, ProcessLookupError):
        pass


@pytest.fixture
def mlxctl(tmp_path: Path) -> Iterator[Mlxctl]:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    ctl = Mlxctl(home=tmp_path / "home", stacks=stacks)
    try:
        yield ctl
    finally:
        ctl.cleanup()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy (real processes take real time)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def ready_pid(ctl: Mlxctl, other_than: int | None = None, name: str = "fast") -> int | None:
    """The PID of the tier's live, ready process (not ``other_than``), from the inventory."""
    record = ctl.inventory().get(name)
    if not record or record.get("ready_at") is None or record["pid"] == other_than:
        return None
    return int(record["pid"]) if pid_alive(record["pid"]) else None


def events(ctl: Mlxctl) -> list[dict[str, Any]]:
    """The controller's event log, oldest first."""
    path = ctl.home / "state" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stack_yaml(tiers: list[dict[str, Any]], *, gateway: dict[str, Any] | None = None) -> str:
    """A stack file (JSON is valid YAML)."""
    spec: dict[str, Any] = {"gateway": gateway or {"enabled": False}, "tiers": tiers}
    doc = {"apiVersion": "mlxctl/v1", "kind": "Stack", "metadata": {"name": "it"}, "spec": spec}
    return json.dumps(doc, indent=2) + "\n"


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A running hub, and this process's environment pointing at it (CLI children inherit it)."""
    from mlxctl.testing.hub import LocalHub

    with LocalHub() as the_hub:
        monkeypatch.setenv("HF_ENDPOINT", the_hub.endpoint)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield the_hub


@pytest.fixture
def make_lan(tmp_path: Path) -> Iterator[Callable[..., Lan]]:
    """``make_lan("a", "b")``: hosts ``a`` and ``b`` as network namespaces on one bridge
    (tests/integration/lan.py), removed after the test, whatever happened; the test is
    skipped, saying why, where namespaces cannot be made."""
    lans: list[Lan] = []

    def make(*names: str) -> Lan:
        lan = Lan(names, tmp_path / f"lan{len(lans)}")
        lans.append(lan)
        try:
            return lan.up()
        except LanUnavailable as exc:
            pytest.skip(f"network namespaces cannot be made here: {exc}")

    try:
        yield make
    finally:
        for lan in lans:
            lan.down()


def mlxctl_on(lan: Lan, host: str, stacks: Path) -> Mlxctl:
    """The CLI on ``host`` of ``lan``: its own MLXCTL_HOME and MLXCTL_HOST, the same stack
    files; cleaned up (``down`` in its namespace, then by PID) before the LAN goes."""
    the_host = lan[host]
    ctl = Mlxctl(
        home=the_host.home,
        stacks=stacks,
        prefix=the_host.argv(),
        extra_env={"MLXCTL_HOST": the_host.name},
    )
    lan.before_down.append(ctl.cleanup)
    return ctl
