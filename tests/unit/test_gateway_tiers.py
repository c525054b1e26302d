"""A tier's capacity, its "busy", its errors and its broken streams, against scripted
backends on 127.0.0.1 (each backend misbehaves on cue as a real runtime was seen to)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mlxctl.gateway.app import _sse
from mlxctl.gateway.backend_errors import classify, clean, router_error
from mlxctl.gateway.capacity import Waiting
from mlxctl.gateway.routing import RoutingTable, deployment
from mlxctl.gateway.streams import says_something
from mlxctl.runtimes.gateway import GatewayConfig, Route
from tests.unit.test_gateway_relay import MSG, answer, chunked, event, read_request, run

BUSY_BODY = json.dumps(
    {
        "detail": {
            "error": "text_generation_busy",
            "message": "SimpleEngine serialized route is busy; request_id=chatcmpl-abc; "
            "active=chatcmpl-xyz:running:chat:prompt=812:completion=77:elapsed_s=3.1; "
            "waiters=0; retry later",
        }
    }
).encode()
OK_BODY = json.dumps({"model": "agent", "choices": [{"index": 0, "finish_reason": "stop"}]})
# A whole completion, as LiteLLM's OpenAI adapter wants one.
FULL_BODY = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "default_model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Paris"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)


def reply(status: int, body: bytes, media: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {media}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


def stream_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )


def role_event() -> bytes:
    chunk = {"model": "agent", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def finish_event() -> bytes:
    chunk = {"model": "agent", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class Backend:
    """A scripted tier: each connection gets the next script (the last one repeats);
    it records the requests, their headers, and how many ran at once."""

    def __init__(self, *scripts: Any) -> None:
        self.scripts = list(scripts)
        self.seen: list[dict[str, Any]] = []
        self.headers: list[bytes] = []
        self.running = 0
        self.most = 0
        self.closed: list[bool] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        script = self.scripts.pop(0) if len(self.scripts) > 1 else self.scripts[0]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.headers.append(head)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.seen.append(json.loads(await reader.readexactly(length)))
            await script(reader, writer)
        finally:
            self.running -= 1
            writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


def answers(data: bytes) -> Any:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return script


def slowly(data: bytes, seconds: float) -> Any:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(seconds)
        writer.write(data)
        await writer.drain()

    return script


def setup(port: int, runtime: str = "vllm-mlx", **route: Any) -> tuple[Any, RoutingTable]:
    from mlxctl.gateway.app import Gateway

    config = route.pop("config", {})
    tier = Route(name="agent", port=port, served_model="agent", runtime=runtime, **route)
    table = RoutingTable(GatewayConfig(routes=(tier,), **config))
    return Gateway("sk-test", table), table


def data_events(content: bytes) -> list[Any]:
    out = []
    for block in content.split(b"\n\n"):
        if block.startswith(b"data: "):
            raw = block[6:]
            out.append(raw.decode() if raw == b"[DONE]" else json.loads(raw))
    return out


# -- a tier's "busy" is never relayed -----------------------------------------------------


def test_a_busy_answer_is_asked_again_not_relayed_as_a_502() -> None:
    backend = Backend(answers(reply(503, BUSY_BODY)), answers(reply(200, OK_BODY.encode())))

    async def test() -> None:
        gateway, table = setup(await backend.start())
        try:
            status, content = await answer(gateway, table, {"model": "agent", "messages": MSG})
        finally:
            await gateway.aclose()
            backend.close()
        assert status == 200, content
        assert json.loads(content)["choices"][0]["finish_reason"] == "stop"
        assert len(backend.seen) == 2

    run(test)


def test_a_busy_stream_is_asked_again_and_the_client_sees_one_whole_stream() -> None:
    """vllm-mlx's simple engine answers a stream it cannot serve with 200, a role chunk,
    and a clean close: that must not reach the client as an empty success."""
    busy = stream_head() + chunked(role_event()) + b"0\r\n\r\n"
    whole = role_event() + event("Paris") + finish_event() + b"data: [DONE]\n\n"
    end = b"0\r\n\r\n"
    backend = Backend(answers(busy), answers(busy), answers(stream_head() + chunked(whole) + end))

    async def test() -> None:
        gateway, table = setup(await backend.start())
        try:
            body = {"model": "agent", "messages": MSG, "stream": True}
            status, content = await answer(gateway, table, body)
        finally:
            await gateway.aclose()
            backend.close()
        assert status == 200
        events = data_events(content)
        assert events[-1] == "[DONE]"
        assert [e["choices"][0]["delta"].get("role") for e in events[:-1]].count("assistant") == 1
        assert any(e["choices"][0]["delta"].get("content") == "Paris" for e in events[:-1])
        assert len(backend.seen) == 3

    run(test)


def test_a_tier_busy_past_the_hold_is_a_503_with_retry_after() -> None:
    backend = Backend(answers(reply(503, BUSY_BODY)))

    async def test() -> None:
        gateway, table = setup(await backend.start(), config={"hold": 0.3})
        try:
            response = await gateway.handle(
                table, "agent", _checked({"model": "agent", "messages": MSG}), "chat"
            )
        finally:
            await gateway.aclose()
            backend.close()
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        error = json.loads(bytes(response.body))["error"]
        assert error["code"] == "tier_busy"
        # Nothing of the backend's busy text: no request ids, no token counts.
        assert "chatcmpl" not in error["message"] and "prompt" not in error["message"]
        assert len(backend.seen) > 2

    run(test)


# -- capacity and the bounded queue --------------------------------------------------------


def test_a_one_slot_tier_gets_one_request_at_a_time_and_every_client_an_answer() -> None:
    backend = Backend(slowly(reply(200, OK_BODY.encode()), 0.05))

    async def test() -> None:
        gateway, table = setup(await backend.start(), max_concurrency=1)
        try:
            body = {"model": "agent", "messages": MSG}
            results = await asyncio.gather(*(answer(gateway, table, body) for _ in range(8)))
        finally:
            await gateway.aclose()
            backend.close()
        assert [status for status, _ in results] == [200] * 8
        assert backend.most == 1

    run(test)


def test_a_full_queue_is_a_503_with_retry_after_at_once() -> None:
    backend = Backend(slowly(reply(200, OK_BODY.encode()), 0.5))

    async def test() -> None:
        gateway, table = setup(await backend.start(), max_concurrency=1, max_waiting=2)
        checked = _checked({"model": "agent", "messages": MSG})
        try:
            tasks = [
                asyncio.ensure_future(gateway.handle(table, "agent", checked, "chat"))
                for _ in range(3)
            ]
            await asyncio.sleep(0.1)  # one sent, two waiting
            refused = await asyncio.wait_for(gateway.handle(table, "agent", checked, "chat"), 0.2)
            served = await asyncio.gather(*tasks)
        finally:
            await gateway.aclose()
            backend.close()
        assert refused.status_code == 503
        assert json.loads(bytes(refused.body))["error"]["code"] == "queue_full"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert [r.status_code for r in served] == [200] * 3
        assert table.gates["agent"].waiting.count == 0

    run(test)


def test_retry_after_grows_with_the_queue_and_the_time_a_request_takes() -> None:
    waiting = Waiting(count=0, mean_seconds=2.0)
    assert waiting.retry_after(1) == 2
    waiting.count = 9
    assert waiting.retry_after(1) == 20 and waiting.retry_after(4) == 5
    waiting.count = 10_000
    assert waiting.retry_after(1) == 60


def test_a_client_that_leaves_while_queued_never_reaches_the_tier() -> None:
    backend = Backend(slowly(reply(200, OK_BODY.encode()), 0.4))

    async def test() -> None:
        gateway, table = setup(await backend.start(), max_concurrency=1)
        checked = _checked({"model": "agent", "messages": MSG})
        left = asyncio.Event()

        async def gone() -> None:
            await left.wait()

        try:
            first = asyncio.ensure_future(gateway.handle(table, "agent", checked, "chat"))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(
                gateway.handle(table, "agent", checked, "chat", gone=gone)
            )
            await asyncio.sleep(0.05)
            left.set()
            dropped = await asyncio.wait_for(second, 1)
            assert (await first).status_code == 200
        finally:
            await gateway.aclose()
            backend.close()
        assert dropped.status_code == 499
        assert len(backend.seen) == 1
        assert table.gates["agent"].waiting.count == 0

    run(test)


def test_a_client_that_leaves_closes_its_request_to_the_tier_at_once() -> None:
    closed = asyncio.Event()

    async def hangs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # returns when the gateway closes the connection
        closed.set()

    backend = Backend(hangs)

    async def test() -> None:
        gateway, table = setup(await backend.start())
        checked = _checked({"model": "agent", "messages": MSG})
        left = asyncio.Event()

        async def gone() -> None:
            await left.wait()

        try:
            task = asyncio.ensure_future(gateway.handle(table, "agent", checked, "chat", gone=gone))
            await asyncio.sleep(0.1)
            left.set()
            response = await asyncio.wait_for(task, 1)
            await asyncio.wait_for(closed.wait(), 1)
        finally:
            await gateway.aclose()
            backend.close()
        assert response.status_code == 499
        assert table.gates["agent"].semaphore._value == 4  # the turn was given back

    run(test)


# -- streams end so the SDK can tell ---------------------------------------------------------


def test_a_stream_the_tier_ends_without_done_ends_with_an_error_event() -> None:
    """mlx_lm.server speaks HTTP/1.0: killed mid-stream, its stream just ends."""
    cut = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + event("one")
    backend = Backend(answers(cut))

    async def test() -> None:
        gateway, table = setup(await backend.start(), runtime="mlx-lm")
        try:
            body = {"model": "agent", "messages": MSG, "stream": True}
            status, content = await answer(gateway, table, body)
        finally:
            await gateway.aclose()
            backend.close()
        assert status == 200
        events = data_events(content)
        assert events[0]["choices"][0]["delta"]["content"] == "one"
        assert "error" in events[-1] and events[-1]["error"]["code"] == "backend_error"
        assert "[DONE]" not in events

    run(test)


def test_a_stream_with_nothing_but_a_role_from_mlx_lm_goes_to_the_router_not_the_client() -> None:
    from mlxctl.gateway.app import Gateway

    cut = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + role_event()
    backend = Backend(answers(cut))

    async def test() -> None:
        gateway, table = setup(await backend.start(), runtime="mlx-lm")
        route = table.config.routes[0]
        checked = _checked({"model": "agent", "messages": MSG, "stream": True})
        try:
            relayed = await Gateway._relay(gateway, table, route, checked, "chat", lambda: None)
        finally:
            await gateway.aclose()
            backend.close()
        assert relayed is None

    run(test)


def test_a_router_stream_without_a_finish_reason_is_an_error_not_done() -> None:
    class Chunk:
        choices: tuple[Any, ...] = ()

        def model_dump(self, exclude_none: bool = True) -> dict[str, Any]:
            return {"choices": []}

    async def empty() -> AsyncIterator[Chunk]:
        yield Chunk()

    async def collect() -> list[bytes]:
        return [c async for c in _sse(empty(), "agent", lambda: None)]

    out = asyncio.run(collect())
    assert b"[DONE]" not in b"".join(out)
    assert json.loads(out[-1][6:])["error"]["code"] == "backend_error"


def test_role_only_and_comment_events_say_nothing_content_and_done_do() -> None:
    assert not says_something(role_event()[6:].strip())
    assert says_something(b"[DONE]")
    assert says_something(event("x")[6:].strip())
    assert says_something(finish_event()[6:].strip())
    assert says_something(b'{"error": {"message": "x"}}')


# -- errors in OpenAI's shape ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "status", "body", "kind", "client_status", "param"),
    [
        ("vllm-mlx", 503, BUSY_BODY, "busy", 503, None),
        (
            "vllm-mlx",
            422,
            b'{"detail":[{"type":"string_type","loc":["body","stop"],"msg":"Input should be a'
            b' valid string","input":123}]}',
            "error",
            400,
            "stop",
        ),
        ("vllm-mlx", 400, b'{"detail":"max_tokens is too large"}', "error", 400, None),
        ("vllm-mlx", 500, b'{"detail":"Generation failed"}', "error", 500, None),
        ("vllm-mlx", 503, b'{"detail":"Model not loaded"}', "failed", 503, None),
        ("mlx-lm", 404, b'{"error": "generation thread died"}', "failed", 503, None),
        ("mlx-lm", 404, b'{"error": "min_p must be a float between 0 and 1"}', "error", 400, None),
        ("mlx-lm", 404, b'{"error": "[metal::malloc] Unable to allocate"}', "error", 500, None),
        ("mlx-lm", 400, b'{"error": "Invalid JSON in request body"}', "error", 400, None),
        ("mlx-lm", 502, b"<html>bad gateway</html>", "failed", 502, None),
        ("vllm-mlx", 401, b'{"detail":"Invalid API key"}', "failed", 502, None),
    ],
)
def test_each_runtime_error_maps_to_one_openai_error(
    runtime: str, status: int, body: bytes, kind: str, client_status: int, param: str | None
) -> None:
    verdict = classify(runtime, status, body)
    assert (verdict.kind, verdict.status, verdict.param) == (kind, client_status, param)
    shaped = verdict.body()["error"]
    assert set(shaped) == {"message", "type", "param", "code"}
    assert shaped["type"] == ("invalid_request_error" if client_status < 500 else "server_error")
    assert "\n" not in shaped["message"] and len(shaped["message"]) <= 300


def test_messages_lose_request_ids_and_token_counts() -> None:
    text = clean("busy; request_id=chatcmpl-1; active=x:prompt=9:completion=3; retry later")
    assert "chatcmpl" not in text and "prompt=" not in text and "completion=" not in text


def test_a_422_through_the_gateway_is_a_400_naming_the_field_sent_once() -> None:
    body = b'{"detail":[{"type":"x","loc":["body","stop"],"msg":"Input should be a valid string"}]}'
    backend = Backend(answers(reply(422, body)))

    async def test() -> None:
        gateway, table = setup(await backend.start())
        try:
            status, content = await answer(gateway, table, {"model": "agent", "messages": MSG})
        finally:
            await gateway.aclose()
            backend.close()
        error = json.loads(content)["error"]
        assert status == 400 and error["param"] == "stop"
        assert error["message"] == "invalid request: stop: Input should be a valid string"
        assert len(backend.seen) == 1

    run(test)


def test_a_deterministic_500_is_answered_once_never_retried_by_the_router() -> None:
    backend = Backend(answers(reply(500, b'{"detail":"Generation failed"}')))

    async def test() -> None:
        gateway, table = setup(await backend.start())
        try:
            status, content = await answer(gateway, table, {"model": "agent", "messages": MSG})
        finally:
            await gateway.aclose()
            backend.close()
        assert status == 500 and "Generation failed" in json.loads(content)["error"]["message"]
        assert len(backend.seen) == 1

    run(test)


def test_an_mlx_lm_generation_error_is_a_400_with_a_clean_message() -> None:
    backend = Backend(answers(reply(404, b'{"error": "min_p must be between 0 and 1"}')))

    async def test() -> None:
        gateway, table = setup(await backend.start(), runtime="mlx-lm")
        try:
            status, content = await answer(gateway, table, {"model": "agent", "messages": MSG})
        finally:
            await gateway.aclose()
            backend.close()
        error = json.loads(content)["error"]
        assert status == 400 and error["type"] == "invalid_request_error"
        assert error["message"].endswith("min_p must be between 0 and 1")

    run(test)


def test_a_dead_generation_thread_goes_to_the_fallback() -> None:
    dead = Backend(answers(reply(404, b'{"error": "generation thread died"}')))
    good = Backend(answers(reply(200, FULL_BODY.encode())))

    async def test() -> None:
        from mlxctl.gateway.app import Gateway

        dead_port, good_port = await dead.start(), await good.start()
        routes = (
            Route(name="fast", port=dead_port, served_model="default_model", runtime="mlx-lm"),
            Route(name="standard", port=good_port, served_model="default_model", runtime="mlx-lm"),
        )
        table = RoutingTable(GatewayConfig(routes=routes, fallbacks={"fast": ("standard",)}))
        gateway = Gateway("sk-test", table)
        try:
            status, content = await answer(gateway, table, {"model": "fast", "messages": MSG})
        finally:
            await gateway.aclose()
            dead.close()
            good.close()
        assert status == 200, content
        assert json.loads(content)["model"] == "fast"
        assert len(dead.seen) == 1 and len(good.seen) == 1  # the dead tier asked once

    run(test)


def test_router_errors_carry_no_litellm_text() -> None:
    import litellm

    exc = litellm.BadRequestError(
        message='litellm.BadRequestError: OpenAIException - {"detail":"bad min_p"} '
        "Received Model Group=agent Available Model Group Fallbacks=None LiteLLM Retried: 1 times",
        model="openai/agent",
        llm_provider="openai",
    )
    verdict = router_error(exc, "agent")
    assert verdict.status == 400 and verdict.message == "bad min_p"
    failed = router_error(
        litellm.InternalServerError(
            message="litellm.InternalServerError: OpenAIException - id=chatcmpl-9 usage=812",
            model="openai/agent",
            llm_provider="openai",
        ),
        "agent",
    )
    assert failed.status == 502 and "litellm" not in failed.message.lower()
    assert "chatcmpl" not in failed.message


# -- the tier's own key ------------------------------------------------------------------


def test_the_tiers_key_is_sent_to_it_and_to_the_router(tmp_path: Path) -> None:
    key = tmp_path / "agent.key"
    key.write_text("sk-tier-secret\n")
    backend = Backend(answers(reply(200, OK_BODY.encode())))

    async def test() -> None:
        gateway, table = setup(await backend.start(), key_file=str(key))
        try:
            status, _ = await answer(gateway, table, {"model": "agent", "messages": MSG})
        finally:
            await gateway.aclose()
            backend.close()
        assert status == 200
        assert b"authorization: bearer sk-tier-secret" in backend.headers[0].lower()
        assert deployment(table.config.routes[0])["litellm_params"]["api_key"] == "sk-tier-secret"

    run(test)


def _checked(body: dict[str, Any]) -> Any:
    from mlxctl.gateway.requests import check_request

    return check_request(body, "chat")


def test_read_request_helper_is_shared() -> None:
    assert callable(read_request)
