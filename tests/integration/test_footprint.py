"""What keeps mlxctl's own processes small, checked on real processes (the figures are
``benchmarks/footprint.py``'s; a test asserts the design, never a size or a time).

- The gateway imports LiteLLM only for routes that need its Router (fallbacks): a real
  gateway process (``python -m mlxctl.gateway`` run through a hook that reports, when it
  exits, which modules it imported) serves a tier and retries a dead one without ever
  importing it; with a fallback declared, it has imported it before the first failover.
- No process runs beside a server to carry its log: ``test_procs.py`` and
  ``test_reconcile_once.py`` check the process groups.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.conftest import free_ports, wait_for

pytestmark = pytest.mark.integration

KEY = "sk-footprint-test"
MSG = [{"role": "user", "content": "hi"}]
# ``python -m mlxctl.gateway ARGS`` as it runs under mlxctl, with a thread that writes the
# LiteLLM modules it has imported to the file $MODULES_FILE every 50 ms.
HOOKED_GATEWAY = """
import json, os, runpy, sys, threading, time
def report():
    while True:
        found = sorted(m for m in list(sys.modules) if m.split(".")[0] == "litellm")
        with open(os.environ["MODULES_FILE"] + ".tmp", "w") as f:
            json.dump({"at": time.monotonic(), "litellm": found}, f)
        os.replace(os.environ["MODULES_FILE"] + ".tmp", os.environ["MODULES_FILE"])
        time.sleep(0.05)
threading.Thread(target=report, daemon=True).start()
sys.argv = ["mlxctl.gateway", *sys.argv[1:]]
runpy.run_module("mlxctl.gateway", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def tier(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real mlx_lm.server (no key) on a free port."""
    [port] = free_ports(1)
    log = tmp_path_factory.mktemp("tier") / "tier.log"
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(tiny_model)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: ask(f"http://127.0.0.1:{port}", "default_model", {}), 120, "the tier")
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def ask(url: str, model: str, headers: dict[str, str]) -> httpx.Response | None:
    body = {"model": model, "messages": MSG, "max_tokens": 1}
    try:
        return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
    except httpx.HTTPError:
        return None


def gateway_modules(
    work: Path, config: dict[str, Any], asks: list[str]
) -> tuple[list[str], list[int]]:
    """Start the hooked gateway on ``config``, ask each model of ``asks`` once; the LiteLLM
    modules it had imported then, and the statuses it answered."""
    [port] = free_ports(1)
    routes = work / "routes.json"
    routes.write_text(json.dumps(config))
    modules = work / "modules.json"
    env = {**os.environ, "LITELLM_MASTER_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env["MODULES_FILE"] = str(modules)
    argv = [sys.executable, "-c", HOOKED_GATEWAY, "--config", str(routes), "--port", str(port)]
    log = work / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: b"litellm.Router " in log.read_bytes(), 120, "the gateway's start")
        statuses = []
        for model in asks:
            answer = ask(url, model, {"Authorization": f"Bearer {KEY}"})
            assert answer is not None, log.read_text()
            statuses.append(answer.status_code)
        asked = time.monotonic()
        report = wait_for(lambda: _report_after(modules, asked), 10, "a report of its modules")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return list(report["litellm"]), statuses


def _report_after(path: Path, moment: float) -> dict[str, Any] | None:
    try:
        report = dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None
    return report if report["at"] > moment else None


def dead_port() -> int:
    [port] = free_ports(1)
    return port


def test_the_gateway_never_imports_litellm_for_routes_without_fallbacks(
    tier: int, tmp_path: Path
) -> None:
    routes = [
        {"name": "fast", "port": tier, "served_model": "default_model", "runtime": "mlx-lm"},
        {"name": "dead", "port": dead_port(), "served_model": "default_model"},
    ]
    # hold 0: the dead tier's refused connection is not waited out; it is asked again by
    # the fast path (retries: 1), then answered 502.
    started = time.monotonic()
    modules, statuses = gateway_modules(tmp_path, {"routes": routes, "hold": 0}, ["fast", "dead"])
    assert statuses == [200, 502]
    assert modules == []
    assert "not needed" in (tmp_path / "gateway.log").read_text()
    assert time.monotonic() - started < 60


@pytest.mark.slow  # LiteLLM's import and warm-up: ~7 s on this 2-core machine
def test_with_a_fallback_the_gateway_has_litellm_before_the_first_failover(
    tier: int, tmp_path: Path
) -> None:
    routes = [
        {"name": "fast", "port": tier, "served_model": "default_model", "runtime": "mlx-lm"},
        {"name": "dead", "port": dead_port(), "served_model": "default_model"},
    ]
    config = {"routes": routes, "fallbacks": {"dead": ["fast"]}}
    modules, statuses = gateway_modules(tmp_path, config, ["dead"])
    assert statuses == [200]  # the failover, answered by 'fast'
    assert "litellm" in modules and "litellm.router" in modules
    log = (tmp_path / "gateway.log").read_text()
    # Loaded at start, in the background: ready before the first request was sent.
    assert log.index("litellm.Router ready") < log.index("did not answer")
