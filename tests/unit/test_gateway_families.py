"""Anthropic Messages and OpenAI Responses through the gateway, against fake tiers.

The translations are checked piece by piece (a request to chat messages, chat chunks to
each family's events), then whole: the gateway app under uvicorn in this event loop in
front of fake tiers (aiohttp apps) playing ``mlx_lm.server`` (chat completions only: the
request is translated) and vllm-mlx (its own ``/v1/messages`` and ``/v1/responses``:
relayed as is), a tier that fails (the Router's fallback, translated back), an on-demand
tier held while it loads, and the error bodies of each family.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web

from mlxctl.gateway.anthropic import MESSAGES, MessagesStream
from mlxctl.gateway.app import Gateway, build_app
from mlxctl.gateway.families import translate_stream
from mlxctl.gateway.prompt_tokens import PER_MESSAGE
from mlxctl.gateway.requests import RequestError
from mlxctl.gateway.responses import RESPONSES, ResponsesStream
from mlxctl.gateway.routing import RoutingTable
from mlxctl.runtimes.gateway import GatewayConfig, Route
from tests.unit.test_gateway_demand import Setup, running, short_dir

__all__ = ["short_dir"]  # a fixture, used by name

KEY = "sk-test"
DEADLINE = 10.0
TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}
CALL = {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def sse_events(data: bytes) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of each event; comments are left out."""
    out: list[tuple[str | None, Any]] = []
    for raw in data.split(b"\n\n"):
        name, payload = None, None
        for line in raw.splitlines():
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                payload = line[6:]
        if payload is not None:
            out.append((name, payload if payload == b"[DONE]" else json.loads(payload)))
    return out


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"model": "default_model", "choices": [{"index": 0, "delta": delta,
                                                   "finish_reason": finish}]}  # fmt: skip


def chat_sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


# -- the translations, piece by piece ---------------------------------------------------


