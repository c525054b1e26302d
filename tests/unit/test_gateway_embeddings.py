"""``POST /v1/embeddings``: which tiers serve it, what they are sent, and the refusals;
the ``vllm-mlx-embeddings`` runtime's command line, readiness check and route."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from mlxctl.desired.resolve import ResolveContext, resolve_desired
from mlxctl.desired.state import ModelRef
from mlxctl.gateway.app import Gateway, build_app
from mlxctl.gateway.embeddings import Invalid, check
from mlxctl.gateway.routing import RoutingTable
from mlxctl.runtimes import vllm_mlx_embeddings as emb
from mlxctl.runtimes.base import ServerLaunch
from mlxctl.runtimes.gateway import GatewayConfig, ModelInfo, Route, parse_config
from mlxctl.spec.loader import load_stack_set

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
EMBED_INFO = ModelInfo(embeddings=True, chat=False)


def scenario(test: Any) -> list[dict[str, Any]]:
    """A scripted embedding tier and a chat tier behind an in-process gateway."""
    seen: list[dict[str, Any]] = []

    async def embed(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        data = [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}]
        usage = {"prompt_tokens": 4, "total_tokens": 4}
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/v1/embeddings", embed)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        routes = (
            Route(name="emb", port=port, served_model="/models/bert",
                  aliases=("text-embedding-3-small",), info=EMBED_INFO),
            Route(name="fast", port=port, served_model="default_model"),
        )  # fmt: skip
        gateway = Gateway(KEY, RoutingTable(GatewayConfig(routes=routes)))
        transport = httpx.ASGITransport(app=build_app(gateway))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                await test(gateway, client)
        finally:
            await gateway.aclose()
            await runner.cleanup()

    asyncio.run(run())
    return seen


def test_an_embedding_tier_is_sent_its_locked_name_and_answers_with_the_clients() -> None:
    async def test(gateway: Gateway, client: httpx.AsyncClient) -> None:
        body = {"model": "text-embedding-3-small", "input": ["a", "b"], "extra": 1}
        r = await client.post("/v1/embeddings", json=body, headers=AUTH)
        assert r.status_code == 200
        assert r.json()["model"] == "text-embedding-3-small"
        assert r.json()["data"][0]["embedding"] == [0.5, -0.5]
        value = gateway.metrics.registry.get_sample_value
        assert value("mlxctl_gateway_tokens_total", {"tier": "emb", "direction": "in"}) == 4
        labels = {"tier": "emb", "route": "/v1/embeddings", "status": "200"}
        assert value("mlxctl_gateway_requests_total", labels) == 1
        assert (await client.post("/v1/embeddings", json=body)).status_code == 401

    seen = scenario(test)
    assert seen == [{"input": ["a", "b"], "model": "/models/bert"}]


def test_a_tier_without_an_embedding_model_is_refused_naming_the_ones_with_one() -> None:
    async def test(gateway: Gateway, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/embeddings", json={"model": "fast", "input": "a"}, headers=AUTH)
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["code"] == "model_not_embedding" and error["param"] == "model"
        assert "emb, text-embedding-3-small" in error["message"]
        r = await client.post("/v1/embeddings", json={"model": "x", "input": "a"}, headers=AUTH)
        assert r.status_code == 404
        # And the other way round: no chat for a tier that only embeds.
        chat = {"model": "emb", "messages": [{"role": "user", "content": "hi"}]}
        r = await client.post("/v1/chat/completions", json=chat, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_chat"

    assert scenario(test) == []


def test_without_any_embedding_tier_the_error_says_how_to_add_one() -> None:
    async def run() -> None:
        routes = (Route(name="fast", port=1, served_model="m"),)
        gateway = Gateway(KEY, RoutingTable(GatewayConfig(routes=routes)))
        transport = httpx.ASGITransport(app=build_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            r = await client.post("/v1/embeddings", json={"model": "fast", "input": "a"},
                                  headers=AUTH)  # fmt: skip
        await gateway.aclose()
        assert r.status_code == 400
        assert "none does" in r.json()["error"]["message"]
        assert "vllm-mlx-embeddings" in r.json()["error"]["message"]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "a"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": [1, "a"]}, "input"),
        ({"model": "m", "input": [[1], []]}, "input"),
        ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
    ],
)
def test_requests_outside_the_schema_are_refused(body: dict[str, Any], param: str) -> None:
    with pytest.raises(Invalid) as caught:
        check(body)
    assert caught.value.param == param


def test_valid_inputs_pass_with_their_fields() -> None:
    for text in ("a", ["a", "b"], [1, 2], [[1, 2], [3]]):
        assert check({"model": "m", "input": text}).params == {"input": text}
    full = {"model": "m", "input": "a", "encoding_format": "base64", "dimensions": 8, "user": "u"}
    assert check(full).params == {k: v for k, v in full.items() if k != "model"}


def test_the_runtime_locks_its_model_and_loads_no_language_model() -> None:
    argv = emb.argv(ServerLaunch(Path("/py/bin/python"), Path("/m/bert"), 8005, "emb", {}))
    joined = " ".join(argv)
    # Through the tier guard like every model server (it keeps its own log there).
    assert joined.startswith("/py/bin/python -m mlxctl.runtimes.tier_guard vllm-mlx serve /m/bert ")
    assert "--embedding-model /m/bert --lazy-load-model" in joined
    assert {"embedding-model", "lazy-load-model", "port"} <= emb.RUNTIME.managed_flags


class FakeHttp:
    def __init__(self, answers: Mapping[str, tuple[int, bytes]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, Any]] = []

    def __call__(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> tuple[int, bytes]:
        self.calls.append((method, path, body))
        return self.answers[path]


def test_the_readiness_check_finds_the_locked_name_and_asks_for_one_embedding() -> None:
    models = {"data": [{"id": "emb", "owned_by": "vllm-mlx"},
                       {"id": "/m/bert", "owned_by": "vllm-mlx-embedding"}]}  # fmt: skip
    listed = (200, json.dumps(models).encode())
    ok = FakeHttp({"/v1/models": listed, "/v1/embeddings": (200, b"{}")})
    assert emb.check(ok, "ready", "emb").ok
    assert ok.calls[-1] == ("POST", "/v1/embeddings", {"model": "/m/bert", "input": "ping"})
    loading = FakeHttp({"/v1/models": (200, b'{"data": []}')})
    assert not emb.check(loading, "ready", "emb").ok
    broken = FakeHttp(
        {"/v1/models": (200, json.dumps(models).encode()), "/v1/embeddings": (500, b"boom")}
    )
    result = emb.check(broken, "live", "emb")
    assert not result.ok and "500" in result.detail


def test_resolution_routes_an_embedding_tier_by_its_directory(tmp_path: Path) -> None:
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        textwrap.dedent("""\
            apiVersion: mlxctl/v1
            kind: Stack
            metadata: {name: s}
            spec:
              tiers:
                - {name: emb, runtime: vllm-mlx-embeddings, model: {path: /m/bert}, port: 8005,
                   aliases: [text-embedding-3-small]}
            """)
    )

    def ref(tier: Any) -> ModelRef:
        return ModelRef("path", "path:/m/bert", Path("/m/bert"), "/m/bert")

    ctx = ResolveContext(python=Path("/py/bin/python"), state_dir=tmp_path, environ={},
                         resolve_model=ref)  # fmt: skip
    desired = resolve_desired(load_stack_set([stack]), ctx)
    assert desired.gateway is not None
    (route,) = parse_config(desired.gateway.files[0][1]).routes
    assert route.served_model == "/m/bert"
    assert (route.info.embeddings, route.info.chat) == (True, False)
    (tier,) = desired.tiers
    assert "--embedding-model /m/bert" in " ".join(tier.argv)
