"""Tiers on other machines (docs/multi-host.md): the gateway relays every route to the
peer gateway with the key, keeps the client's model name, never relays a relayed
request again, fails over to the tier's fallbacks, and lists the peers' tier states.

Two real gateways (the app under uvicorn in this event loop, as in
``test_gateway_families``) play two machines, A and B, on 127.0.0.1, in front of fake
tiers; a recording aiohttp app plays a peer whose requests and answers a test reads
or scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import uvicorn
from aiohttp import web

from mlxctl.gateway.app import Gateway, build_app
from mlxctl.gateway.peers import HOP_HEADER, PeerStates, read_states
from mlxctl.gateway.routing import RoutingTable, router_kwargs
from mlxctl.runtimes.gateway import GatewayConfig, ModelInfo, Route
from mlxctl.testing.fakes import FakeClock
from tests.unit.test_gateway_families import ASK, KEY, FakeTier, free_port, post, sse_events

DEADLINE = 10.0
MSG = [{"role": "user", "content": "hi"}]
AUTH = {"Authorization": f"Bearer {KEY}"}


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def local(name: str, tier: FakeTier, runtime: str = "mlx-lm", **kw: Any) -> Route:
    served = "big" if runtime == "vllm-mlx" else "default_model"
    return Route(name=name, port=tier.port, served_model=served, runtime=runtime, host="b", **kw)


def peer(name: str, url: str, host: str = "b", **kw: Any) -> Route:
    """What resolution writes on A for a tier on ``host`` (desired.resolve._peer_route)."""
    port = int(url.rsplit(":", 1)[1])
    return Route(name=name, port=port, served_model=name, max_concurrency=4096, host=host,
                 peer=url, **kw)  # fmt: skip


@contextlib.asynccontextmanager
async def gateway(*routes: Route, key: str = KEY, port: int = 0, **config: Any
                  ) -> AsyncIterator[tuple[str, Gateway]]:  # fmt: skip
    """A gateway app under uvicorn in this loop (one machine's), in front of ``routes``."""
    import socket

    the_gateway = Gateway(key, RoutingTable(GatewayConfig(routes=routes, **config)))
    server = uvicorn.Server(
        uvicorn.Config(build_app(the_gateway), log_level="warning", lifespan="off")
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", the_gateway
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, DEADLINE)
        sock.close()
        await the_gateway.aclose()


class FakePeer:
    """A peer gateway that records what it is sent and answers as scripted."""

    def __init__(
        self, answer: Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
    ):
        self.answer = answer
        self.seen: list[tuple[str, dict[str, str], dict[str, Any] | None]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> FakePeer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.method == "POST" else None
        self.seen.append((request.path, dict(request.headers), body))
        return await self.answer(request, body or {})


def test_every_route_reaches_the_tier_on_the_other_machine_with_the_clients_model_name() -> None:
    async def test() -> None:
        chat_tier = await FakeTier().start()
        native_tier = await FakeTier(native=True).start()
        on_b = (local("fast", chat_tier), local("big", native_tier, "vllm-mlx"))
        try:
            async with gateway(*on_b) as (b_url, b):
                on_a = (
                    peer("fast", b_url, aliases=("gpt-4o-mini", "claude-x")),
                    peer("big", b_url, runtime="vllm-mlx", aliases=("claude-big",)),
                )
                async with gateway(*on_a) as (a_url, a):
                    sdk = openai.AsyncOpenAI(api_key=KEY, base_url=f"{a_url}/v1", max_retries=0)
                    chat = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG)
                    stream = await sdk.chat.completions.create(
                        model="gpt-4o-mini", messages=MSG, stream=True
                    )
                    chunks = [c async for c in stream]
                    messages = await post(f"{a_url}/v1/messages", ASK)  # translated on A
                    streamed = await post(f"{a_url}/v1/messages", {**ASK, "stream": True})
                    native = await post(f"{a_url}/v1/messages", {**ASK, "model": "claude-big"})
                    responses = await post(f"{a_url}/v1/responses",
                                           {"model": "claude-big", "input": "hi"})  # fmt: skip
                    await sdk.close()
                    # A reported nothing of B's tiers: B's gateway holds and reports them.
                    assert a.demand.snapshot().tiers == {}
                    assert set(b.demand.snapshot().tiers) == {"fast", "big"}
        finally:
            await chat_tier.stop()
            await native_tier.stop()
        assert chat.model == "gpt-4o-mini" and chat.choices[0].message.content == "hello"
        assert {c.model for c in chunks} == {"gpt-4o-mini"}
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello"
        assert messages[0] == 200 and json.loads(messages[1])["model"] == "claude-x"
        assert sse_events(streamed[1])[0][1]["message"]["model"] == "claude-x"
        assert native[0] == 200 and json.loads(native[1])["content"][0]["text"] == "native"
        assert json.loads(native[1])["model"] == "claude-big"
        assert json.loads(responses[1])["model"] == "claude-big"
        # B's tiers saw their own served names; B relayed the native routes as they came.
        assert {body["model"] for _, body in chat_tier.seen} == {"default_model"}
        assert [path for path, _ in native_tier.seen] == ["/v1/messages", "/v1/responses"]

    run(test)


def test_the_peer_gets_the_key_and_the_hop_mark_never_loopback_and_embeddings_go_too() -> None:
    async def ok(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if request.path == "/v1/embeddings":
            return web.json_response({"object": "list", "model": body["model"],
                                      "data": [{"embedding": [0.5], "index": 0}]})  # fmt: skip
        return web.json_response({"model": body["model"], "choices": [{"index": 0}]},
                                 headers={"x-mlxctl-tier": "small"})  # fmt: skip

    async def test() -> None:
        fake = await FakePeer(ok).start()
        embed_info = ModelInfo(embeddings=True, chat=False)
        routes = (peer("fast", fake.url, aliases=("gpt-4o-mini",)),
                  peer("vectors", fake.url, info=embed_info))  # fmt: skip
        try:
            async with gateway(*routes) as (a_url, _):
                status, body, headers = await post(
                    f"{a_url}/v1/chat/completions",
                    {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 100000},
                    headers=AUTH,
                )
                vectors = await post(f"{a_url}/v1/embeddings",
                                     {"model": "vectors", "input": "x"}, headers=AUTH)  # fmt: skip
                text = await post(f"{a_url}/v1/completions",
                                  {"model": "fast", "prompt": "x"}, headers=AUTH)  # fmt: skip
        finally:
            await fake.stop()
        assert status == 200 and json.loads(body)["model"] == "gpt-4o-mini"
        # Who answered at the peer (a fallback there) is what the client reads.
        assert headers["x-mlxctl-tier"] == "small"
        path, sent_headers, sent = fake.seen[0]
        assert path == "/v1/chat/completions"
        assert sent_headers["Authorization"] == f"Bearer {KEY}"
        assert sent_headers[HOP_HEADER] == "1"
        # The tier's name (its machine resolves it); its limits are that machine's to check.
        assert sent == {"model": "fast", "messages": MSG, "max_tokens": 100000}
        assert vectors[0] == 200 and json.loads(vectors[1])["model"] == "vectors"
        assert fake.seen[1][0] == "/v1/embeddings"
        assert text[0] == 200 and fake.seen[2][0] == "/v1/completions"

    run(test)


def test_a_relayed_request_is_never_relayed_again() -> None:
    async def test() -> None:
        route = peer("fast", f"http://127.0.0.1:{free_port()}", host="c")
        async with gateway(route) as (url, _):
            hop = {**AUTH, HOP_HEADER: "1"}
            chat = await post(f"{url}/v1/chat/completions",
                              {"model": "fast", "messages": MSG}, headers=hop)  # fmt: skip
            messages = await post(f"{url}/v1/messages", ASK | {"model": "fast"}, headers=hop)
            listed = await post_get(f"{url}/v1/models", hop)
        assert chat[0] == 508
        error = json.loads(chat[1])["error"]
        assert error["code"] == "hop_refused"
        assert "is served by host 'c' (http://127.0.0.1:" in error["message"]
        assert messages[0] == 508 and json.loads(messages[1])["type"] == "error"
        # Asked by a peer, a gateway asks no other machine for its states.
        [model] = json.loads(listed)["data"]
        assert (model["host"], model["state"]) == ("c", "unknown")

    run(test)


async def post_get(url: str, headers: dict[str, str]) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200
        return await resp.read()


def test_the_router_of_a_relayed_request_knows_only_this_machines_tiers() -> None:
    config = GatewayConfig(
        routes=(Route(name="fast", port=1, served_model="m"),
                peer("big", "http://10.0.0.2:4000", host="studio")),
        fallbacks={"fast": ("big",), "big": ("fast",)},
    )  # fmt: skip
    client = router_kwargs(config, {}, key="sk-k")
    by_name = {d["model_name"]: d["litellm_params"] for d in client["model_list"]}
    assert by_name["big"]["api_base"] == "http://10.0.0.2:4000/v1"
    assert by_name["big"]["api_key"] == "sk-k"
    assert by_name["big"]["extra_headers"] == {HOP_HEADER: "1"}
    assert by_name["fast"]["api_base"] == "http://127.0.0.1:1/v1"
    assert client["fallbacks"] == [{"fast": ["big"]}, {"big": ["fast"]}]
    relayed = router_kwargs(config, {}, key="sk-k", hop=True)
    assert [d["model_name"] for d in relayed["model_list"]] == ["fast"]
    assert relayed["fallbacks"] == []
    # Without hosts, nothing changes.
    plain = GatewayConfig(routes=(Route(name="fast", port=1, served_model="m"),))
    assert router_kwargs(plain, {}, hop=True) == router_kwargs(plain, {})


def test_a_tier_whose_machine_cannot_serve_it_falls_back_on_this_machine() -> None:
    """B's tier is dead (its port refuses): B, asked by A, does not relay to A again; A
    walks the tier's fallbacks and its own tier answers."""

    async def test() -> None:
        mine = await FakeTier().start()
        dead = free_port()
        try:
            a_port = free_port()
            a_url = f"http://127.0.0.1:{a_port}"
            on_b = (Route(name="big", port=dead, served_model="default_model", host="b"),
                    peer("small", a_url, host="a"))  # fmt: skip
            fallbacks = {"big": ("small",)}
            async with gateway(*on_b, fallbacks=fallbacks) as (b_url, _):
                on_a = (peer("big", b_url), local("small", mine))
                async with gateway(*on_a, port=a_port, fallbacks=fallbacks) as (url, _):
                    sdk = openai.AsyncOpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0)
                    raw = await sdk.chat.completions.with_raw_response.create(
                        model="big", messages=MSG
                    )
                    await sdk.close()
        finally:
            await mine.stop()
        answer = raw.parse()
        assert answer.model == "big" and answer.choices[0].message.content == "hello"
        assert raw.headers["x-mlxctl-tier"] == "small"
        assert len(mine.seen) == 1  # B never sent it back to A

    run(test)


def test_a_relayed_request_for_a_dead_tier_whose_fallbacks_are_elsewhere_fails_at_once() -> None:
    """B is asked by A (the hop mark) for its tier, which refuses: B does not retry it
    (through its Router or its fast path, while the tier restarts), it answers 503 at
    once, and A walks the tier's fallbacks on the other machines."""

    async def test() -> None:
        dead = free_port()
        on_b = (Route(name="big", port=dead, served_model="default_model", host="b"),
                peer("small", f"http://127.0.0.1:{free_port()}", host="a"))  # fmt: skip
        async with gateway(*on_b, fallbacks={"big": ("small",)}, retries=10) as (b_url, b):
            async with aiohttp.ClientSession() as session:
                resp = await session.post(
                    f"{b_url}/v1/chat/completions",
                    json={"model": "big", "messages": MSG},
                    headers={**AUTH, HOP_HEADER: "1"},
                )
                body = await resp.json()
            assert resp.status == 503, body
            assert body["error"]["message"] == (
                "tier 'big' did not answer; its fallbacks are on other machines"
            )
            assert resp.headers["Retry-After"] == "15"
            assert b.table._router is None and b.table._hop_router is None  # no retry via Router

    run(test)


def test_a_machine_that_is_down_or_refuses_the_key_is_named_in_the_error() -> None:
    async def test() -> None:
        tier = await FakeTier().start()
        down = f"http://127.0.0.1:{free_port()}"
        try:
            async with gateway(local("fast", tier), key="sk-other") as (b_url, _):
                routes = (peer("fast", b_url), peer("gone", down, host="c"))
                async with gateway(*routes) as (url, a):
                    ask = {"model": "fast", "messages": MSG}
                    wrong_key = await post(f"{url}/v1/chat/completions", ask, headers=AUTH)
                    refused = await post(f"{url}/v1/messages", ASK | {"model": "gone"})
                    streamed = await post(f"{url}/v1/chat/completions",
                                          {"model": "gone", "messages": MSG, "stream": True},
                                          headers=AUTH)  # fmt: skip
                    scraped = (await post_get(f"{url}/metrics", AUTH)).decode()
        finally:
            await tier.stop()
        assert wrong_key[0] == 502
        message = json.loads(wrong_key[1])["error"]["message"]
        assert f"host 'b' ({b_url}), which refused this gateway's key" in message
        assert refused[0] == 502
        error = json.loads(refused[1])  # the Messages family's own shape
        assert error["type"] == "error"
        assert f"host 'c' ({down}), which could not be reached (" in error["error"]["message"]
        assert streamed[0] == 502
        assert 'mlxctl_gateway_peer_failures_total{host="c",reason="refused"} 2.0' in scraped
        assert 'mlxctl_gateway_tier_host{host="b",tier="fast"} 1.0' in scraped
        assert 'mlxctl_gateway_tier_state{state="elsewhere",tier="gone"} 1.0' in scraped
        assert a.peer_counts.load("fast").in_flight == 0

    run(test)


def test_a_peers_own_error_answers_pass_with_its_host_and_its_retry_after() -> None:
    async def busy(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if body.get("max_tokens") == 1:  # the request's own fault: the client's answer
            return web.json_response({"error": {"message": "bad", "code": "x"}}, status=400)
        error = {"error": {"message": "tier 'fast' is busy", "code": "queue_full"}}
        return web.json_response(error, status=503, headers={"Retry-After": "7"})

    async def test() -> None:
        fake = await FakePeer(busy).start()
        try:
            async with gateway(peer("fast", fake.url)) as (url, _):
                full = await post(f"{url}/v1/chat/completions",
                                  {"model": "fast", "messages": MSG}, headers=AUTH)  # fmt: skip
                bad = await post(f"{url}/v1/chat/completions",
                                 {"model": "fast", "messages": MSG, "max_tokens": 1},
                                 headers=AUTH)  # fmt: skip
        finally:
            await fake.stop()
        assert full[0] == 503 and full[2]["Retry-After"] == "7"
        error = json.loads(full[1])["error"]
        assert error["code"] == "queue_full"
        assert error["message"] == f"tier 'fast' on host 'b' ({fake.url}): tier 'fast' is busy"
        assert bad[0] == 400 and json.loads(bad[1])["error"]["message"] == "bad"

    run(test)


def test_models_lists_every_tier_with_its_host_and_the_peers_state() -> None:
    async def test() -> None:
        tier = await FakeTier().start()
        down = f"http://127.0.0.1:{free_port()}"
        try:
            on_b = (local("fast", tier, on_demand=True, hold=5.0,
                          info=ModelInfo(context_length=4096, tools=True)),)  # fmt: skip
            async with gateway(*on_b) as (b_url, _):
                on_a = (
                    Route(name="mine", port=1, served_model="m", host="a"),
                    peer("fast", b_url, aliases=("gpt-4o-mini",)),
                    peer("gone", down, host="c"),
                )
                async with gateway(*on_a) as (url, _):
                    listed = json.loads(await post_get(f"{url}/v1/models", AUTH))
                    one = json.loads(await post_get(f"{url}/v1/models/gpt-4o-mini", AUTH))
        finally:
            await tier.stop()
        by_id = {m["id"]: m for m in listed["data"]}
        assert (by_id["mine"]["host"], by_id["mine"]["state"]) == ("a", "loaded")
        fast = by_id["fast"]
        # B says: no controller verdict yet, on-demand, 4096 tokens, tools.
        assert (fast["host"], fast["state"], fast["load"]) == ("b", "unknown", "on-demand")
        assert fast["context_length"] == 4096 and fast["capabilities"]["tools"] is True
        assert by_id["gpt-4o-mini"]["state"] == "unknown" and one["host"] == "b"
        gone = by_id["gone"]
        assert (gone["host"], gone["state"]) == ("c", "unreachable")
        assert gone["state_detail"].startswith(f"host 'c' ({down}) did not answer: it could not")

    run(test)


def test_a_peers_models_answer_is_untrusted_bounded_and_cached() -> None:
    body = json.dumps({"data": [
        {"id": "fast", "tier": "fast", "state": "loaded", "state_detail": "x" * 5000,
         "context_length": True, "capabilities": {"tools": "yes", "vision": True, "evil": True},
         "load": "sometimes"},
        {"id": "alias", "tier": "fast", "state": "unavailable"},
        {"id": "other", "tier": "other", "state": "loaded"},
        {"id": "slow", "tier": "slow", "state": "<script>"},
        "junk",
    ]}).encode()  # fmt: skip
    states = read_states(body, ["fast", "slow"])
    assert set(states) == {"fast", "slow"}
    fast = states["fast"]
    assert fast.state == "loaded" and len(fast.detail) == 300
    assert fast.context_length is None and fast.load is None
    assert dict(fast.capabilities) == {"vision": True}
    assert states["slow"].state == "unknown"

    calls: list[str] = []

    async def answer(request: web.Request, _: dict[str, Any]) -> web.StreamResponse:
        calls.append(request.path)
        if len(calls) == 1:
            return web.Response(body=b"{" * (2 << 20), content_type="application/json")
        return web.json_response({"data": [{"id": "fast", "tier": "fast", "state": "loaded"}]})

    async def test() -> None:
        fake = await FakePeer(answer).start()
        clock = FakeClock()
        cache = PeerStates(clock)
        routes = [peer("fast", fake.url)]
        try:
            async with aiohttp.ClientSession() as session:
                huge = await cache.states(session, routes, KEY)
                again = await cache.states(session, routes, KEY)  # within the TTL: cached
                clock.advance(3.0)
                fresh = await cache.states(session, routes, KEY)
        finally:
            await fake.stop()
        assert "over 1048576 bytes" in getattr(huge["fast"], "why", "")
        assert again == huge and len(calls) == 2
        assert getattr(fresh["fast"], "state", None) == "loaded"

    run(test)
