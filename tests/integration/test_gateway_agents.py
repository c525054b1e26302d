"""Anthropic Messages and OpenAI Responses for real: the ``anthropic`` and ``openai`` SDKs,
Claude Code and Codex CLI against ``python -m mlxctl.gateway`` in front of real
``mlx_lm.server`` (translated to chat completions) and vllm-mlx (its own routes) tiers.

The tiers serve tiny models built by the tests with a 131072-token context (agents send
10k+ token prompts): one answers "Hello from the tiny model." and ends its turn (a random
model's noise runs to ``max_tokens``, which Claude Code reports as an error), one answers a
``get_weather`` tool call. The agents come from the npm registry into the repository's
ignored ``.cache/agents`` (installed once; skipped only when the registry is
unreachable), and run headless, offline, with their state in the test's directory.

    PYTHONPATH=src python -m pytest -q -m slow tests/integration/test_gateway_agents.py

runs the agents (~1-2 min each on 2 shared cores); without ``-m slow`` only the SDKs run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.integration.conftest import free_ports, wait_for
from tests.integration.test_gateway import stop

from mlxctl.gateway.prompt_tokens import PER_MESSAGE
from mlxctl.testing.tiny_model import ANSWER, TOOL_CALL

pytestmark = pytest.mark.integration

KEY = "sk-gateway-agents"
REPO = Path(__file__).resolve().parents[2]
AGENTS = REPO / ".cache" / "agents"
VLLM_MLX = str(Path(sys.executable).parent / "vllm-mlx")
CONTEXT = 131072
TOOL = {"name": "get_weather", "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
FUNCTION = {"type": "function", "name": TOOL["name"], "description": TOOL["description"],
            "parameters": TOOL["input_schema"]}  # fmt: skip


@dataclass
class Tiers:
    url: str
    logs: dict[str, Path]
    work: Path
    # Each tier's tokenizer.json (the routes name it, as mlxctl writes them).
    tokenizers: dict[str, Path]

    def tokens(self, tier: str, text: str) -> int:
        """``text``'s tokens by the tier's own tokenizer."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(self.tokenizers[tier]))
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    def anthropic(self) -> Any:
        import anthropic  # a dev dependency

        return anthropic.Anthropic(base_url=self.url, api_key=KEY, max_retries=0, timeout=120)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=120)

    def requests_seen(self, tier: str) -> int:
        """POSTs the tier's server logged (both servers log each request line)."""
        return self.logs[tier].read_text(errors="replace").count("POST /v1/")


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiers]:
    from mlxctl.testing.tiny_model import build_answer_model, build_tool_call_model

    work = tmp_path_factory.mktemp("agents")
    answer = build_answer_model(work / "answer", context=CONTEXT)
    tools = build_tool_call_model(work / "tools", context=CONTEXT)
    names = ("mlx", "mlx-tools", "vllm", "vllm-tools", "gateway")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    argv = {
        "mlx": [sys.executable, "-m", "mlx_lm", "server", "--model", str(answer)],
        "mlx-tools": [sys.executable, "-m", "mlx_lm", "server", "--model", str(tools)],
        "vllm": [VLLM_MLX, "serve", str(answer), "--served-model-name", "vllm", "--offline"],
        "vllm-tools": [VLLM_MLX, "serve", str(tools), "--served-model-name", "vllm-tools",
                       "--offline", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
    }  # fmt: skip
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: work / f"{name}.log" for name in names}
    try:
        for name, cmd in argv.items():
            cmd = [*cmd, "--port", str(ports[name])]
            if name.startswith("vllm"):
                cmd += ["--host", "127.0.0.1"]
            with logs[name].open("wb") as log:
                procs[name] = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, "HF_HUB_OFFLINE": "1"},
                )  # fmt: skip
        tokenizers = {name: (tools if "tools" in name else answer) / "tokenizer.json"
                      for name in argv}  # fmt: skip
        routes = [
            {"name": name, "port": ports[name], "runtime": "vllm-mlx" if "vllm" in name else
             "mlx-lm", "served_model": name if "vllm" in name else "default_model",
             "tokenizer": str(tokenizers[name]), "aliases": [f"claude-{name}"]}
            for name in argv
        ]  # fmt: skip
        config = work / "routes.json"
        config.write_text(json.dumps({"routes": routes}))
        cmd = [sys.executable, "-m", "mlxctl.gateway", "--config", str(config)]
        cmd += ["--port", str(ports["gateway"])]
        with logs["gateway"].open("wb") as log:
            procs["gateway"] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "LITELLM_MASTER_KEY": KEY},
            )  # fmt: skip
        url = f"http://127.0.0.1:{ports['gateway']}"

        def serving() -> bool:
            for name in argv:
                if procs[name].poll() is not None:
                    raise AssertionError(f"{name} exited: {logs[name].read_text()[-2000:]}")
            try:
                for name in argv:
                    served = routes[list(argv).index(name)]["served_model"]
                    hi = [{"role": "user", "content": "hi"}]
                    body = {"model": served, "messages": hi, "max_tokens": 1}
                    answer = httpx.post(f"http://127.0.0.1:{ports[name]}/v1/chat/completions",
                                        json=body, timeout=30)  # fmt: skip
                    if answer.status_code != 200:
                        return False
                return httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(serving, timeout=180, what="the tiers and the gateway")
        yield Tiers(url, logs, work, tokenizers)
    finally:
        for proc in procs.values():
            stop(proc)


