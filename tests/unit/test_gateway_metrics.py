"""``GET /metrics``: what the gateway counts, read back as Prometheus would.

The whole app (the middleware, the routes, the fast path) runs in process against a
scripted OpenAI-style tier (an aiohttp app on 127.0.0.1): requests go in through
httpx's ASGI transport, the counters come out of the gateway's own registry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from mlxctl.gateway.app import Gateway, build_app
from mlxctl.gateway.metrics import Metrics, Trace
from mlxctl.gateway.routing import RoutingTable
from mlxctl.runtimes.gateway import DemandAnswer, GatewayConfig, Route, TierVerdict

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "hi"}]
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
CHAT = "/v1/chat/completions"


def event(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return f"data: {text}\n\n".encode()


def delta(text: str) -> dict[str, Any]:
    return {"model": "default_model", "choices": [{"index": 0, "delta": {"content": text}}]}


async def tier_server(answer: Callable[[web.Request, dict[str, Any]], Awaitable[Any]]) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        result: web.StreamResponse = await answer(request, await request.json())
        return result

    app = web.Application()
    app.router.add_post(CHAT, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def plain(_: web.Request, body: dict[str, Any]) -> web.Response:
    answer = {"model": "default_model", "choices": [{"index": 0}], "usage": USAGE}
    return web.json_response(answer)


def streaming(*events: bytes) -> Callable[[web.Request, dict[str, Any]], Awaitable[Any]]:
    async def answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for one in events:
            await response.write(one)
        await response.write_eof()
        return response

    return answer


class Setup:
    def __init__(self, gateway: Gateway, client: httpx.AsyncClient) -> None:
        self.gateway = gateway
        self.client = client

    def value(self, name: str, **labels: str) -> float:
        got = self.gateway.metrics.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got


def scenario(
    answer: Callable[[web.Request, dict[str, Any]], Awaitable[Any]],
    test: Callable[[Setup], Awaitable[None]],
    **route: Any,
) -> None:
    async def run() -> None:
        runner, port = await tier_server(answer)
        table = RoutingTable(
            GatewayConfig(
                routes=(Route(name="fast", port=port, served_model="default_model", **route),)
            )
        )
        gateway = Gateway(KEY, table)
        transport = httpx.ASGITransport(app=build_app(gateway))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                await test(Setup(gateway, client))
        finally:
            await gateway.aclose()
            await runner.cleanup()

    asyncio.run(run())


def test_a_request_moves_its_counter_duration_tokens_queue_and_overhead() -> None:
    async def test(s: Setup) -> None:
        r = await s.client.post(CHAT, json={"model": "fast", "messages": MSG}, headers=AUTH)
        assert r.status_code == 200
        labels = {"tier": "fast", "route": CHAT}
        assert s.value("mlxctl_gateway_requests_total", status="200", **labels) == 1
        assert s.value("mlxctl_gateway_request_duration_seconds_count", **labels) == 1
        assert s.value("mlxctl_gateway_tokens_total", tier="fast", direction="in") == 7
        assert s.value("mlxctl_gateway_tokens_total", tier="fast", direction="out") == 3
        assert s.value("mlxctl_gateway_queue_seconds_count", tier="fast") == 1
        assert s.value("mlxctl_gateway_overhead_seconds_count", route=CHAT) == 1
        own = s.value("mlxctl_gateway_overhead_seconds_sum", route=CHAT)
        total = s.value("mlxctl_gateway_request_duration_seconds_sum", **labels)
        assert 0 < own < total
        # Not streamed: no time-to-first-token observation.
        assert s.value("mlxctl_gateway_time_to_first_token_seconds_count", **labels) == 0
        # An alias's path without /v1 counts under the /v1 route.
        await s.client.post("/chat/completions", json={"model": "fast", "messages": MSG},
                            headers=AUTH)  # fmt: skip
        assert s.value("mlxctl_gateway_requests_total", status="200", **labels) == 2
        assert s.value("mlxctl_gateway_in_flight_requests", tier="fast") == 0

    scenario(plain, test)


def test_a_stream_takes_its_tokens_from_the_final_usage_chunk_and_times_its_first_token() -> None:
    final = {"model": "default_model", "choices": [], "usage": USAGE}
    answer = streaming(event(delta("a")), event(delta("b")), event(final), event("[DONE]"))

    async def test(s: Setup) -> None:
        body = {"model": "fast", "messages": MSG, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        r = await s.client.post(CHAT, json=body, headers=AUTH)
        assert r.status_code == 200 and b"[DONE]" in r.content
        labels = {"tier": "fast", "route": CHAT}
        assert s.value("mlxctl_gateway_requests_total", status="200", **labels) == 1
        assert s.value("mlxctl_gateway_time_to_first_token_seconds_count", **labels) == 1
        assert s.value("mlxctl_gateway_tokens_total", tier="fast", direction="in") == 7
        assert s.value("mlxctl_gateway_tokens_total", tier="fast", direction="out") == 3

    scenario(answer, test)


def test_a_stream_without_usage_counts_its_output_events_and_no_input() -> None:
    answer = streaming(*(event(delta(t)) for t in "abcde"), event("[DONE]"))

    async def test(s: Setup) -> None:
        body = {"model": "fast", "messages": MSG, "stream": True}
        r = await s.client.post(CHAT, json=body, headers=AUTH)
        assert r.status_code == 200
        assert s.value("mlxctl_gateway_tokens_total", tier="fast", direction="out") == 5
        assert s.value("mlxctl_gateway_tokens_total", tier="fast", direction="in") == 0

    scenario(answer, test)


def test_a_stream_that_ends_with_an_error_event_is_not_counted_as_a_success() -> None:
    error = {"error": {"message": "boom", "code": "backend_error", "status": 502}}
    answer = streaming(event(delta("a")), event(error))

    async def test(s: Setup) -> None:
        body = {"model": "fast", "messages": MSG, "stream": True}
        r = await s.client.post(CHAT, json=body, headers=AUTH)
        assert r.status_code == 200
        labels = {"tier": "fast", "route": CHAT}
        assert s.value("mlxctl_gateway_requests_total", status="502", **labels) == 1
        assert s.value("mlxctl_gateway_requests_total", status="200", **labels) == 0

    scenario(answer, test)


def test_refusals_count_without_a_tier_and_unknown_paths_add_no_series() -> None:
    async def test(s: Setup) -> None:
        await s.client.post(CHAT, json={"model": "fast", "messages": MSG})  # no key
        await s.client.post(CHAT, json={"model": "nope", "messages": MSG}, headers=AUTH)
        for n in range(3):
            await s.client.get(f"/random/{n}", headers=AUTH)
        await s.client.get("/health/liveliness")
        assert s.value("mlxctl_gateway_requests_total", tier="", route=CHAT, status="401") == 1
        assert s.value("mlxctl_gateway_requests_total", tier="", route=CHAT, status="404") == 1
        assert s.value("mlxctl_gateway_requests_total", tier="", route="other", status="404") == 3
        text = (await s.client.get("/metrics", headers=AUTH)).text
        assert "/random" not in text and "liveliness" not in text

    scenario(plain, test)


def test_metrics_need_the_key_and_speak_the_prometheus_text_format() -> None:
    async def test(s: Setup) -> None:
        assert (await s.client.get("/metrics")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await s.client.get("/metrics", headers=wrong)).status_code == 401
        r = await s.client.get("/metrics", headers=AUTH)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        names = {family.name for family in text_string_to_metric_families(r.text)}
        assert {
            "mlxctl_gateway_requests", "mlxctl_gateway_request_duration_seconds",
            "mlxctl_gateway_time_to_first_token_seconds", "mlxctl_gateway_queue_seconds",
            "mlxctl_gateway_overhead_seconds", "mlxctl_gateway_tokens",
            "mlxctl_gateway_in_flight_requests", "mlxctl_gateway_queued_requests",
            "mlxctl_gateway_tier_state", "mlxctl_gateway_tier_loads",
            "mlxctl_gateway_tier_unloads", "process_resident_memory_bytes",
        } <= names  # fmt: skip
        # The scrape itself is not counted.
        assert s.value("mlxctl_gateway_requests_total", tier="", route="/v1/metrics",
                       status="200") == 0  # fmt: skip
        assert s.value("mlxctl_gateway_tier_state", tier="fast", state="always") == 1

    scenario(plain, test)


def test_an_always_tier_drained_for_a_planned_restart_says_so() -> None:
    async def test(s: Setup) -> None:
        answer = DemandAnswer(tiers={"fast": TierVerdict(state="draining")})
        s.gateway.demand._apply(answer)
        assert s.value("mlxctl_gateway_tier_state", tier="fast", state="draining") == 1
        assert s.value("mlxctl_gateway_tier_state", tier="fast", state="always") == 0
        s.gateway.demand._apply(DemandAnswer(tiers={"fast": TierVerdict(state="ready")}))
        assert s.value("mlxctl_gateway_tier_state", tier="fast", state="always") == 1

    scenario(plain, test)


def test_an_on_demand_tiers_verdicts_become_its_state_loads_and_unloads() -> None:
    async def test(s: Setup) -> None:
        demand = s.gateway.demand
        assert s.value("mlxctl_gateway_tier_state", tier="fast", state="unknown") == 1
        for state in ("cold", "loading", "ready", "draining", "cold", "loading", "ready"):
            demand._apply(DemandAnswer(tiers={"fast": TierVerdict(state=state)}))  # type: ignore[arg-type]
        assert s.value("mlxctl_gateway_tier_loads_total", tier="fast") == 2
        assert s.value("mlxctl_gateway_tier_unloads_total", tier="fast") == 1
        assert s.value("mlxctl_gateway_tier_state", tier="fast", state="ready") == 1
        assert s.value("mlxctl_gateway_tier_state", tier="fast", state="cold") == 0

    scenario(plain, test, on_demand=True, hold=1.0)


def test_histogram_buckets_hold_each_observation_at_its_bound() -> None:
    metrics = Metrics()
    for seconds in (0.003, 0.04, 0.04, 7.0):
        trace = Trace(arrival=100.0)
        trace.tier = "fast"
        trace.status = 200
        metrics.record(trace, CHAT, 100.0 + seconds)
    reg = metrics.registry
    labels = {"tier": "fast", "route": CHAT}
    bucket = "mlxctl_gateway_request_duration_seconds_bucket"
    assert reg.get_sample_value(bucket, {**labels, "le": "0.005"}) == 1
    assert reg.get_sample_value(bucket, {**labels, "le": "0.05"}) == 3
    assert reg.get_sample_value(bucket, {**labels, "le": "5.0"}) == 3
    assert reg.get_sample_value(bucket, {**labels, "le": "10.0"}) == 4
    assert reg.get_sample_value(bucket, {**labels, "le": "+Inf"}) == 4


def feed_all(trace: Trace, *events: bytes) -> Trace:
    trace.stream = True
    for one in events:
        # Split each event in two reads: the scanner must join them.
        trace.feed(one[:7], 1.0)
        trace.feed(one[7:], 1.0)
    trace.finish()
    return trace


def named(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def test_anthropic_and_responses_streams_give_their_usage() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 12,
                                                            "output_tokens": 1}}}  # fmt: skip
    text = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x"}}
    end = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}}
    trace = feed_all(
        Trace(0.0), b": keep-alive\n\n", named("message_start", start),
        named("content_block_delta", text), named("content_block_delta", text),
        named("message_delta", end), named("message_stop", {"type": "message_stop"}),
    )  # fmt: skip
    assert (trace.in_tokens, trace.out_tokens, trace.deltas) == (12, 9, 2)
    assert trace.first == 1.0
    done = {"type": "response.completed",
            "response": {"usage": {"input_tokens": 30, "output_tokens": 4}}}  # fmt: skip
    trace = feed_all(
        Trace(0.0), named("response.output_text.delta", {"delta": "x"}),
        named("response.completed", done),
    )  # fmt: skip
    assert (trace.in_tokens, trace.out_tokens, trace.deltas) == (30, 4, 1)


def test_keepalive_comments_are_not_a_first_token() -> None:
    trace = feed_all(Trace(0.0), b": keep-alive\n\n", b": keep-alive\n\n", event("[DONE]"))
    assert trace.first is None and trace.deltas == 0


def test_a_large_answer_is_not_parsed_whole_for_its_usage() -> None:
    vectors = [{"object": "embedding", "index": i, "embedding": [0.125] * 512} for i in range(40)]
    answer = {"object": "list", "data": vectors, "model": "emb",
              "usage": {"prompt_tokens": 321, "total_tokens": 321}}  # fmt: skip
    body = json.dumps(answer).encode()
    assert len(body) > 64 << 10
    trace = Trace(0.0)
    trace.feed(body[:1000], 1.0)
    trace.feed(body[1000:], 1.0)
    trace.finish()
    assert (trace.in_tokens, trace.out_tokens) == (321, None)
