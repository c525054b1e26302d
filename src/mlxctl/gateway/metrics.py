"""The gateway's traffic, for Prometheus: ``GET /metrics`` (the key is required).

Everything is measured by one ASGI middleware around the app (:class:`Instrumented`) and
three stamps the request path makes (:func:`routed`, :func:`sending`, :func:`answered`)
on a per-request :class:`Trace` held in a context variable, so the request code passes
nothing around and every route (chat, text completions, embeddings, and whatever routes
come later) is counted the same way. The middleware sees what the client sees: the
status, each body message as it goes out, and the end (a stream's last byte).

Per tier and route (the route's path, ``/v1/...``):

- ``mlxctl_gateway_requests_total{tier,route,status}``: every API request once it ends.
  ``tier`` is empty for one refused before it had a tier (401, 400, an unknown model).
  ``status`` is the HTTP status; a stream whose headers went out (200) but that ended
  with an in-band error event counts with that error's ``status`` (or ``error``); one
  whose client went away before its answer started, ``499``.
- ``mlxctl_gateway_request_duration_seconds{tier,route}``: arrival to last byte.
- ``mlxctl_gateway_time_to_first_token_seconds{tier,route}`` (streams): arrival to the
  first event that carries generated output (a delta with choices, an Anthropic or
  Responses ``*delta`` event). Keep-alive comments of a held stream do not count.
- ``mlxctl_gateway_queue_seconds{tier}``: arrival at the tier (after the key, the schema
  and the name) to the moment it is sent to the tier: the wait at the tier's gate and,
  for an on-demand tier, the hold while it loads.
- ``mlxctl_gateway_overhead_seconds{route}``: the gateway's own time: arrival to the
  tier's routing decision (reading the body, key, schema, name), plus, for an answer
  that is not streamed, the tier's complete answer to its last byte out (the model
  rename). A stream's own per-event cost is not included (14-19 µs an event, see
  ``docs/gateway.md``).
- ``mlxctl_gateway_tokens_total{tier,direction}`` (``in``/``out``): from the answer's
  ``usage`` when it has one (OpenAI ``prompt_tokens``/``completion_tokens``, Anthropic
  and Responses ``input_tokens``/``output_tokens``; a stream's last usage seen: the
  final chunk with ``stream_options.include_usage``, Anthropic's ``message_start`` and
  ``message_delta``, the Responses ``response.completed``). A stream without usage counts
  its output as the events that carried output (mlx_lm.server and vllm-mlx send about
  one a token: an estimate) and its input not at all.
- ``mlxctl_gateway_in_flight_requests{tier}``, ``mlxctl_gateway_queued_requests{tier}``:
  read from the demand counts at scrape time (:mod:`mlxctl.gateway.demand`), so they cost
  the request path nothing.
- ``mlxctl_gateway_tier_state{tier,state}`` (1 for the current one; ``elsewhere`` for a
  tier another machine serves), ``mlxctl_gateway_tier_host{tier,host}`` (1 for the
  machine serving it, in a stack of several: docs/multi-host.md), and
  ``mlxctl_gateway_tier_loads_total{tier}`` / ``mlxctl_gateway_tier_unloads_total{tier}``:
  an on-demand tier's verdict becoming ``ready`` (a load finished) or leaving
  ``ready``/``draining`` for ``cold`` (an unload or an eviction; the controller's events,
  ``mlxctl events``, say which). An ``always`` tier's state is ``always``, or
  ``draining`` while a planned restart drains it (the gateway holds its new requests
  until the new process serves: a restart waiting on long streams shows here).
- ``mlxctl_gateway_peer_failures_total{host,reason}``: requests relayed to another
  machine's gateway that it did not serve (:mod:`mlxctl.gateway.peers`); the requests
  themselves count under their tier as any other, and those in flight to another
  machine in ``mlxctl_gateway_in_flight_requests``.
- The process's own CPU, memory and file descriptors (``process_*``).

Cost on the request path, measured in process (20 000 calls): the middleware and its
record, ~25 µs of CPU a request before caching each metric's children, ~18 µs after; a
stream's events are scanned with byte searches, and only the events that carry
``usage`` or an error are parsed as JSON.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from mlxctl.gateway.demand import Demand
    from mlxctl.runtimes.gateway import Route, TierVerdict

# Seconds. Local models: a first token from a few ms (a warm tiny model) to minutes (a
# long prompt on a cold model); the whole answer up to the gateway's 600 s timeout.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
)  # fmt: skip
# The gateway's own time: tens of µs to a few ms.
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
# A non-streamed answer is parsed whole for its usage up to this size; past it only its
# last ``usage`` object is (a 100-input embeddings answer is megabytes of floats).
WHOLE_PARSE = 64 << 10
# Bytes of a non-streamed answer kept to find its usage (past it, none is counted).
MAX_PARSED = 64 << 20
_DECODER = json.JSONDecoder()
# Paths never counted: the scrape itself and the liveness probe.
UNCOUNTED = ("/metrics", "/health")
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_USAGE_NULL = (b'"usage":null', b'"usage": null')
_NO_CHOICES = (b'"choices":[]', b'"choices": []')


class Trace:
    """One request, from arrival to its last byte (perf_counter seconds)."""

    __slots__ = (
        "answered",
        "arrival",
        "body",
        "deltas",
        "done_out",
        "entered",
        "error",
        "first",
        "in_tokens",
        "out_tokens",
        "sent",
        "status",
        "stream",
        "tail",
        "tier",
    )  # fmt: skip

    def __init__(self, arrival: float) -> None:
        self.arrival = arrival
        self.tier = ""
        self.entered: float | None = None  # routed to its tier
        self.sent: float | None = None  # sent to the tier (first attempt)
        self.answered: float | None = None  # the tier's whole answer read (not streamed)
        self.first: float | None = None  # first output event out (streams)
        self.done_out: float | None = None  # last body message handed to the server
        self.status: int | None = None
        self.stream = False
        self.error: str | None = None  # a stream's in-band error: its status, or "error"
        self.in_tokens: int | None = None
        self.out_tokens: int | None = None
        self.deltas = 0
        self.tail = b""
        self.body: bytearray | None = None

    # -- what the client is sent --------------------------------------------------------

    def feed(self, chunk: bytes, now: float) -> None:
        if not self.stream:
            if self.body is None:
                self.body = bytearray()
            if len(self.body) + len(chunk) <= MAX_PARSED:
                self.body += chunk
            return
        buffer = self.tail + chunk if self.tail else chunk
        start = 0
        for end in _EVENT_END.finditer(buffer):
            self._event(buffer[start : end.start()], now)
            start = end.end()
        self.tail = buffer[start:]

    def _event(self, event: bytes, now: float) -> None:
        name = b""
        data = b""
        for line in event.splitlines():
            if line.startswith(b"data:"):
                data = line[5:].strip()
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if not data or data == b"[DONE]":
            return
        if data.startswith(b'{"error"'):
            self._stream_error(data)
            return
        if b'"usage"' in data and not any(null in data for null in _USAGE_NULL):
            self._usage_of(data)
        output = name.endswith(b"delta") if name else not any(n in data for n in _NO_CHOICES)
        if output and (name != b"message_delta"):  # Anthropic's last event: usage only
            self.deltas += 1
            if self.first is None:
                self.first = now

    def _stream_error(self, data: bytes) -> None:
        try:
            status = json.loads(data)["error"].get("status")
        except (ValueError, KeyError, AttributeError, TypeError):
            status = None
        self.error = str(status) if isinstance(status, int) else "error"

    def _usage_of(self, data: bytes | bytearray) -> None:
        try:
            answer = json.loads(data)
        except ValueError:
            return
        usage = _find_usage(answer)
        if usage is not None:
            self._take(usage)

    def _take(self, usage: dict[str, Any]) -> None:
        for field, attr in (
            ("prompt_tokens", "in_tokens"), ("input_tokens", "in_tokens"),
            ("completion_tokens", "out_tokens"), ("output_tokens", "out_tokens"),
        ):  # fmt: skip
            value = usage.get(field)
            if isinstance(value, int) and value >= 0:
                setattr(self, attr, value)

    def finish(self) -> None:
        """Parse a whole (not streamed) answer's usage; a stream's unfinished last event."""
        if self.stream:
            if self.tail.strip():
                self._event(self.tail, self.done_out or time.perf_counter())
            self.tail = b""
        elif self.body and b'"usage"' in self.body:
            if len(self.body) <= WHOLE_PARSE:
                self._usage_of(self.body)
            else:
                self._usage_at_end(self.body)
        self.body = None

    def _usage_at_end(self, body: bytearray) -> None:
        """A large answer (embeddings of many inputs): parse only its last ``usage``
        object, where the servers write it (after ``choices`` or ``data``)."""
        at = body.rfind(b'"usage"')
        start = body.find(b"{", at)
        if start < 0 or start - at > 16:
            return
        try:
            usage, _ = _DECODER.raw_decode(body[start : start + 4096].decode("utf-8", "replace"))
        except ValueError:
            return
        if isinstance(usage, dict):
            self._take(usage)


def _find_usage(answer: Any) -> dict[str, Any] | None:
    """``usage`` at the top (OpenAI), in ``message`` (Anthropic's ``message_start``) or in
    ``response`` (the Responses API's ``response.completed``)."""
    if not isinstance(answer, dict):
        return None
    for holder in (answer, answer.get("message"), answer.get("response")):
        if isinstance(holder, dict) and isinstance(holder.get("usage"), dict):
            usage: dict[str, Any] = holder["usage"]
            return usage
    return None


TRACE: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("mlxctl_trace", default=None)


# -- the stamps the request path makes (no-ops outside an instrumented request) ----------


def routed(tier: str) -> None:
    """The request has its tier (``Gateway.handle``)."""
    trace = TRACE.get()
    if trace is not None and trace.entered is None:
        trace.tier = tier
        trace.entered = time.perf_counter()


def sending() -> None:
    """The request goes to the tier now (its first attempt)."""
    trace = TRACE.get()
    if trace is not None and trace.sent is None:
        trace.sent = time.perf_counter()


def answered() -> None:
    """The tier's whole (not streamed) answer has been read."""
    trace = TRACE.get()
    if trace is not None:
        trace.answered = time.perf_counter()


class Metrics:
    """The gateway's registry: request metrics, and the demand counts read at scrape time."""

    def __init__(
        self,
        demand: Demand | None = None,
        routes: Callable[[], Iterable[Route]] = tuple,
        *,
        peers: Demand | None = None,
    ):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mlxctl_gateway_requests", "Requests answered, by tier, route and status.",
            ["tier", "route", "status"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "mlxctl_gateway_request_duration_seconds",
            "Arrival to the answer's last byte (a stream: its end).",
            ["tier", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "mlxctl_gateway_time_to_first_token_seconds",
            "Streams: arrival to the first event carrying output.",
            ["tier", "route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue = Histogram(
            "mlxctl_gateway_queue_seconds",
            "Routed to a tier to sent to it: the gate's queue and an on-demand tier's hold.",
            ["tier"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "mlxctl_gateway_overhead_seconds",
            "The gateway's own time on a request (before the tier; after it, unstreamed).",
            ["route"], buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "mlxctl_gateway_tokens", "Tokens in (prompt) and out (generated), by tier.",
            ["tier", "direction"], registry=r,
        )  # fmt: skip
        self.loads = Counter(
            "mlxctl_gateway_tier_loads", "An on-demand tier's verdict became ready.",
            ["tier"], registry=r,
        )  # fmt: skip
        self.unloads = Counter(
            "mlxctl_gateway_tier_unloads",
            "An on-demand tier went from ready (or draining) to cold: unloaded or evicted.",
            ["tier"], registry=r,
        )  # fmt: skip
        self.peer_failures = Counter(
            "mlxctl_gateway_peer_failures",
            "Requests another machine's gateway did not serve, by host and why (refused, "
            "timeout, broken, key, unknown_tier, status).",
            ["host", "reason"], registry=r,
        )  # fmt: skip
        if demand is not None:
            r.register(_DemandCollector(demand, routes, peers))
        ProcessCollector(registry=r)
        # Each metric's children by label values: ``labels()`` costs ~1.5 µs (a lock, a
        # validation) and a request updates up to seven.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format the scraper asks for (its ``Accept``): the text
        format 0.0.4 by default, OpenMetrics when asked."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def peer_failed(self, host: str, reason: str) -> None:
        """A machine's gateway did not serve a request relayed to it (gateway.peers)."""
        self._child(self.peer_failures, host, reason).inc()

    def verdict(self, tier: str, old: TierVerdict | None, new: TierVerdict | None) -> None:
        """An on-demand tier's verdict changed (``Demand``'s answers)."""
        was = old.state if old is not None else None
        now = new.state if new is not None else None
        if now == "ready" and was != "ready":
            self.loads.labels(tier).inc()
        elif now == "cold" and was in ("ready", "draining"):
            self.unloads.labels(tier).inc()

    def record(self, trace: Trace, route: str, end: float) -> None:
        trace.finish()
        tier = trace.tier
        if trace.error is not None:
            status = trace.error
        elif trace.status is None:
            status = "499"
        else:
            status = str(trace.status)
        child = self._child
        child(self.requests, tier, route, status).inc()
        child(self.duration, tier, route).observe(end - trace.arrival)
        if trace.first is not None:
            child(self.ttft, tier, route).observe(trace.first - trace.arrival)
        if trace.entered is not None:
            own = trace.entered - trace.arrival
            if trace.answered is not None and trace.done_out is not None:
                own += max(0.0, trace.done_out - trace.answered)
            child(self.overhead, route).observe(own)
            if trace.sent is not None:
                child(self.queue, tier).observe(max(0.0, trace.sent - trace.entered))
        if not tier:
            return
        out = trace.out_tokens
        if out is None and trace.stream:
            out = trace.deltas
        if out:
            child(self.tokens, tier, "out").inc(out)
        if trace.in_tokens:
            child(self.tokens, tier, "in").inc(trace.in_tokens)


class _DemandCollector(Collector):
    """In flight, queued and the verdicts, read from the demand counts when scraped."""

    def __init__(
        self, demand: Demand, routes: Callable[[], Iterable[Route]], peers: Demand | None = None
    ) -> None:
        self.demand = demand
        self.routes = routes
        self.peers = peers

    def describe(self) -> Iterable[Metric]:
        return ()  # collected lazily: nothing is read at registration

    def collect(self) -> Iterator[Metric]:
        demand = self.demand
        in_flight = GaugeMetricFamily(
            "mlxctl_gateway_in_flight_requests",
            "Requests sent to the tier and not finished (a stream: until its last byte).",
            labels=["tier"],
        )
        queued = GaugeMetricFamily(
            "mlxctl_gateway_queued_requests",
            "Requests held for the tier: at its gate, or while an on-demand tier loads.",
            labels=["tier"],
        )
        state = GaugeMetricFamily(
            "mlxctl_gateway_tier_state",
            "1 for the tier's state: an on-demand tier's verdict (none: unknown), or always "
            "(draining while a planned restart drains it).",
            labels=["tier", "state"],
        )
        host = GaugeMetricFamily(
            "mlxctl_gateway_tier_host",
            "1 for the machine serving the tier, in a stack of several (docs/multi-host.md).",
            labels=["tier", "host"],
        )
        routes = {route.name: route for route in self.routes()}
        loads = list(demand.snapshot().tiers.items())
        if self.peers is not None:  # the requests relayed to other machines' gateways
            peers = self.peers
            loads += [(n, peers.load(n)) for n, route in routes.items() if route.peer is not None]
        for name, load in loads:
            in_flight.add_metric([name], load.in_flight)
            queued.add_metric([name], load.waiting)
        for name, route in routes.items():
            if route.host is not None:
                host.add_metric([name, route.host], 1)
            if route.peer is not None:
                state.add_metric([name, "elsewhere"], 1)
            elif route.on_demand:
                verdict = demand.verdict(name)
                state.add_metric([name, verdict.state if verdict else "unknown"], 1)
            else:
                state.add_metric([name, "draining" if demand.draining(name) else "always"], 1)
        yield in_flight
        yield queued
        yield state
        yield host


class Instrumented:
    """The ASGI middleware that measures every API request (see the module's doc)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNCOUNTED):
            await self.app(scope, receive, send)
            return
        clock = time.perf_counter
        trace = Trace(clock())

        async def sent(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                await send(message)
                now = clock()
                trace.done_out = now
                if body := message.get("body"):
                    trace.feed(body, now)
                return
            if kind == "http.response.start":
                trace.status = message["status"]
                for key, value in message.get("headers", ()):
                    if key.lower() == b"content-type":
                        trace.stream = value.startswith(b"text/event-stream")
                        break
            await send(message)

        token = TRACE.set(trace)
        try:
            await self.app(scope, receive, sent)
        finally:
            TRACE.reset(token)
            self.metrics.record(trace, route_label(scope), clock())


def route_label(scope: Scope) -> str:
    """The matched route's path (``/chat/completions`` counts as ``/v1/chat/completions``);
    ``other`` for a path no route matches, so a scan of random paths adds no series."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "other"
    return path if path.startswith("/v1/") else "/v1" + path