def test_a_messages_request_becomes_chat_messages_with_tools_and_results() -> None:
    body = {
        "model": "fast",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "x"}}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "let me look"},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "P"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [
                    {"type": "text", "text": "sunny"}]},
                {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": True},
                {"type": "text", "text": "thanks"},
            ]},
        ],
        "tools": [{**TOOL, "description": "w"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "top_k": 5,
        "metadata": {"user_id": "u"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stream": True,
    }  # fmt: skip
    parsed = MESSAGES.parse(body)
    assert parsed.model == "fast" and parsed.stream
    assert parsed.native == {k: v for k, v in body.items() if k != "model"}
    chat = parsed.chat
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: boom"},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip
    assert chat["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}, "description": "w"}}]  # fmt: skip
    assert (chat["tool_choice"], chat["parallel_tool_calls"]) == ("required", False)
    assert (chat["max_tokens"], chat["stop"], chat["top_k"]) == (64, ["END"], 5)
    assert chat["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools"),
        ({"tools": [{"name": "x"}]}, "tools"),
        ({"stream": "yes"}, "stream"),
        ({"mcp_servers": [{"url": "http://x"}]}, "mcp_servers"),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages"),
    ],
)
def test_messages_requests_outside_what_a_local_tier_serves_are_400(
    change: dict[str, Any], param: str
) -> None:
    body = {"model": "fast", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(RequestError) as err:
        MESSAGES.parse({**body, **change})
    assert (err.value.status, err.value.param) == (400, param)


def test_chat_chunks_become_anthropic_events_text_then_a_tool_call_with_usage() -> None:
    stream = MessagesStream("fast", 7)
    out = stream.start()
    out += stream.feed(chunk({"role": "assistant", "content": "Hel"}))
    out += stream.feed(chunk({"content": "lo"}))
    # mlx_lm.server sends a whole call in one delta, its finish_reason in the next chunk.
    out += stream.feed(chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                              "function": CALL}]}))  # fmt: skip
    out += stream.feed(chunk({}, "tool_calls"))
    usage = {"prompt_tokens": 20, "completion_tokens": 6,
             "prompt_tokens_details": {"cached_tokens": 4}}  # fmt: skip
    out += stream.feed({"model": "default_model", "choices": [], "usage": usage})
    out += stream.finish()
    events = sse_events(out)
    assert [name for name, _ in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert (start["model"], start["usage"]["input_tokens"]) == ("fast", 7)
    assert events[6][1]["content_block"] == {"type": "tool_use", "id": "c1",
                                             "name": "get_weather", "input": {}}  # fmt: skip
    assert events[7][1]["delta"] == {"type": "input_json_delta",
                                     "partial_json": '{"city": "Paris"}'}  # fmt: skip
    assert [events[i][1]["index"] for i in (2, 5, 6, 8)] == [0, 0, 1, 1]
    delta = events[9][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {
        "input_tokens": 16,
        "output_tokens": 6,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 0,
    }


def test_a_responses_request_becomes_chat_messages_with_calls_and_outputs() -> None:
    body = {
        "model": "fast",
        "instructions": "be brief",
        "input": [
            {"type": "message", "role": "developer",
             "content": [{"type": "input_text", "text": "rules"}]},
            {"role": "user", "content": "weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "get_weather",
             "arguments": '{"city": "P"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "It is sunny."}]},
        ],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"},
                   "strict": False}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "max_output_tokens": 32,
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "k",
        "client_metadata": {"x": "y"},
        "reasoning": {"effort": "medium"},
    }  # fmt: skip
    chat = RESPONSES.parse(body).chat
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]  # fmt: skip
    assert chat["tools"][0]["function"]["name"] == "get_weather"
    assert (chat["tool_choice"], chat["parallel_tool_calls"], chat["max_tokens"]) == (
        "auto", False, 32)  # fmt: skip
    assert RESPONSES.parse({"model": "m", "input": "hi"}).chat["messages"] == [
        {"role": "user", "content": "hi"}
    ]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools"),
        ({"input": [{"type": "local_shell_call", "id": "x"}]}, "input"),
        ({"input": []}, "input"),
        ({"background": True}, "background"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_responses_requests_outside_what_a_local_tier_serves_are_400(
    change: dict[str, Any], param: str
) -> None:
    with pytest.raises(RequestError) as err:
        RESPONSES.parse({"model": "fast", "input": "hi", **change})
    assert (err.value.status, err.value.param) == (400, param)


def test_chat_chunks_become_responses_events_text_then_a_function_call() -> None:
    parsed = RESPONSES.parse({"model": "fast", "input": "hi", "stream": True})
    stream = ResponsesStream(parsed)
    out = stream.start()
    out += stream.feed(chunk({"content": "Hi"}))
    out += stream.feed(chunk({"tool_calls": [{"index": 0, "id": "c1", "function": CALL}]},
                             "tool_calls"))  # fmt: skip
    out += stream.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    out += stream.finish()
    events = sse_events(out)
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    done = events[-1][1]["response"]
    assert (done["model"], done["status"], done["store"]) == ("fast", "completed", False)
    assert done["usage"]["total_tokens"] == 5
    message, call = done["output"]
    assert message["content"][0]["text"] == "Hi" and message["status"] == "completed"
    assert (call["type"], call["call_id"], call["name"], call["arguments"]) == (
        "function_call", "c1", "get_weather", '{"city": "Paris"}')  # fmt: skip


def test_a_stream_that_ends_before_its_answer_ends_with_each_familys_error_event() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield chat_sse(chunk({"content": "Hi"}), done=False)

    async def collect(translator: Any) -> bytes:
        return b"".join([p async for p in translate_stream(body(), translator)])

    anthropic = sse_events(asyncio.run(collect(MessagesStream("fast", 1))))
    assert anthropic[-1][0] == "error"
    assert anthropic[-1][1]["error"]["type"] == "api_error"
    assert anthropic[-2][0] == "content_block_stop"  # the open block is closed first
    parsed = RESPONSES.parse({"model": "fast", "input": "hi"})
    responses = sse_events(asyncio.run(collect(ResponsesStream(parsed))))
    assert [name for name, _ in responses[-2:]] == ["response.failed", "error"]
    assert responses[-1][1]["error"]["message"]  # the openai SDK raises on it


def test_message_start_carries_the_context_checks_estimate_of_the_chat_prompt() -> None:
    body = {"model": "fast", "max_tokens": 5, "system": "y" * 8, "tools": [TOOL],
            "messages": [{"role": "user", "content": "x" * 40}]}  # fmt: skip
    # "yyyyyyyy\nxxx...": 49 bytes at 4 a token, and 3 tokens for each of 2 messages.
    stream = MESSAGES.translator(MESSAGES.parse(body))
    assert stream.input_estimate == 49 // 4 + 2 * PER_MESSAGE
    assert sse_events(stream.start())[0][1]["message"]["usage"]["input_tokens"] == 18


# -- whole, through the gateway ----------------------------------------------------------


class FakeTier:
    """A fake model server. ``native``: it serves /v1/messages and /v1/responses too
    (as vllm-mlx does), answering with its own served name for ``model``."""

    def __init__(self, *, native: bool = False, tool: bool = False) -> None:
        self.native = native
        self.tool = tool
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> FakeTier:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        if self.native:
            app.router.add_post("/v1/messages", self.messages)
            app.router.add_post("/v1/responses", self.responses)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, body))
        if self.tool:
            delta: dict[str, Any] = {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                                     "function": CALL}]}  # fmt: skip
            message: dict[str, Any] = {"role": "assistant", "content": None, **delta}
            message["tool_calls"] = [{k: v for k, v in delta["tool_calls"][0].items()
                                      if k != "index"}]  # fmt: skip
            finish = "tool_calls"
        else:
            delta = {"content": "hello"}
            message = {"role": "assistant", "content": "hello"}
            finish = "stop"
        if not body.get("stream"):
            return web.json_response({
                "id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
            })  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chat_sse(chunk(delta), chunk({}, finish)))
        await response.write_eof()
        return response

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append((request.path, body))
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": "native"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1},
        }
        if not body.get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        start = {"type": "message_start", "message": {**message, "content": []}}
        stop = b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
        await response.write(b"event: message_start\ndata: " + json.dumps(start).encode())
        await response.write(b"\n\n" + stop)
        await response.write_eof()
        return response

    async def responses(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((request.path, body))
        return web.json_response({"id": "resp_1", "object": "response", "model": body["model"],
                                  "status": "completed", "output": []})  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def gateway_before(*routes: Route, **config: Any) -> AsyncIterator[tuple[str, Gateway]]:
    """The gateway app under uvicorn in this loop, in front of ``routes``; yields its URL."""
    gateway = Gateway(KEY, RoutingTable(GatewayConfig(routes=routes, **config)))
    server = uvicorn.Server(uvicorn.Config(build_app(gateway), log_level="warning",
                                           lifespan="off"))  # fmt: skip
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", gateway
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, DEADLINE)
        sock.close()
        await gateway.aclose()