# -- the SDKs ----------------------------------------------------------------------------


@pytest.mark.parametrize("tier", ["mlx", "vllm"])
def test_the_anthropic_sdk_gets_text_streamed_or_not(tiers: Tiers, tier: str) -> None:
    client = tiers.anthropic()
    ask: dict[str, Any] = {"model": tier, "max_tokens": 16, "system": "Be brief.",
                           "messages": [{"role": "user", "content": "Hello"}]}  # fmt: skip
    message = client.messages.create(**ask)
    assert message.model == tier and message.stop_reason == "end_turn"
    assert "".join(b.text for b in message.content if b.type == "text") == ANSWER
    assert message.usage.output_tokens >= 1
    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER and final.stop_reason == "end_turn" and final.model == tier
    # count_tokens: the prompt the request becomes (system, then the user's message),
    # counted by the tier's own tokenizer with 3 tokens a message, under its name or alias;
    # a lower bound of what the tier counted (its template's own text comes on top).
    count = client.messages.count_tokens(model=tier, system="Be brief.", messages=ask["messages"])
    assert count.input_tokens == tiers.tokens(tier, "Be brief.\nHello") + 2 * PER_MESSAGE
    alias = client.messages.count_tokens(model=f"claude-{tier}", system="Be brief.",
                                         messages=ask["messages"])  # fmt: skip
    assert alias.input_tokens == count.input_tokens
    usage = message.usage
    assert count.input_tokens <= usage.input_tokens + (usage.cache_read_input_tokens or 0)


@pytest.mark.parametrize("tier", ["mlx-tools", "vllm-tools"])
def test_the_anthropic_sdk_gets_a_tool_call_and_sends_its_result(tiers: Tiers, tier: str) -> None:
    client = tiers.anthropic()
    weather = [{"role": "user", "content": "Weather in Paris?"}]
    ask: dict[str, Any] = {"model": tier, "max_tokens": 32, "tools": [TOOL], "messages": weather}
    message = client.messages.create(**ask)
    assert message.stop_reason == "tool_use"
    call = next(b for b in message.content if b.type == "tool_use")
    assert (call.name, call.input) == (TOOL_CALL["name"], TOOL_CALL["arguments"])
    with client.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    streamed = next(b for b in final.content if b.type == "tool_use")
    assert (final.stop_reason, streamed.input) == ("tool_use", TOOL_CALL["arguments"])
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
    turns = [*ask["messages"], {"role": "assistant", "content": message.content},
             {"role": "user", "content": [result]}]  # fmt: skip
    again = client.messages.create(**{**ask, "messages": turns})
    assert again.stop_reason in ("tool_use", "end_turn")
    # count_tokens of such a turn: the text, the call's name and arguments, the result,
    # 3 tokens a message; not the tool's definition, which this model's template (as
    # SmolLM2's) never shows it.
    use = {"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}
    turns = [
        *weather,
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [result]},
    ]
    count = client.messages.count_tokens(model=tier, tools=[TOOL], messages=turns)
    rendered = "\n".join(["Weather in Paris?", "get_weather", '{"city": "Paris"}', "sunny"])
    assert count.input_tokens == tiers.tokens(tier, rendered) + 3 * PER_MESSAGE


