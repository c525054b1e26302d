"""Issue 18's poison requests through the real gateway against a real ``mlx_lm.server``
tier (the tiny test model): every one gets a 4xx or a correct answer, and the tier is
unharmed (same PID, ``/health`` 200, a normal request answered within seconds).

The known poison list covers every row; a small hypothesis run over the request schema
runs by default (a few seconds), ``pytest -m fuzz`` runs a larger budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tests.integration.conftest import free_ports, wait_for

pytestmark = pytest.mark.integration

KEY = "sk-poison-test"
MSG = [{"role": "user", "content": "Hello world"}]
PNG = "data:image/png;base64,iVBORw0KGgo="


@dataclass
class Tier:
    url: str
    tier_port: int
    server: subprocess.Popen[bytes]
    gateway: subprocess.Popen[bytes]

    def post(self, body: Any, path: str = "/v1/chat/completions") -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        return httpx.post(self.url + path, content=data, headers=headers, timeout=30)

    def assert_unharmed(self, pid: int) -> None:
        assert self.server.poll() is None and self.server.pid == pid, "the tier died"
        health = httpx.get(f"http://127.0.0.1:{self.tier_port}/health", timeout=5)
        assert health.status_code == 200, f"/health {health.status_code}: {health.text}"
        r = self.post({"model": "fast", "messages": MSG, "max_tokens": 1})
        assert r.status_code == 200, r.text


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def tier(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    from mlxctl.desired.resolve import model_facts

    root = tmp_path_factory.mktemp("poison")
    tier_port, gw_port = free_ports(2)
    route = {"name": "fast", "port": tier_port, "served_model": "default_model",
             "runtime": "mlx-lm", **model_facts(tiny_model)}  # fmt: skip
    config = root / "routes.json"
    config.write_text(json.dumps({"routes": [route]}))
    server = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm", "server", "--model", str(tiny_model),
         "--port", str(tier_port)],
        stdout=(root / "tier.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    env = {**os.environ, "LITELLM_MASTER_KEY": KEY}
    env.pop("MLXCTL_ADMIN_SOCKET", None)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "mlxctl.gateway", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(gw_port)],
        env=env, stdout=(root / "gateway.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    setup = Tier(f"http://127.0.0.1:{gw_port}", tier_port, server, gateway)
    try:

        def answers() -> bool:
            try:
                return setup.post({"model": "fast", "messages": MSG, "max_tokens": 1}).is_success
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, "the tier through the gateway")
        yield setup
    finally:
        stop(gateway)
        stop(server)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": MSG, "max_tokens": 2, **fields}


def image(url: str) -> list[dict[str, Any]]:
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": parts}]


def deep(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


WIDE = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}}
WIDE_FORMAT = {"type": "json_schema", "json_schema": {"name": "s", "schema": WIDE}}
DEEP_TOOL = {"type": "function", "function": {"name": "f", "parameters": deep(20)}}
LOOP = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
POISON: list[tuple[str, Any, str]] = [
    ("row1-id-past-vocab", chat(logit_bias={"999999999": 100}), "chat"),
    ("row1-id-at-vocab", chat(logit_bias={"300": 100}), "chat"),
    ("row1-many-entries", chat(logit_bias={str(i): 1 for i in range(100_000)}), "chat"),
    ("row3-batch-prompt", {"model": "fast", "prompt": ["a", "b"], "max_tokens": 2}, "text"),
    ("row3-token-prompt", {"model": "fast", "prompt": [1, 999_999], "max_tokens": 2}, "text"),
    ("row3-return-tensors", chat(chat_template_kwargs={"return_tensors": "np"}), "chat"),
    ("row4-template-kwarg", chat(chat_template_kwargs={"chat_template": LOOP}), "chat"),
    ("row4-template-field", chat(chat_template=LOOP), "chat"),
    ("row5-loopback-url", chat(messages=image("http://127.0.0.1:9/x.png")), "chat"),
    ("row5-file-url", chat(messages=image("file:///etc/passwd")), "chat"),
    ("row5-image-text-only", chat(messages=image(PNG)), "chat"),
    ("row6-schema", chat(response_format=WIDE_FORMAT), "chat"),
    ("row6-tool-depth", chat(tools=[DEEP_TOOL]), "chat"),
    ("row7-max-tokens-2**70", chat(max_tokens=2**70), "chat"),
    ("row7-max-tokens-capped", chat(max_tokens=100_000, stop=["e", "a", " "]), "chat"),
    ("row8-deep-json", b"[" * 100_000 + b"]" * 100_000, "chat"),
    ("row10-nan", b'{"model": "fast", "messages": [], "temperature": NaN}', "chat"),
    ("row10-inf", b'{"model": "fast", "messages": [], "top_p": 1e999}', "chat"),
    ("row10-bool-max-tokens", chat(max_tokens=True), "chat"),
    ("row10-temperature", chat(temperature=-1), "chat"),
    ("row10-top-p", chat(top_p=5), "chat"),
    ("row10-huge-model", {"model": "m" * 1_000_000, "messages": MSG}, "chat"),
    ("stop-123", chat(stop=123), "chat"),
    ("stream-options-empty", chat(stream=True, stream_options={}), "chat"),
]


@pytest.mark.parametrize(("body", "endpoint"), [p[1:] for p in POISON], ids=[p[0] for p in POISON])
def test_a_poison_request_is_refused_or_answered_and_the_tier_is_unharmed(
    tier: Tier, body: Any, endpoint: str
) -> None:
    pid = tier.server.pid
    r = tier.post(body, "/v1/completions" if endpoint == "text" else "/v1/chat/completions")
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert len(r.content) < 100_000  # no echo of a megabyte
    if r.status_code == 200:
        assert r.headers["x-mlxctl-tier"] == "fast"
    else:
        assert r.json()["error"]["message"]
    tier.assert_unharmed(pid)


# -- hypothesis over the schema: values and shapes a careless or hostile client sends ------

NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
KWARGS = ["enable_thinking", "reasoning_effort", "return_tensors", "tokenize", "chat_template"]
ROLES = ["user", "system", "assistant", "tool", "x"]
PART = st.sampled_from(
    [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/"}},
    ]
)
CONTENT = st.one_of(st.text(max_size=20), st.none(), st.lists(PART, max_size=3))
FIELDS = {
    "temperature": NUMBER,
    "top_p": NUMBER,
    "presence_penalty": NUMBER,
    "frequency_penalty": NUMBER,
    "n": NUMBER,
    "seed": NUMBER,
    "top_k": NUMBER,
    "min_p": NUMBER,
    "repetition_penalty": NUMBER,
    "xtc_probability": NUMBER,
    "top_logprobs": NUMBER,
    "logprobs": st.one_of(st.booleans(), NUMBER),
    "max_tokens": st.one_of(st.integers(min_value=-2, max_value=8), NUMBER),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=20), NUMBER),
    "logit_bias": st.dictionaries(
        st.one_of(st.integers(-5, 10**10).map(str), st.text(max_size=4)),
        st.one_of(st.integers(-200, 200), NUMBER),
        max_size=5,
    ),
    "chat_template_kwargs": st.dictionaries(
        st.sampled_from(KWARGS), st.one_of(st.booleans(), st.text(max_size=8), NUMBER), max_size=3
    ),
    "messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": CONTENT}), max_size=3
    ),
}


def requests_() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.just("fast")},
        optional={k: v for k, v in FIELDS.items()},
    ).map(lambda body: {"messages": MSG, "max_tokens": 2, **body})


def fuzz(tier: Tier, body: dict[str, Any]) -> None:
    pid = tier.server.pid
    r = tier.post(body)
    assert r.status_code == 200 or 400 <= r.status_code < 500, (body, r.status_code, r.text[:300])
    assert tier.server.poll() is None and tier.server.pid == pid, body
    health = httpx.get(f"http://127.0.0.1:{tier.tier_port}/health", timeout=5)
    assert health.status_code == 200, (body, health.text)


QUICK = settings(
    max_examples=15, deadline=None, derandomize=True, database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip


@QUICK
@given(body=requests_())
def test_hypothesis_requests_get_a_4xx_or_an_answer_and_leave_the_tier_unharmed(
    tier: Tier, body: dict[str, Any]
) -> None:
    fuzz(tier, body)


@pytest.mark.fuzz
@settings(QUICK, max_examples=600, derandomize=False)
@given(body=requests_())
def test_hypothesis_large_budget(tier: Tier, body: dict[str, Any]) -> None:
    fuzz(tier, body)


def test_after_all_of_it_the_tier_still_answers_with_the_same_pid(tier: Tier) -> None:
    tier.assert_unharmed(tier.server.pid)