async def post(
    url: str, body: Any, *, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    headers = {"x-api-key": KEY} if headers is None else headers
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=json.dumps(body), headers=headers) as resp,
    ):
        return resp.status, await resp.read(), dict(resp.headers)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


ASK = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def test_messages_to_an_mlx_lm_tier_are_translated_with_the_clients_model_name() -> None:
    async def test() -> None:
        tier = await FakeTier(tool=True).start()
        route = Route(name="fast", port=tier.port, served_model="default_model",
                      aliases=("claude-x",), runtime="mlx-lm")  # fmt: skip
        try:
            async with gateway_before(route) as (url, _):
                status, body, _ = await post(f"{url}/v1/messages?beta=true",
                                             {**ASK, "tools": [TOOL]})  # fmt: skip
                stream_status, streamed, headers = await post(
                    f"{url}/v1/messages", {**ASK, "tools": [TOOL], "stream": True},
                    headers={"Authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"},
                )  # fmt: skip
        finally:
            await tier.stop()
        assert status == 200
        answer = json.loads(body)
        assert (answer["model"], answer["stop_reason"]) == ("claude-x", "tool_use")
        assert answer["content"] == [{"type": "tool_use", "id": "c1", "name": "get_weather",
                                      "input": {"city": "Paris"}}]  # fmt: skip
        assert answer["usage"]["input_tokens"] == 9
        path, sent = tier.seen[0]
        assert path == "/v1/chat/completions" and sent["model"] == "default_model"
        assert sent["messages"] == [{"role": "user", "content": "hi"}]
        assert stream_status == 200 and headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(streamed)
        assert events[0][1]["message"]["model"] == "claude-x"
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
        assert tier.seen[1][1]["stream_options"] == {"include_usage": True}

    run(test)