@pytest.mark.parametrize("tier", ["mlx", "vllm"])
def test_the_openai_sdk_gets_responses_text_streamed_or_not(tiers: Tiers, tier: str) -> None:
    client = tiers.openai()
    response = client.responses.create(model=tier, input="Hello", instructions="Be brief.",
                                       max_output_tokens=16, store=False)  # fmt: skip
    assert response.status == "completed" and response.model == tier
    assert response.output_text == ANSWER
    events = list(client.responses.create(model=tier, input="Hello", max_output_tokens=16,
                                          stream=True, store=False))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == ANSWER


@pytest.mark.parametrize("tier", ["mlx-tools", "vllm-tools"])
def test_the_openai_sdk_gets_a_function_call_and_sends_its_output(tiers: Tiers, tier: str) -> None:
    client = tiers.openai()
    response = client.responses.create(model=tier, input="Weather in Paris?", tools=[FUNCTION],
                                       store=False)  # fmt: skip
    call = next(item for item in response.output if item.type == "function_call")
    assert (call.name, json.loads(call.arguments)) == (TOOL_CALL["name"], TOOL_CALL["arguments"])
    with client.responses.stream(model=tier, input="Weather?", tools=[FUNCTION]) as stream:
        final = stream.get_final_response()
    assert any(item.type == "function_call" for item in final.output)
    follow: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]  # fmt: skip
    again = client.responses.create(model=tier, input=follow, tools=[FUNCTION], store=False)
    assert again.status == "completed"


def test_unknown_routes_and_methods_answer_in_their_familys_style(tiers: Tiers) -> None:
    anthropic = httpx.post(f"{tiers.url}/v1/messages/batches", headers={"x-api-key": KEY})
    assert anthropic.status_code == 404 and anthropic.json()["type"] == "error"
    other = httpx.get(f"{tiers.url}/v1/nowhere")
    assert other.status_code == 404 and other.json()["error"]["code"] == "unknown_url"
    wrong = httpx.get(f"{tiers.url}/v1/responses")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")


# -- the agents -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def agents() -> Path:
    """Claude Code and Codex CLI from the npm registry, installed once under .cache."""
    bins = AGENTS / "node_modules" / ".bin"
    if (bins / "claude").exists() and (bins / "codex").exists():
        return bins
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the agents come from the npm registry")
    AGENTS.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(AGENTS),
         "@anthropic-ai/claude-code", "@openai/codex"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-5:]
        if any(w in done.stderr for w in ("ENOTFOUND", "ECONNREFUSED", "ETIMEDOUT", "EAI_AGAIN")):
            pytest.skip(f"the npm registry is unreachable: {' '.join(reason)}")
        raise AssertionError(f"npm install failed: {done.stderr[-2000:]}")
    return bins


def offline_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    quiet = {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    return {**os.environ, **quiet, "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home)}


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["mlx", "vllm"])
def test_claude_code_gets_an_answer_through_the_gateway(
    tiers: Tiers, agents: Path, tier: str
) -> None:
    """``claude -p`` with its whole default prompt (~76 KB: 24 tools, its system prompt)."""
    env = offline_env(tiers.work / f"claude-{tier}")
    env |= {"ANTHROPIC_BASE_URL": tiers.url, "ANTHROPIC_AUTH_TOKEN": KEY}
    before = tiers.requests_seen(tier)
    done = subprocess.run(
        [str(agents / "claude"), "-p", "Say hello", "--model", tier],
        env=env, cwd=tiers.work, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert ANSWER in done.stdout
    assert tiers.requests_seen(tier) > before


@pytest.mark.slow
@pytest.mark.parametrize("tier", ["mlx", "vllm"])
def test_codex_gets_an_answer_through_the_gateway(tiers: Tiers, agents: Path, tier: str) -> None:
    """``codex exec`` (Responses API, streamed, ~40 KB with its tools and instructions)."""
    home = tiers.work / f"codex-{tier}"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{tier}"\nmodel_provider = "mlxctl"\nweb_search = "disabled"\n'
        f'[model_providers.mlxctl]\nname = "mlxctl"\nbase_url = "{tiers.url}/v1"\n'
        'env_key = "MLXCTL_GATEWAY_KEY"\nwire_api = "responses"\n'
    )
    env = offline_env(home) | {"CODEX_HOME": str(home), "MLXCTL_GATEWAY_KEY": KEY}
    before = tiers.requests_seen(tier)
    done = subprocess.run(
        [str(agents / "codex"), "exec", "--skip-git-repo-check", "Say hello"],
        env=env, cwd=tiers.work, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert ANSWER in done.stdout
    assert tiers.requests_seen(tier) > before
