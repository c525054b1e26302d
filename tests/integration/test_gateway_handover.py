"""A gateway restart through mlxctl, with real processes: the new gateway starts on the
same port beside the old one, which serves until the new one answers and is then
stopped. A client sending requests back to back through the OpenAI SDK sees no error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from tests.integration.conftest import Mlxctl, free_ports, stack_yaml, wait_for

pytestmark = pytest.mark.integration
MSG: Any = [{"role": "user", "content": "Hello"}]


class Client(threading.Thread):
    """1-token completions back to back, as a user's client sends them (SDK defaults)."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=30)
        self.failures: list[str] = []
        self.count = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.sdk.chat.completions.create(model="fast", messages=MSG, max_tokens=1)
            except openai.OpenAIError as exc:
                self.failures.append(repr(exc))
            self.count += 1


def test_a_gateway_restart_starts_the_new_one_first_and_no_request_fails(
    mlxctl: Mlxctl, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw_port, fast_port = free_ports(2)
    # A remote fallback's key is part of the gateway's launch: a new value restarts it
    # (same port, same URL, same key for clients).
    remote = {
        "name": "backup",
        "model": "openai/gpt-4o-mini",
        "apiBase": "http://127.0.0.1:9/v1",
        "apiKey": "${env:IT_REMOTE_KEY}",
    }
    tier = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(tiny_model)},
            "port": fast_port, "fallbacks": ["backup"]}  # fmt: skip
    mlxctl.write("stack.yaml", stack_yaml([tier], gateway={"port": gw_port, "remotes": [remote]}))
    stacks = str(mlxctl.stacks)
    monkeypatch.setenv("IT_REMOTE_KEY", "first-value")
    first = mlxctl.run("reconcile", "--once", stacks)
    assert first.returncode == 0, first.stderr
    key = mlxctl.run("gateway", "key", stacks).stdout.strip()
    old_pid = mlxctl.status()["gateway"]["pid"]

    monkeypatch.setenv("IT_REMOTE_KEY", "second-value")
    planned = mlxctl.run("diff", stacks).stdout
    assert "the old one serves until the new one is ready" in planned, planned
    client = Client(f"http://127.0.0.1:{gw_port}", key)
    client.start()
    try:
        restarted = mlxctl.run("reconcile", "--once", stacks)
        assert restarted.returncode == 0, restarted.stderr
        before = client.count
        # A few more requests, all to the new gateway now.
        deadline_count = before + 20
        while client.count < deadline_count and client.is_alive():
            client.done.wait(0.05)
    finally:
        client.done.set()
        client.join(60)
    assert client.failures == [], client.failures[:5]
    assert client.count > 40

    status = mlxctl.status()
    new_pid = status["gateway"]["pid"]
    assert new_pid != old_pid and status["gateway"]["health"] == "ready"
    assert status["retiring"] == []
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == "zombie"
    assert set(mlxctl.inventory()) == {"fast", "gateway"}

    events = [json.loads(line) for line in (mlxctl.home / "state" / "events.jsonl").open()]
    handover = [
        (e["kind"], e["target"])
        for e in events
        if e["target"] in ("gateway", f"gateway~{old_pid}")
        and e["kind"] in ("restart", "ready", "stop", "forget")
    ]
    # The new one started and answered before the old one was asked to stop.
    assert handover[-4:] == [
        ("restart", "gateway"),
        ("ready", "gateway"),
        ("stop", f"gateway~{old_pid}"),
        ("forget", f"gateway~{old_pid}"),
    ], handover
    stop = next(e for e in events if e["kind"] == "stop" and e["target"] == f"gateway~{old_pid}")
    assert stop["cause"] == f"replaced: the new gateway (pid {new_pid}) serves"


def _gateway(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LITELLM_MASTER_KEY": "sk-drain", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    argv = [sys.executable, "-m", "mlxctl.gateway", "--config", str(config), "--port", str(port)]
    with log.open("ab") as handle:
        return subprocess.Popen(
            argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sigterm_moves_keep_alive_clients_to_the_new_gateway_without_an_error(
    tmp_path: Path,
) -> None:
    """The old gateway drains: its listener closes, the next request on an open
    keep-alive connection is answered with ``Connection: close`` (by the old one), and
    the client's following request reaches the new one on a new connection."""
    (port,) = free_ports(1)
    config = tmp_path / "routes.json"
    config.write_text('{"routes": []}')
    log = tmp_path / "gateway.log"
    old = _gateway(config, port, log)
    new: subprocess.Popen[bytes] | None = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            def answer() -> tuple[int, str]:
                r = client.get("/health/liveliness")
                return int(r.json()["pid"]), r.headers.get("connection", "")

            wait_for(lambda: _answers(client), 120, "the old gateway")
            assert answer()[0] == old.pid
            new = _gateway(config, port, log)
            wait_for(lambda: log.read_text().count("serving") >= 2, 120, "the new gateway")
            os.killpg(old.pid, signal.SIGTERM)
            time.sleep(0.3)  # the drain has begun: the old listener is closed
            assert answer() == (old.pid, "close")  # the open connection, closed after
            assert answer()[0] == new.pid  # a new connection: only the new one listens
            old.wait(10)  # the drain ends as soon as no connection is left
            for _ in range(5):
                assert answer()[0] == new.pid
    finally:
        for proc in (old, new):
            if proc is not None:
                _stop(proc)


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/health/liveliness").status_code == 200
    except httpx.HTTPError:
        return False