def test_messages_and_responses_to_a_vllm_mlx_tier_are_relayed_as_is_but_for_the_model() -> None:
    async def test() -> None:
        tier = await FakeTier(native=True).start()
        route = Route(name="big", port=tier.port, served_model="big", aliases=("claude-x",),
                      runtime="vllm-mlx")  # fmt: skip
        try:
            async with gateway_before(route) as (url, _):
                plain = await post(f"{url}/v1/messages", {**ASK, "top_k": 3})
                streamed = await post(f"{url}/v1/messages", {**ASK, "stream": True})
                responses = await post(f"{url}/v1/responses", {"model": "claude-x", "input": "hi"},
                                       headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        finally:
            await tier.stop()
        assert plain[0] == 200
        assert json.loads(plain[1])["model"] == "claude-x"
        assert tier.seen[0] == ("/v1/messages", {**ASK, "top_k": 3, "model": "big"})
        events = sse_events(streamed[1])
        assert events[0][1]["message"]["model"] == "claude-x"
        # Its last event ends it: nothing is added after message_stop.
        assert [name for name, _ in events] == ["message_start", "message_stop"]
        assert responses[0] == 200 and json.loads(responses[1])["model"] == "claude-x"
        assert tier.seen[2] == ("/v1/responses", {"model": "big", "input": "hi"})

    run(test)


class FakeRouter:
    """Stands in for ``litellm.Router`` (its ``acompletion``), answering as a fallback."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def acompletion(self, **params: Any) -> Any:
        self.calls.append(params)

        class Result:
            def model_dump(self, exclude_none: bool = False) -> dict[str, Any]:
                message = {"role": "assistant", "content": "from the fallback"}
                choice = {"index": 0, "finish_reason": "stop", "message": message}
                return {"model": "fallback", "choices": [choice]}

        return Result()


def test_a_native_tier_that_fails_goes_to_the_router_translated_and_back() -> None:
    async def test() -> None:
        dead = free_port()  # nothing listens: refused, and the tier has a fallback
        route = Route(name="big", port=dead, served_model="big", runtime="vllm-mlx")
        other = Route(name="small", port=free_port(), served_model="default_model")
        async with gateway_before(route, other, fallbacks={"big": ("small",)}) as (url, gw):
            router = FakeRouter()
            gw.table._router = router  # built on first need: this one is already there
            status, body, _ = await post(f"{url}/v1/messages", {**ASK, "model": "big"})
        assert status == 200, body
        answer = json.loads(body)
        assert answer["content"] == [{"type": "text", "text": "from the fallback"}]
        assert answer["model"] == "big"
        assert router.calls[0]["model"] == "big"
        assert router.calls[0]["messages"] == [{"role": "user", "content": "hi"}]

    run(test)


def test_each_family_answers_its_own_error_bodies() -> None:
    async def test() -> None:
        route = Route(name="fast", port=free_port(), served_model="default_model")
        async with gateway_before(route) as (url, _), aiohttp.ClientSession() as session:
            status, body, _ = await post(f"{url}/v1/messages", ASK, headers={"x-api-key": "no"})
            assert status == 401
            error = json.loads(body)
            assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
            assert set(error["error"]) == {"type", "message"}
            status, body, _ = await post(f"{url}/v1/messages", {**ASK, "model": "nope"})
            assert status == 404
            error = json.loads(body)["error"]
            assert error["type"] == "not_found_error" and "models: fast" in error["message"]
            status, body, _ = await post(f"{url}/v1/messages", {**ASK, "max_tokens": "x"})
            assert (status, json.loads(body)["error"]["type"]) == (400, "invalid_request_error")
            status, body, _ = await post(f"{url}/v1/responses", {"model": "fast", "input": "x",
                                         "previous_response_id": "r"})  # fmt: skip
            assert status == 400 and json.loads(body)["error"]["param"] == "previous_response_id"
            huge = {"content-length": str(64 << 20), "x-api-key": KEY}
            async with session.post(f"{url}/v1/messages", data=b"{}", headers=huge) as resp:
                assert resp.status == 413
                assert (await resp.json())["error"]["type"] == "request_too_large"
            async with session.get(f"{url}/v1/messages") as resp:
                assert (resp.status, resp.headers["Allow"]) == (405, "POST")
                assert (await resp.json())["type"] == "error"
            async with session.get(f"{url}/v1/chat/completions") as resp:
                assert resp.status == 405
                assert (await resp.json())["error"]["code"] == "method_not_allowed"
            async with session.post(f"{url}/v1/messages/batches") as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["type"] == "not_found_error"
            async with session.get(f"{url}/v1/nothing") as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "unknown_url"
            count = f"{url}/v1/messages/count_tokens"
            ask = {**ASK, "model": "fast"}
            async with session.post(count, json=ask, headers={"x-api-key": KEY}) as resp:
                # No tokenizer: "hi" at 4 bytes a token, and the message's 3.
                assert (resp.status, await resp.json()) == (200, {"input_tokens": PER_MESSAGE})

    run(test)


def test_a_held_request_for_a_cold_tier_is_served_on_both_routes_once_it_loads(
    short_dir: Path,
) -> None:
    """An on-demand tier that loads while Messages and Responses requests wait for it:
    the held stream gets keep-alives, then Anthropic's events; an unavailable tier is an
    Anthropic 503 with Retry-After."""

    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            base = s.url.removesuffix("/v1/chat/completions")
            assert s.session is not None
            s.controller.say("big", "loading", "loading the model")
            body = {"model": "big", "max_tokens": 5, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            async with s.session.post(f"{base}/v1/messages", json=body,
                                      headers={"x-api-key": KEY}) as resp:  # fmt: skip
                assert resp.status == 200
                first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), DEADLINE)
                assert first == b": keep-alive\n\n"
                plain = asyncio.ensure_future(s.session.post(
                    f"{base}/v1/responses", json={"model": "big", "input": "hi"},
                    headers={"Authorization": f"Bearer {KEY}"}))  # fmt: skip
                await s.big.start()
                s.controller.say("big", "ready")
                events = sse_events(await resp.content.read())
            names = [name for name, _ in events]
            assert names[0] == "message_start" and names[-1] == "message_stop"
            text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
            assert text == "firstlast"
            answer = await asyncio.wait_for(plain, DEADLINE)
            assert answer.status == 200
            data = await answer.json()
            assert data["output"][0]["content"][0]["text"] == "hello"
            assert data["model"] == "big"
            s.controller.say("big", "unavailable", "no memory", retry_after=3)
            await s.controller.told()
            refused = {**body, "stream": False}
            async with s.session.post(f"{base}/v1/messages", json=refused,
                                      headers={"x-api-key": KEY}) as resp:  # fmt: skip
                assert (resp.status, resp.headers["Retry-After"]) == (503, "3")
                assert await resp.json() == {"type": "error", "error": {
                    "type": "overloaded_error", "message": "no memory"}}  # fmt: skip

    run(test)
