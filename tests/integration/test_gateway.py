"""The gateway for real: ``python -m mlxctl.gateway`` in front of real ``mlx_lm.server``
tiers serving the tiny model, driven through the OpenAI SDK and raw HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
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

KEY = "sk-gateway-test"
REMOTE_KEY = "sk-remote-test-secret"
MSG = [{"role": "user", "content": "Hello world"}]


@dataclass
class Setup:
    url: str
    config: Path
    gateway: subprocess.Popen[bytes]
    servers: dict[str, subprocess.Popen[bytes]]
    ports: dict[str, int]
    log: Path

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def post(self, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=60)

    def write_routes(self, routes: dict[str, Any]) -> None:
        """Replace the routes file the way mlxctl does: write a new file, rename it over."""
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(json.dumps(routes))
        os.replace(tmp, self.config)


def routes(ports: dict[str, int], **extra: Any) -> dict[str, Any]:
    def route(name: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "port": ports[name], "served_model": "default_model", **kw}

    return {
        "routes": [
            route("fast", aliases=["gpt-4o-mini"], max_concurrency=2),
            route("standard"),
            route("doomed"),
            route("lonely"),  # nothing listens on its port
            route("tools"),
            route("late"),  # started by a test while a request waits for it
        ],
        "remotes": [
            {
                "name": "cloud",
                "model": "openai/default_model",
                "api_base": f"http://127.0.0.1:{ports['standard']}/v1",
                "api_key_env": "MLXCTL_REMOTE_KEY_CLOUD",
            }
        ],
        "fallbacks": {"doomed": ["standard"], "lonely": ["cloud"]},
        **extra,
    }


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def setup(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("gateway")
    from mlxctl.testing.tiny_model import build_tool_call_model

    tool_model = build_tool_call_model(work / "tool-model")
    names = ("fast", "standard", "doomed", "lonely", "tools", "late", "gateway")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    servers: dict[str, subprocess.Popen[bytes]] = {}
    gateway: subprocess.Popen[bytes] | None = None
    try:
        for name in ("fast", "standard", "doomed", "tools"):
            model = tool_model if name == "tools" else tiny_model
            argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model)]
            argv += ["--port", str(ports[name])]
            with open(work / f"{name}.log", "wb") as log:
                servers[name] = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        config = work / "routes.json"
        config.write_text(json.dumps(routes(ports)))
        env = {
            **os.environ,
            "LITELLM_MASTER_KEY": KEY,
            "MLXCTL_REMOTE_KEY_CLOUD": REMOTE_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        argv = [sys.executable, "-m", "mlxctl.gateway", "--config", str(config)]
        argv += ["--port", str(ports["gateway"])]
        log_path = work / "gateway.log"
        with open(log_path, "wb") as log:
            gateway = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        url = f"http://127.0.0.1:{ports['gateway']}"
        setup = Setup(url, config, gateway, servers, ports, log_path)

        def serving() -> bool:
            try:
                return (
                    all(
                        httpx.post(
                            f"http://127.0.0.1:{ports[n]}/v1/chat/completions",
                            json={"model": "default_model", "messages": MSG, "max_tokens": 1},
                            timeout=5,
                        ).status_code
                        == 200
                        for n in servers
                    )
                    and httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200
                )
            except httpx.HTTPError:
                return False

        wait_for(serving, 120, "four tiers and the gateway")
        yield setup
    finally:
        for proc in [*servers.values(), *([gateway] if gateway else [])]:
            stop(proc)


def test_missing_or_wrong_key_is_401_through_the_sdk_and_raw_http(setup: Setup) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        setup.client("wrong").chat.completions.create(model="fast", messages=MSG, max_tokens=1)  # type: ignore[arg-type]
    assert err.value.status_code == 401
    body = {"model": "fast", "messages": MSG, "max_tokens": 1}
    assert setup.post(body, key=None).status_code == 401
    assert setup.post(body, key="wrong").status_code == 401
    anonymous = httpx.get(f"{setup.url}/v1/models", timeout=10)
    assert anonymous.status_code == 401 and "fast" not in anonymous.text


def test_models_list_names_and_aliases_and_an_alias_answers(setup: Setup) -> None:
    client = setup.client()
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["doomed", "fast", "gpt-4o-mini", "late", "lonely", "standard", "tools"]
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    assert answer.model == "gpt-4o-mini"


@pytest.mark.parametrize("model", ["fast", "gpt-4o-mini"])
def test_answers_name_the_model_the_client_asked_for(setup: Setup, model: str) -> None:
    """Not the tier's served name (``default_model``), nor the tier behind an alias."""
    client = setup.client()
    answer = client.chat.completions.create(model=model, messages=MSG, max_tokens=2)  # type: ignore[arg-type]
    assert answer.model == model and answer.choices[0].message.content
    text = client.completions.create(model=model, prompt="Hello world", max_tokens=2)
    assert text.model == model and text.choices[0].text
    stream = client.chat.completions.create(
        model=model,
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=4,
        stream=True,
    )
    chunks = list(stream)
    assert len(chunks) >= 2 and {c.model for c in chunks} == {model}
    # Raw: every event renamed, the stream still ends with [DONE].
    body = {"model": model, "messages": MSG, "max_tokens": 4, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{setup.url}/v1/chat/completions", json=body,
                      headers=headers, timeout=60) as resp:  # fmt: skip
        data = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert {json.loads(d)["model"] for d in data[:-1]} == {model}


