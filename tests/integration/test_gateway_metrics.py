"""The gateway's metrics, model list and client settings for real: ``python -m
mlxctl.gateway`` in front of a real ``mlx_lm.server`` serving the tiny tool-call model,
driven through the OpenAI SDK configured by what ``mlxctl gateway env`` prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.conftest import free_ports, wait_for

pytestmark = pytest.mark.integration

KEY = "sk-metrics-test"
MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Setup:
    url: str
    port: int
    key_file: Path
    model_dir: Path
    work: Path

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        r = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200
        out = {}
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from mlxctl.testing.tiny_model import build_tool_call_model

    work = tmp_path_factory.mktemp("metrics")
    model = build_tool_call_model(work / "tool-model")
    tier_port, gw_port = free_ports(2)
    key_file = work / "key"
    key_file.write_text(KEY + "\n")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model)]
        with open(work / "tier.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [*argv, "--port", str(tier_port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        info = {"context_length": 2048, "tools": True, "sources": ["config.json"]}
        route = {"name": "fast", "port": tier_port, "served_model": "default_model",
                 "aliases": ["gpt-4o-mini"], "info": info}  # fmt: skip
        config = work / "routes.json"
        config.write_text(json.dumps({"routes": [route]}))
        env = {**os.environ, "MLXCTL_GATEWAY_KEY_FILE": str(key_file)}
        env.pop("LITELLM_MASTER_KEY", None)
        gw = [sys.executable, "-m", "mlxctl.gateway", "--config", str(config)]
        with open(work / "gateway.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [*gw, "--port", str(gw_port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        url = f"http://127.0.0.1:{gw_port}"

        def serving() -> bool:
            try:
                direct = httpx.post(
                    f"http://127.0.0.1:{tier_port}/v1/chat/completions",
                    json={"model": "default_model", "messages": MSG, "max_tokens": 1},
                    timeout=5,
                )
                return (
                    direct.status_code == 200
                    and httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200
                )
            except httpx.HTTPError:
                return False

        wait_for(serving, 120, "the tier and the gateway")
        yield Setup(url, gw_port, key_file, model, work)
    finally:
        for proc in procs:
            stop(proc)


def sample(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_the_sdk_saw(setup: Setup) -> None:
    client = openai.OpenAI(base_url=f"{setup.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    assert httpx.get(f"{setup.url}/metrics").status_code == 401
    before = setup.metrics()
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, tools=TOOLS)  # type: ignore[arg-type]
    assert answer.usage is not None
    stream = client.chat.completions.create(
        model="fast", messages=MSG, tools=TOOLS, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1
    after = setup.metrics()

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    route = {"tier": "fast", "route": "/v1/chat/completions"}
    assert moved("mlxctl_gateway_requests_total", status="200", **route) == 2
    assert moved("mlxctl_gateway_request_duration_seconds_count", **route) == 2
    assert moved("mlxctl_gateway_time_to_first_token_seconds_count", **route) == 1
    prompt = answer.usage.prompt_tokens + usage[0].prompt_tokens
    completion = answer.usage.completion_tokens + usage[0].completion_tokens
    assert moved("mlxctl_gateway_tokens_total", tier="fast", direction="in") == prompt
    assert moved("mlxctl_gateway_tokens_total", tier="fast", direction="out") == completion
    assert sample(after, "mlxctl_gateway_in_flight_requests", tier="fast") == 0
    assert sample(after, "mlxctl_gateway_queued_requests", tier="fast") == 0
    # The gateway's own time is a small part of the whole.
    own = moved("mlxctl_gateway_overhead_seconds_sum", route="/v1/chat/completions")
    total = moved("mlxctl_gateway_request_duration_seconds_sum", **route)
    assert 0 < own < total / 2
    assert sample(after, "process_resident_memory_bytes") > 0


def test_models_list_the_tiers_context_capabilities_and_state(setup: Setup) -> None:
    client = openai.OpenAI(base_url=f"{setup.url}/v1", api_key=KEY, max_retries=0)
    models = {m.id: m for m in client.models.list()}
    assert sorted(models) == ["fast", "gpt-4o-mini"]
    extra = models["gpt-4o-mini"].model_extra or {}
    assert extra["tier"] == "fast" and extra["context_length"] == 2048
    assert extra["capabilities"]["tools"] is True
    assert (extra["load"], extra["state"]) == ("always", "loaded")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def printed(setup: Setup, client: str) -> tuple[str, str]:
    """What ``mlxctl gateway env`` prints for a stack whose gateway is this one."""
    stack = setup.work / f"stack-{client}.yaml"
    stack.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: m}\nspec:\n"
        f"  gateway: {{port: {setup.port}, masterKey: '${{file:{setup.key_file}}}'}}\n"
        f"  tiers:\n    - {{name: fast, runtime: mlx-lm, model: {{path: {setup.model_dir}}},"
        " port: 8001, aliases: [gpt-4o-mini]}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MLXCTL_HOME": str(setup.work / "h")}
    out = subprocess.run(
        [sys.executable, "-m", "mlxctl", "gateway", "env", "--client", client, "-f", str(stack)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


def evaluated(exports: str) -> dict[str, str]:
    """The environment after a shell ``eval``s the printed lines."""
    script = exports + '\npython3 -c "import json, os; print(json.dumps(dict(os.environ)))"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_the_printed_openai_settings_work_with_the_openai_sdk(setup: Setup) -> None:
    text, hint = printed(setup, "openai")
    assert "eval" in hint and KEY not in text  # a reference to the key, never the key
    env = evaluated(text)
    assert env["OPENAI_BASE_URL"] == f"{setup.url}/v1" and env["OPENAI_API_KEY"] == KEY
    # The SDK reads OPENAI_BASE_URL and OPENAI_API_KEY itself.
    client = openai.OpenAI(
        base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0
    )
    model = env["OPENAI_MODEL"]
    answer = client.chat.completions.create(model=model, messages=MSG, tools=TOOLS)  # type: ignore[arg-type]
    assert answer.model == model
    calls = answer.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]
    chunks = list(client.chat.completions.create(model=model, messages=MSG, stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason is not None


def test_the_printed_opencode_config_reaches_the_gateway(setup: Setup) -> None:
    text, _ = printed(setup, "opencode")
    config = json.loads(text)
    provider = config["provider"]["mlxctl"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    options = provider["options"]
    # opencode substitutes {file:PATH} with the file's contents.
    key_ref = options["apiKey"]
    assert key_ref == f"{{file:{setup.key_file}}}"
    key = Path(key_ref[len("{file:") : -1]).read_text().strip()
    model = config["model"].split("/", 1)[1]
    assert model in provider["models"]
    client = openai.OpenAI(base_url=options["baseURL"], api_key=key, max_retries=0)
    assert client.chat.completions.create(model=model, messages=MSG).model == model


def test_the_printed_codex_config_reaches_the_gateway(setup: Setup) -> None:
    text, hint = printed(setup, "codex")
    config = tomllib.loads(text)
    provider = config["model_providers"]["mlxctl"]
    profile = config["profiles"]["mlxctl"]
    assert provider["wire_api"] == "responses" and profile["model_provider"] == "mlxctl"
    export = hint.split("then: ", 1)[1].split("; codex", 1)[0]
    env = evaluated(export)
    key = env[provider["env_key"]]
    client = openai.OpenAI(base_url=provider["base_url"], api_key=key, max_retries=0)
    # The base URL and key reach the gateway; Codex itself speaks only the Responses API.
    assert client.models.retrieve(profile["model"]).id == profile["model"]
    answer = client.responses.create(model=profile["model"], input="hi", max_output_tokens=8)
    assert answer.model == profile["model"]


def test_the_printed_claude_settings_reach_the_gateway(setup: Setup) -> None:
    text, _ = printed(setup, "claude")
    env = evaluated("export ANTHROPIC_API_KEY=stale\n" + text)
    assert "ANTHROPIC_API_KEY" not in env  # it would win over the token
    assert env["ANTHROPIC_BASE_URL"] == setup.url and env["ANTHROPIC_AUTH_TOKEN"] == KEY
    assert env["ANTHROPIC_MODEL"] == env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "fast"
    import anthropic

    sdk = anthropic.Anthropic(
        base_url=env["ANTHROPIC_BASE_URL"], auth_token=env["ANTHROPIC_AUTH_TOKEN"], max_retries=0
    )
    answer = sdk.messages.create(
        model=env["ANTHROPIC_MODEL"], max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.model == env["ANTHROPIC_MODEL"]


@pytest.fixture(scope="module")
def embedding_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real vllm-mlx serving the tests' tiny BERT as the ``vllm-mlx-embeddings`` runtime
    launches it, behind a real gateway."""
    from mlxctl.runtimes import vllm_mlx_embeddings
    from mlxctl.runtimes.base import ServerLaunch
    from mlxctl.testing.tiny_embedding import build_tiny_embedding_model

    work = tmp_path_factory.mktemp("embeddings")
    model = build_tiny_embedding_model(work / "tiny-bert")
    tier_port, gw_port = free_ports(2)
    argv = vllm_mlx_embeddings.argv(ServerLaunch(Path(sys.executable), model, tier_port, "emb", {}))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(work / "tier.log", "wb") as log:
            procs.append(
                subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
        routes = [
            {"name": "emb", "port": tier_port, "served_model": str(model),
             "aliases": ["text-embedding-3-small"],
             "info": {"embeddings": True, "chat": False}},
        ]  # fmt: skip
        config = work / "routes.json"
        config.write_text(json.dumps({"routes": routes}))
        env = {**os.environ, "LITELLM_MASTER_KEY": KEY}
        env.pop("MLXCTL_GATEWAY_KEY_FILE", None)
        gw = [sys.executable, "-m", "mlxctl.gateway", "--config", str(config)]
        with open(work / "gateway.log", "wb") as log:
            procs.append(
                subprocess.Popen([*gw, "--port", str(gw_port)], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            )  # fmt: skip
        url = f"http://127.0.0.1:{gw_port}"

        from mlxctl.machine.probes import HttpProber
        from mlxctl.runtimes.base import ProbeSpec

        # mlxctl's own readiness probe, through the runtime registry.
        probe = ProbeSpec(kind="vllm-mlx-embeddings", port=tier_port, model="emb")

        def ready() -> bool:
            try:
                ok = HttpProber().probe(probe, "ready", 30).ok
                return ok and httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 180, "vllm-mlx serving the tiny embedding model, and the gateway")
        yield url, work
    finally:
        for proc in procs:
            stop(proc)


def test_embeddings_through_the_gateway_with_the_openai_sdk(
    embedding_setup: tuple[str, Path],
) -> None:
    url, _ = embedding_setup
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    answer = client.embeddings.create(
        model="text-embedding-3-small", input=["hello world", "the quick brown fox", "hello world"]
    )
    assert answer.model == "text-embedding-3-small"
    vectors = [d.embedding for d in answer.data]
    assert len(vectors) == 3 and len(vectors[0]) == 32  # the tiny model's hidden size
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert answer.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError, match="serves embeddings only"):
        client.chat.completions.create(model="emb", messages=MSG)  # type: ignore[arg-type]
    # The tier still serves after the refused chat (it never reached it).
    assert client.embeddings.create(model="emb", input="again").data
