"""The fast path against scripted backends on 127.0.0.1: what the client gets when a tier
answers, dies mid-stream, never answers, fails with a 5xx or is not listening yet.

The backends are small asyncio servers that speak just enough HTTP/1.1 to misbehave on
cue (a model server cannot be made to die half-way through a chunk on demand).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import StreamingResponse

from mlxctl.gateway.app import Gateway
from mlxctl.gateway.requests import check_request
from mlxctl.gateway.routing import RoutingTable
from mlxctl.runtimes.gateway import GatewayConfig, Route

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]
MSG = [{"role": "user", "content": "hi"}]


def event(content: str) -> bytes:
    chunk = {"model": "default_model", "choices": [{"delta": {"content": content}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_request(reader: asyncio.StreamReader) -> dict[str, Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return dict(json.loads(await reader.readexactly(length)))


async def serve(script: Script, seen: list[dict[str, Any]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await read_request(reader))
            await script(writer)
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def gateway_for(port: int, **config: Any) -> tuple[Gateway, RoutingTable]:
    route = Route(name="fast", port=port, served_model="default_model", aliases=("gpt-4o-mini",))
    table = RoutingTable(GatewayConfig(routes=(route,), **config))
    return Gateway("sk-test", table), table


async def answer(gateway: Gateway, table: RoutingTable, body: dict[str, Any]) -> tuple[int, bytes]:
    """What the client would receive, through :meth:`Gateway.handle` and the response."""
    checked = check_request(body, "chat")
    name = table.resolve(checked.model)
    assert name is not None
    response = await gateway.handle(table, name, checked, "chat")
    if isinstance(response, StreamingResponse):
        content = b"".join(
            [c if isinstance(c, bytes) else str(c).encode() async for c in response.body_iterator]
        )
    else:
        content = bytes(response.body)
    return response.status_code, content


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_an_answer_is_relayed_with_the_clients_model_and_the_backend_sees_its_own() -> None:
    seen: list[dict[str, Any]] = []

    async def ok(writer: asyncio.StreamWriter) -> None:
        body = json.dumps({"model": "default_model", "choices": [{"index": 0}]}).encode()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    async def test() -> None:
        server = await serve(ok, seen)
        gateway, table = gateway_for(server.sockets[0].getsockname()[1])
        try:
            body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 1}
            status, content = await answer(gateway, table, body)
        finally:
            await gateway.aclose()
            server.close()
        assert status == 200
        assert json.loads(content) == {"model": "gpt-4o-mini", "choices": [{"index": 0}]}
        assert seen == [{"messages": MSG, "max_tokens": 1, "model": "default_model"}]
        assert gateway.requests_done == 1

    run(test)


def test_a_tier_that_dies_mid_stream_ends_the_stream_with_an_in_band_error() -> None:
    async def dies(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        # One whole event, then half of the next, then the connection drops.
        writer.write(chunked(event("one") + event("two")[:15]))
        await writer.drain()
        await asyncio.sleep(0.05)

    async def test() -> None:
        server = await serve(dies, [])
        gateway, table = gateway_for(server.sockets[0].getsockname()[1])
        try:
            body = {"model": "fast", "messages": MSG, "stream": True}
            status, content = await answer(gateway, table, body)
        finally:
            await gateway.aclose()
            server.close()
        assert status == 200
        events = [json.loads(e[len(b"data: ") :]) for e in content.split(b"\n\n") if e]
        assert events[0]["model"] == "fast"
        assert events[0]["choices"][0]["delta"]["content"] == "one"
        # The half event is dropped, not glued to the error.
        assert len(events) == 2 and events[1]["error"]["code"] == "backend_error"
        assert "mid-stream" in events[1]["error"]["message"]
        assert gateway.requests_done == 1  # the gate opened when the stream ended

    run(test)


def test_a_tier_that_never_answers_is_a_504_after_the_timeout() -> None:
    async def hangs(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def test() -> None:
        server = await serve(hangs, [])
        gateway, table = gateway_for(server.sockets[0].getsockname()[1], timeout=0.3)
        try:
            status, content = await answer(gateway, table, {"model": "fast", "messages": MSG})
        finally:
            await gateway.aclose()
            server.close()
        assert status == 504 and json.loads(content)["error"]["code"] == "timeout"

    run(test)


def test_a_5xx_is_not_relayed_it_goes_to_the_router() -> None:
    async def fails(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")

    async def test() -> None:
        server = await serve(fails, [])
        gateway, table = gateway_for(server.sockets[0].getsockname()[1])
        route = table.config.routes[0]
        checked = check_request({"model": "fast", "messages": MSG}, "chat")
        try:
            relayed = await gateway._relay(table, route, checked, "chat", lambda: None)
        finally:
            await gateway.aclose()
            server.close()
        assert relayed is None

    run(test)


def test_a_tier_that_starts_listening_late_is_waited_for() -> None:
    async def ok(writer: asyncio.StreamWriter) -> None:
        body = b'{"model": "default_model"}'
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with socket.socket() as probe:  # a port nothing listens on (yet)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def test() -> None:
        gateway, table = gateway_for(port, hold=10.0)
        asking = asyncio.ensure_future(answer(gateway, table, {"model": "fast", "messages": MSG}))
        await asyncio.sleep(0.4)
        assert not asking.done()  # held: the connection is refused
        server = await asyncio.start_server(lambda r, w: _answer_once(r, w, ok), "127.0.0.1", port)
        try:
            status, content = await asyncio.wait_for(asking, 10)
        finally:
            await gateway.aclose()
            server.close()
        assert (status, json.loads(content)) == (200, {"model": "fast"})

    run(test)


async def _answer_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script
) -> None:
    try:
        await read_request(reader)
        await script(writer)
    finally:
        writer.close()


def test_only_fallbacks_or_a_disabled_fast_path_need_the_router() -> None:
    route = Route(name="fast", port=1, served_model="default_model")
    other = Route(name="standard", port=2, served_model="default_model")

    def table(**config: Any) -> RoutingTable:
        return RoutingTable(GatewayConfig(routes=(route, other), **config))

    assert not table().needs_router  # LiteLLM is never imported for these routes
    assert not table(retries=3).needs_router
    assert table(fallbacks={"fast": ("standard",)}).needs_router
    assert table(fast_path=False).needs_router


def test_a_tier_without_fallbacks_is_asked_again_by_the_fast_path_not_the_router() -> None:
    """The Router would only retry it (it walks fallbacks, and there are none): the fast
    path does that itself, so LiteLLM is not loaded for it."""
    replies = [b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"]
    body = b'{"model": "default_model"}'
    replies.append(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    async def in_turn(writer: asyncio.StreamWriter) -> None:
        writer.write(replies.pop(0))

    async def test() -> None:
        seen: list[dict[str, Any]] = []
        server = await serve(in_turn, seen)
        gateway, table = gateway_for(server.sockets[0].getsockname()[1])
        try:
            status, content = await answer(gateway, table, {"model": "fast", "messages": MSG})
        finally:
            await gateway.aclose()
            server.close()
        assert (status, json.loads(content)) == (200, {"model": "fast"})
        assert len(seen) == 2  # the fast path's attempt, then its retry (retries: 1)
        assert table._router is None  # no Router was built

    run(test)


def test_a_tier_without_fallbacks_that_keeps_failing_is_a_502_naming_the_attempts() -> None:
    async def fails(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 4\r\n\r\noops")

    async def test() -> None:
        seen: list[dict[str, Any]] = []
        server = await serve(fails, seen)
        gateway, table = gateway_for(server.sockets[0].getsockname()[1], retries=2)
        try:
            status, content = await answer(gateway, table, {"model": "fast", "messages": MSG})
        finally:
            await gateway.aclose()
            server.close()
        assert status == 502 and len(seen) == 3
        error = json.loads(content)["error"]
        assert error["message"] == "tier 'fast' did not answer (3 attempts)"
        assert error["code"] == "backend_unreachable"
        assert table._router is None

    run(test)