def test_an_unknown_model_is_404_naming_the_models(setup: Setup) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        setup.client().chat.completions.create(
            model="/some/other/model",
            messages=MSG,  # type: ignore[arg-type]
            max_tokens=1,
        )
    assert "fast, gpt-4o-mini, late, lonely, standard, tools" in str(err.value)


def test_stop_123_is_refused_and_the_tier_still_serves(setup: Setup) -> None:
    refused = setup.post({"model": "fast", "messages": MSG, "max_tokens": 1, "stop": 123})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stop"
    loader = setup.post({"model": "fast", "messages": MSG, "max_tokens": 1, "draft_model": "/x"})
    assert loader.status_code == 400 and "draft_model" in loader.text
    after = setup.post({"model": "fast", "messages": MSG, "max_tokens": 2})
    assert after.status_code == 200, after.text


def test_a_stream_arrives_chunk_by_chunk(setup: Setup) -> None:
    stream = setup.client().chat.completions.create(
        model="fast",
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
    )
    chunks = list(stream)
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) >= 2
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_a_tool_call_passes_through_streamed_and_not(setup: Setup) -> None:
    client = setup.client()
    answer = client.chat.completions.create(
        model="tools",
        messages=MSG,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        max_tokens=8,
    )
    (call,) = answer.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert answer.choices[0].finish_reason == "tool_calls"
    stream = client.chat.completions.create(
        model="tools",
        messages=MSG,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        max_tokens=8,
        stream=True,
    )
    names = [
        tc.function.name
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.tool_calls
        for tc in chunk.choices[0].delta.tool_calls
        if tc.function and tc.function.name
    ]
    assert names == ["get_weather"]


def test_eight_concurrent_requests_all_answer_through_a_gate_of_two(setup: Setup) -> None:
    results: list[int] = []

    def one() -> None:
        body = {"model": "fast", "messages": MSG, "max_tokens": 16}
        results.append(setup.post(body).status_code)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 8


def test_a_dead_tier_is_answered_by_its_fallback(setup: Setup) -> None:
    stop(setup.servers["doomed"])
    body = {"model": "doomed", "messages": MSG, "max_tokens": 2}
    answer = setup.post(body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "doomed"  # the Router's answers are renamed too
    streamed = setup.client().chat.completions.create(
        model="doomed",
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=4,
        stream=True,
    )
    chunks = list(streamed)
    assert [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert {c.model for c in chunks} == {"doomed"}
    # One failure never takes a tier out of service: no cooldown on the next request.
    assert setup.post({"model": "fast", "messages": MSG, "max_tokens": 1}).status_code == 200
    assert "did not answer; the Router retries" in setup.log.read_text()


def test_a_request_waits_for_a_tier_that_is_starting(
    setup: Setup, tiny_model: Path, tmp_path: Path
) -> None:
    answers: list[httpx.Response] = []
    asking = threading.Thread(
        target=lambda: answers.append(
            setup.post({"model": "late", "messages": MSG, "max_tokens": 1})
        )
    )
    asking.start()
    time.sleep(1.0)
    assert asking.is_alive()  # held: nothing listens on the tier's port yet
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(tiny_model)]
    with open(tmp_path / "late.log", "wb") as log:
        server = subprocess.Popen(
            [*argv, "--port", str(setup.ports["late"])],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        asking.join(60)
        assert [a.status_code for a in answers] == [200], answers[0].text if answers else ""
    finally:
        stop(server)


def test_the_remote_fallback_gets_its_key_from_the_environment_only(setup: Setup) -> None:
    answer = setup.post({"model": "lonely", "messages": MSG, "max_tokens": 2})
    assert answer.status_code == 200, answer.text
    assert REMOTE_KEY not in setup.config.read_text()
    assert REMOTE_KEY not in setup.log.read_text()


def test_routes_reload_in_place_without_a_failed_request(setup: Setup) -> None:
    failures: list[str] = []
    done = threading.Event()
    count = 0

    def hammer() -> None:
        nonlocal count
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
            while not done.is_set():
                body = {"model": "standard", "messages": MSG, "max_tokens": 1}
                try:
                    r = client.post(f"{setup.url}/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                count += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        time.sleep(0.5)
        # A new alias and a removed route, then back: two reloads while requests run.
        changed = routes(setup.ports)
        changed["routes"] = [r for r in changed["routes"] if r["name"] != "lonely"]
        changed["routes"][1]["aliases"] = ["gpt-4o"]
        setup.write_routes(changed)

        def listed() -> bool:
            ids = {m.id for m in setup.client().models.list()}
            return "gpt-4o" in ids and "lonely" not in ids

        wait_for(listed, 10, "the new routes")
        assert setup.post({"model": "gpt-4o", "messages": MSG, "max_tokens": 1}).status_code == 200
        setup.write_routes(routes(setup.ports))
        wait_for(lambda: "lonely" in {m.id for m in setup.client().models.list()}, 10, "reload")
        time.sleep(0.5)
    finally:
        done.set()
        worker.join(30)
    assert setup.gateway.poll() is None  # the same process all along
    assert failures == [] and count > 10
    assert setup.log.read_text().count("routes reloaded") >= 2
