"""Tiers for real behind the gateway: reachable only by it (no CORS grant, a key of their
own), a one-slot vllm-mlx tier under 16 clients, and a tier killed mid-stream.

One guarded ``mlx_lm.server`` and one guarded vllm-mlx (its simple engine: ONE
generation at a time) serve the tiny model for the whole module, started as mlxctl
starts them (``python -m mlxctl.runtimes.tier_guard``); a second mlx_lm.server is
started to be killed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.integration.conftest import free_ports, wait_for

pytestmark = pytest.mark.integration

KEY = "sk-gateway-tiers-test"
MSG = [{"role": "user", "content": "Hello world"}]
GUARD = [sys.executable, "-m", "mlxctl.runtimes.tier_guard"]


@dataclass
class Stack:
    url: str
    ports: dict[str, int]
    keys: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]]
    work: Path

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=120)

    def tier(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


def start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("tiers")
    names = ("fast", "agent", "victim", "gateway")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    keys: dict[str, str] = {}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("fast", "agent", "victim"):
            key_file = work / f"{name}.key"
            keys[name] = f"sk-tier-{name}-secret"
            key_file.write_text(keys[name] + "\n")
            key_file.chmod(0o600)
            env = {**os.environ, "MLXCTL_TIER_KEY_FILE": str(key_file), "HF_HUB_OFFLINE": "1"}
            if name == "agent":
                argv = [*GUARD, "vllm-mlx", "serve", str(tiny_model), "--host", "127.0.0.1"]
                argv += ["--port", str(ports[name]), "--served-model-name", "agent", "--offline"]
            else:
                argv = [*GUARD, "mlx-lm", "--model", str(tiny_model), "--host", "127.0.0.1"]
                argv += ["--port", str(ports[name])]
            procs[name] = start(argv, work / f"{name}.log", env)

        def route(name: str, runtime: str, served: str, **kw: Any) -> dict[str, Any]:
            key_file = str(work / f"{name}.key")
            return {"name": name, "port": ports[name], "served_model": served,
                    "runtime": runtime, "key_file": key_file, **kw}  # fmt: skip

        config = work / "routes.json"
        routes = [
            route("fast", "mlx-lm", "default_model"),
            route("agent", "vllm-mlx", "agent", max_concurrency=1),
            route("victim", "mlx-lm", "default_model"),
        ]
        config.write_text(json.dumps({"routes": routes}))
        env = {**os.environ, "LITELLM_MASTER_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        argv = [sys.executable, "-m", "mlxctl.gateway", "--config", str(config)]
        procs["gateway"] = start([*argv, "--port", str(ports["gateway"])], work / "gw.log", env)
        setup = Stack(f"http://127.0.0.1:{ports['gateway']}", ports, keys, procs, work)

        def serving() -> bool:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    log = (work / ("gw.log" if name == "gateway" else f"{name}.log")).read_text()
                    pytest.fail(f"{name} exited {proc.returncode}:\n{log[-3000:]}")
            try:
                for name in ("fast", "agent", "victim"):
                    answer = httpx.post(
                        f"{setup.tier(name)}/v1/chat/completions",
                        json={
                            "model": "default_model" if name != "agent" else "agent",
                            "messages": MSG,
                            "max_tokens": 1,
                        },
                        headers={"Authorization": f"Bearer {keys[name]}"},
                        timeout=30,
                    )
                    if answer.status_code != 200:
                        return False
                return httpx.get(f"{setup.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(serving, 240, "two guarded mlx_lm.server, a guarded vllm-mlx and the gateway")
        yield setup
    finally:
        for proc in procs.values():
            stop(proc)


# -- row 2: no CORS grant, no request without the tier's key ---------------------------------

PREFLIGHT = {
    "Origin": "https://evil.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type,authorization",
}


@pytest.mark.parametrize("name", ["fast", "agent"])
def test_a_foreign_origin_gets_no_cors_grant_from_a_tier(stack: Stack, name: str) -> None:
    base = stack.tier(name)
    preflight = httpx.options(f"{base}/v1/chat/completions", headers=PREFLIGHT, timeout=10)
    assert "access-control-allow-origin" not in preflight.headers, preflight.headers
    body = {"model": "x", "messages": MSG, "max_tokens": 1}
    # A "simple" request a page may send without a preflight (text/plain), and a JSON one.
    for headers in (
        {"Origin": "https://evil.example", "Content-Type": "text/plain"},
        {"Origin": "https://evil.example", "Content-Type": "application/json"},
    ):
        answer = httpx.post(f"{base}/v1/chat/completions", content=json.dumps(body),
                            headers=headers, timeout=30)  # fmt: skip
        assert "access-control-allow-origin" not in answer.headers
        assert answer.status_code in (401, 403), answer.text


@pytest.mark.parametrize("name", ["fast", "agent"])
def test_a_tier_answers_no_one_without_its_key(stack: Stack, name: str) -> None:
    served = "agent" if name == "agent" else "default_model"
    body = {"model": served, "messages": MSG, "max_tokens": 1}
    url = f"{stack.tier(name)}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer sk-wrong"}
    assert httpx.post(url, json=body, headers=wrong, timeout=30).status_code == 401
    right = {"Authorization": f"Bearer {stack.keys[name]}"}
    assert httpx.post(url, json=body, headers=right, timeout=30).status_code == 200
    # ... and the key is on no command line.
    cmdline = Path(f"/proc/{stack.procs[name].pid}/cmdline").read_bytes()
    assert stack.keys[name].encode() not in cmdline


# -- issue 17: a one-slot tier under 16 clients ------------------------------------------------


def test_sixteen_clients_on_a_one_slot_vllm_mlx_tier_all_get_their_answer(stack: Stack) -> None:
    client = stack.client()

    def ask(i: int) -> str:
        if i % 2:
            stream = client.chat.completions.create(
                model="agent",
                messages=MSG,  # type: ignore[arg-type]
                max_tokens=8,
                stream=True,
            )
            chunks = list(stream)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices]
            assert any(finish), "a stream without a finish_reason"
            return "stream"
        answer = client.chat.completions.create(model="agent", messages=MSG, max_tokens=8)  # type: ignore[arg-type]
        assert answer.choices[0].finish_reason
        return "whole"

    # A probe-like direct 1-token request races the clients (what mlxctl's probes do).
    def probe() -> int:
        return httpx.post(
            f"{stack.tier('agent')}/v1/chat/completions",
            json={"model": "agent", "messages": MSG, "max_tokens": 1},
            headers={"Authorization": f"Bearer {stack.keys['agent']}"},
            timeout=60,
        ).status_code

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(17) as pool:
        probes = [pool.submit(probe) for _ in range(3)]
        results = list(pool.map(ask, range(16)))
        [p.result() for p in probes]  # 200 or the backend's 503: either is fine for a probe
    assert sorted(results) == ["stream"] * 8 + ["whole"] * 8
    print(f"16 clients on a one-slot tier: 0 failed in {time.monotonic() - started:.1f} s")
    log = (stack.work / "gw.log").read_text()
    assert "Traceback" not in log and "exception" not in log.lower(), log[-3000:]


# -- issue 17: a tier killed mid-stream ---------------------------------------------------------


def test_a_tier_killed_mid_stream_makes_the_sdk_raise(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model="victim",
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=4000,
        stream=True,
    )
    received = 0
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
                if received == 3:
                    os.killpg(stack.procs["victim"].pid, signal.SIGKILL)
    assert received >= 3
    assert "stream" in str(err.value.message)
