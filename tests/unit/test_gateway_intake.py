"""Issue 18, rows 7, 8 and 10 through the gateway's real HTTP server (uvicorn, in this
process) in front of scripted backends: bodies too large, too slow, too deep; headers
trickled; a gate's queue with a deadline; clients that leave while queued or while the
tier works; the header naming who answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import uvicorn

from mlxctl.gateway import bounds
from mlxctl.gateway.app import TIER_HEADER, Gateway, _served_by, build_app
from mlxctl.gateway.intake import GuardedHttpTools
from mlxctl.gateway.routing import RoutingTable, router_kwargs
from mlxctl.runtimes.gateway import GatewayConfig, RemoteRoute, Route

KEY = "sk-test"
MSG = [{"role": "user", "content": "hi"}]
ANSWER = json.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": "x"}}]})


class Backend:
    """A tier that answers each request once ``release`` is set (or at once)."""

    def __init__(self, *, hold: bool = False) -> None:
        self.seen: list[dict[str, Any]] = []
        self.closed: list[bool] = []  # per request: the gateway closed it before the answer
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.seen.append(json.loads(await reader.readexactly(length)))
            eof = asyncio.ensure_future(reader.read(1))
            released = asyncio.ensure_future(self.release.wait())
            await asyncio.wait({eof, released}, return_when=asyncio.FIRST_COMPLETED)
            self.closed.append(eof.done() and eof.result() == b"")
            released.cancel()
            eof.cancel()
            body = ANSWER.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def gateway(port: int, **config: Any) -> AsyncIterator[tuple[int, Gateway]]:
    route = Route(name="fast", port=port, served_model="m", runtime="mlx-lm",
                  vocab_size=300, context=131072, vision=False, max_concurrency=1)  # fmt: skip
    gw = Gateway(KEY, RoutingTable(GatewayConfig(routes=(route,), **config)))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(gw), http=GuardedHttpTools, log_level="error", lifespan="off",
            timeout_keep_alive=30,
        )
    )  # fmt: skip
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1], gw
    finally:
        server.should_exit = True
        await gw.aclose()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


def request(body: bytes, *, length: int | None = None, path: str = "/v1/chat/completions") -> bytes:
    size = len(body) if length is None else length
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode() + body


async def exchange(
    port: int, data: bytes, *, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


def chat_body(**fields: Any) -> bytes:
    return json.dumps({"model": "fast", "messages": MSG, **fields}).encode()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


# -- row 8 --------------------------------------------------------------------------------


def test_a_body_larger_than_the_limit_is_413_before_it_is_sent() -> None:
    async def test() -> None:
        backend = Backend()
        async with gateway(await backend.start()) as (port, _):
            # Only the headers go out: the gateway answers without waiting for 50 MB.
            status, _, body = await exchange(port, request(b"", length=50 << 20), timeout=5)
        assert status == 413 and b"request_too_large" in body
        assert backend.seen == []

    run(test)


def test_a_body_shorter_than_its_content_length_is_408_after_the_read_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bounds, "BODY_READ_SECONDS", 0.5)

    async def test() -> None:
        backend = Backend()
        async with gateway(await backend.start()) as (port, _):
            data = request(chat_body(), length=len(chat_body()) + 100)
            status, _, body = await exchange(port, data, timeout=5)
            assert status == 408 and b"request_timeout" in body
            # Nothing was held: the tier's gate is free.
            status, _, _ = await exchange(port, request(chat_body()))
            assert status == 200
        assert len(backend.seen) == 1

    run(test)


def test_headers_trickled_forever_close_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GuardedHttpTools, "header_timeout", 0.3)

    async def test() -> None:
        backend = Backend()
        async with gateway(await backend.start()) as (port, _):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            # Closed by the gateway (EOF), long before a client would give up.
            assert await asyncio.wait_for(reader.read(), 3) == b""
            writer.close()

    run(test)


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000 + b"]" * 100_000, b'{"model": "fast", "temperature": NaN}'],
)
def test_a_deep_or_non_strict_body_is_a_json_400_not_a_500(raw: bytes) -> None:
    async def test() -> None:
        backend = Backend()
        async with gateway(await backend.start()) as (port, _):
            status, headers, body = await exchange(port, request(raw))
        assert status == 400 and headers["content-type"] == "application/json"
        assert json.loads(body)["error"]["code"] == "invalid_json"

    run(test)


def test_a_large_body_is_parsed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = bounds.parse_json

    def spy(data: bytes | str) -> Any:
        import threading

        threads.append(threading.current_thread().name)
        return real(data)

    monkeypatch.setattr("mlxctl.gateway.intake.parse_json", spy)

    async def test() -> None:
        backend = Backend()
        async with gateway(await backend.start()) as (port, _):
            big = [{"role": "user", "content": "x" * (bounds.PARSE_OFF_LOOP_BYTES + 10)}]
            status, _, _ = await exchange(port, request(chat_body(messages=big)))
            small_status, _, _ = await exchange(port, request(chat_body()))
        assert (status, small_status) == (200, 200)
        assert threads[0] != "MainThread" and threads[1] == "MainThread"

    run(test)


# -- row 7 --------------------------------------------------------------------------------


def test_a_request_waiting_past_the_queue_deadline_is_503_with_retry_after() -> None:
    async def test() -> None:
        backend = Backend(hold=True)
        async with gateway(await backend.start(), queue_timeout=0.3) as (port, _):
            first = asyncio.ensure_future(exchange(port, request(chat_body())))
            await asyncio.sleep(0.2)
            status, headers, body = await exchange(port, request(chat_body()))
            assert status == 503 and headers["retry-after"] == "1"
            assert json.loads(body)["error"]["code"] == "queue_timeout"
            backend.release.set()
            assert (await first)[0] == 200
        assert len(backend.seen) == 1  # the refused one never reached the tier

    run(test)


def test_a_client_that_leaves_while_queued_frees_its_place_and_is_never_sent() -> None:
    async def test() -> None:
        backend = Backend(hold=True)
        async with gateway(await backend.start()) as (port, gw):
            first = asyncio.ensure_future(exchange(port, request(chat_body())))
            await asyncio.sleep(0.2)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request(chat_body(max_tokens=7)))
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()  # leaves while queued behind the first
            await asyncio.sleep(0.2)
            backend.release.set()
            assert (await first)[0] == 200
            status, _, _ = await exchange(port, request(chat_body()))
            assert status == 200
            load = gw.demand.snapshot().tiers["fast"]
            assert (load.waiting, load.in_flight) == (0, 0)
        assert [b.get("max_tokens") for b in backend.seen] == [None, None]

    run(test)


def test_a_client_that_leaves_while_the_tier_works_closes_the_upstream_request() -> None:
    async def test() -> None:
        backend = Backend(hold=True)
        async with gateway(await backend.start()) as (port, _):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request(chat_body()))
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.close()  # the client gives up while the tier generates
            for _ in range(50):
                if backend.closed:
                    break
                await asyncio.sleep(0.05)
            assert backend.closed == [True]  # the gateway closed its request to the tier
            backend.release.set()
            # The gate (one slot) is free again.
            status, _, _ = await exchange(port, request(chat_body()))
            assert status == 200

    run(test)


# -- row 10 -------------------------------------------------------------------------------


def test_the_answer_names_the_tier_that_served_it_and_a_404_does_not_echo_the_name() -> None:
    async def test() -> None:
        backend = Backend()
        async with gateway(await backend.start()) as (port, _):
            status, headers, _ = await exchange(port, request(chat_body()))
            assert status == 200 and headers[TIER_HEADER] == "fast"
            huge = json.dumps({"model": "m" * 1_000_000, "messages": MSG}).encode()
            status, _, body = await exchange(port, request(huge))
        assert status == 400 and len(body) < 500

    run(test)


def test_the_router_names_each_deployment_so_a_fallback_answer_names_its_tier() -> None:
    config = GatewayConfig(
        routes=(Route(name="fast", port=1, served_model="m"),),
        remotes=(RemoteRoute(name="cloud", model="openai/x"),),
    )
    ids = {d["model_name"]: d["model_info"]["id"] for d in router_kwargs(config, {})["model_list"]}
    assert ids == {"fast": "fast", "cloud": "cloud"}

    class Answer:
        def __init__(self) -> None:
            self._hidden_params = {"model_id": "cloud"}

    assert _served_by(Answer(), "fast") == "cloud"
    assert _served_by(object(), "fast") == "fast"
