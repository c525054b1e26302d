"""On-demand tiers, the gateway's side: requests held by the controller's verdicts, the
demand reports, keep-alives and 503s.

Everything runs for real on this machine, in one event loop: the gateway app under
uvicorn on 127.0.0.1, a fake controller (an aiohttp app on a Unix socket that records
each report and answers the verdicts a test scripts) and a fake tier (an aiohttp app
playing an OpenAI server, started late to play a tier that loads). The cadences are
shortened; no test sleeps for correctness: each waits for a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvicorn
from aiohttp import web

from mlxctl.gateway.app import Gateway, build_app
from mlxctl.gateway.demand import Cadence
from mlxctl.gateway.routing import RoutingTable
from mlxctl.runtimes.gateway import (
    DemandAnswer,
    DemandReport,
    GatewayConfig,
    Route,
    TierLoad,
    TierVerdict,
)

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "hi"}]
FAST = Cadence(
    held=0.05, busy=0.2, idle=0.5, gap=0.01, port_poll=0.02, keepalive=0.05, first=1.0,
    answer_timeout=1.0, max_waiting=64,
)  # fmt: skip
KEEPALIVE = b": keep-alive\n\n"
DEADLINE = 10.0


class StepClock:
    """Real monotonic time (asyncio's timeouts use it too); a wall clock a test sets."""

    def __init__(self) -> None:
        self.now: float | None = None

    def time(self) -> float:
        return self.now if self.now is not None else time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        raise AssertionError("the gateway must never block its event loop")


class Controller:
    """A fake controller's admin socket: keeps every report, answers ``verdicts``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reports: list[DemandReport] = []
        self.verdicts: dict[str, TierVerdict] = {}
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None

    async def start(self) -> Controller:
        app = web.Application()
        app.router.add_put("/v1/demand", self.demand)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(self.path)).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def demand(self, request: web.Request) -> web.Response:
        self.reports.append(DemandReport.model_validate_json(await request.read()))
        self.changed.set()
        answer = DemandAnswer(tiers=dict(self.verdicts))
        return web.Response(text=answer.model_dump_json(), content_type="application/json")

    def say(
        self, tier: str, state: Any, detail: str = "", retry_after: float | None = None
    ) -> None:
        self.verdicts[tier] = TierVerdict(state=state, detail=detail, retry_after=retry_after)

    def load(self, tier: str) -> TierLoad:
        """What the latest report said of ``tier``."""
        assert self.reports, "no report yet"
        return self.reports[-1].tiers.get(tier, TierLoad())

    async def told(self) -> None:
        """Wait until the gateway has the verdicts as they are now: two more reports (the
        second began after the answer to the first was applied: one report at a time)."""
        count = len(self.reports)
        await self.until(lambda _: len(self.reports) >= count + 2)

    async def until(self, check: Callable[[TierLoad], bool], tier: str = "big") -> TierLoad:
        """Wait (with a deadline) for a report whose ``tier`` passes ``check``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while True:
            if self.reports and check(self.load(tier)):
                return self.load(tier)
            self.changed.clear()
            left = end - loop.time()
            assert left > 0, f"no such report; last: {self.reports[-1:] or None}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)


class Tier:
    """A fake OpenAI server on a fixed port (started late: a tier that loads).

    A stream sends one event, then waits for ``finish`` before its last event and
    ``[DONE]``, so a test can hold a request in flight for as long as it likes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.finish = asyncio.Event()
        self.finish.set()
        self.started_streams = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> Tier:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            answer = {"model": body["model"], "choices": [{"message": {"content": "hello"}}]}
            return web.json_response(answer)
        self.started_streams += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(event("first"))
        await self.finish.wait()
        await response.write(event("last") + b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def event(content: str) -> bytes:
    chunk = {"model": "default_model", "choices": [{"delta": {"content": content}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for the admin socket: a Unix socket's path must fit in 107 bytes, which
    pytest's tmp_path for a long test name does not."""
    path = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Setup:
    """A gateway under uvicorn, its controller and its tiers, all in this loop."""

    def __init__(
        self, sock: Path, *, hold: float = 30.0, cadence: Cadence = FAST, small_capacity: int = 4
    ) -> None:
        self.sock = sock
        self.clock = StepClock()
        self.big = Tier(free_port())  # on demand
        self.small = Tier(free_port())  # always
        routes = (
            Route(name="big", port=self.big.port, served_model="default_model",
                  on_demand=True, hold=hold),
            Route(name="small", port=self.small.port, served_model="default_model",
                  max_concurrency=small_capacity),
        )  # fmt: skip
        self.gateway = Gateway(
            KEY,
            RoutingTable(GatewayConfig(routes=routes)),
            clock=self.clock,
            admin_socket=sock,
            cadence=cadence,
        )
        self.port = free_port()
        self.controller = Controller(sock)
        self.session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def post(self, model: str = "big", *, stream: bool = False) -> Any:
        assert self.session is not None
        body = {"model": model, "messages": MSG, "stream": stream}
        return self.session.post(self.url, json=body, headers=AUTH)

    async def ask(self, model: str = "big") -> tuple[int, dict[str, Any], dict[str, str]]:
        async with self.post(model) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


@contextlib.asynccontextmanager
async def running(setup: Setup, *, controller: bool = True) -> AsyncIterator[Setup]:
    if controller:
        await setup.controller.start()
    await setup.small.start()
    config = uvicorn.Config(build_app(setup.gateway), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", setup.port))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    setup.session = aiohttp.ClientSession()
    setup.gateway.demand.start()  # as serve() does: heartbeats from the start
    try:
        await until(lambda: server.started)
        yield setup
    finally:
        await setup.session.close()
        server.should_exit = True
        await asyncio.wait_for(serving, DEADLINE)
        sock.close()
        await setup.gateway.aclose()
        for tier in (setup.big, setup.small):
            tier.finish.set()
            await tier.stop()
        await setup.controller.stop()


async def until(check: Callable[[], bool], what: str = "the condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not check():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


async def read_stream(resp: aiohttp.ClientResponse) -> list[bytes]:
    """The stream's events and comments, each with its blank line."""
    data = await resp.content.read()
    return [part + b"\n\n" for part in data.split(b"\n\n") if part]


def test_a_cold_request_is_held_then_served_once_loading_and_listening(short_dir: Path) -> None:
    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            s.controller.say("big", "cold", "starting")
            asking = asyncio.ensure_future(s.ask())
            load = await s.controller.until(lambda t: t.waiting == 1)
            assert load.in_flight == 0 and load.waiting_since is not None
            s.controller.say("big", "loading", "loading the model")
            await s.controller.until(lambda t: t.waiting == 1)  # still held: nothing listens
            assert not asking.done()
            await s.big.start()
            status, body, _ = await asyncio.wait_for(asking, DEADLINE)
            assert (status, body["model"]) == (200, "big")
            done = await s.controller.until(lambda t: t.waiting == 0 and t.last_end is not None)
            assert done.in_flight == 0

    run(test)


def test_a_held_stream_gets_keepalives_at_once_then_the_answer(short_dir: Path) -> None:
    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            s.controller.say("big", "loading", "loading the model")
            async with s.post(stream=True) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), DEADLINE)
                second = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), DEADLINE)
                assert first == second == KEEPALIVE
                await s.big.start()
                s.controller.say("big", "ready")
                rest = await read_stream(resp)
            events = [e for e in rest if e != KEEPALIVE]
            assert [json.loads(e[6:])["model"] for e in events[:2]] == ["big", "big"]
            assert events[-1] == b"data: [DONE]\n\n"

    run(test)


def test_unavailable_is_a_503_with_retry_after_and_the_detail(short_dir: Path) -> None:
    detail = "not enough memory: tier 'chat' (18.2 GB) is busy"

    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            s.controller.say("big", "unavailable", detail, retry_after=7.5)
            status, body, headers = await s.ask()
            assert (status, headers["Retry-After"]) == (503, "8")
            assert body["error"]["message"] == detail
            assert body["error"]["code"] == "tier_unavailable"
            # Held first (a stream with its headers out), then unavailable: in-band.
            s.controller.say("big", "cold", "waiting for memory")
            await s.controller.told()
            async with s.post(stream=True) as resp:
                assert resp.status == 200
                await resp.content.readuntil(b"\n\n")
                s.controller.say("big", "unavailable", detail, retry_after=7.5)
                parts = await read_stream(resp)
            assert parts[:-1] == [KEEPALIVE] * (len(parts) - 1)
            error = json.loads(parts[-1][len(b"data: ") :])["error"]
            assert error["message"] == detail and error["retry_after"] == 8
            assert error["status"] == 503
            await s.controller.until(lambda t: t.waiting == 0)

    run(test)


def test_a_request_not_served_within_its_hold_is_a_503_naming_what_holds_it(
    short_dir: Path,
) -> None:
    detail = "waiting for memory: tier 'chat' holds 18.2 GB"

    async def test() -> None:
        setup = Setup(short_dir / "admin.sock", hold=0.3)
        async with running(setup) as s:
            s.controller.say("big", "cold", detail, retry_after=30)
            started = time.monotonic()
            status, body, headers = await s.ask()
            waited = time.monotonic() - started
            assert (status, headers["Retry-After"]) == (503, "30")
            assert body["error"]["code"] == "tier_not_ready"
            assert body["error"]["message"] == f"tier 'big' was not ready within 0.3 s: {detail}"
            assert 0.3 <= waited < 3
            await s.controller.until(lambda t: t.waiting == 0)

    run(test)


@pytest.mark.parametrize("socket_state", ["missing", "refusing"])
def test_without_a_controller_a_cold_request_is_told_how_to_start_one(
    short_dir: Path, socket_state: str
) -> None:
    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        dead = None
        if socket_state == "refusing":  # bound, never listening: what a dead process leaves
            dead = socket.socket(socket.AF_UNIX)
            dead.bind(str(setup.sock))
        try:
            async with running(setup, controller=False) as s:
                started = time.monotonic()
                status, body, headers = await s.ask()
                assert time.monotonic() - started < 2  # at once, not after the hold
                assert status == 503 and int(headers["Retry-After"]) >= 1
                assert body["error"]["code"] == "controller_unavailable"
                assert "`mlxctl reconcile`" in body["error"]["message"]
                assert str(setup.sock) in body["error"]["message"]
                # An always tier is not held for verdicts: it serves without a controller.
                status, answer, _ = await s.ask("small")
                assert (status, answer["model"]) == (200, "small")
        finally:
            if dead is not None:
                dead.close()

    run(test)


def test_a_held_request_outlives_a_controller_restart(short_dir: Path) -> None:
    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            s.controller.say("big", "loading", "loading the model")
            asking = asyncio.ensure_future(s.ask())
            await s.controller.until(lambda t: t.waiting == 1)
            await s.controller.stop()  # the socket goes: reports fail, the request is held
            await asyncio.sleep(0.3)  # several failed reports
            assert not asking.done()
            restarted = Controller(setup.sock)
            restarted.say("big", "ready")
            await restarted.start()
            s.controller = restarted
            # The new controller learns of the held request from the next report.
            await restarted.until(lambda t: t.waiting == 1)
            await s.big.start()
            status, _, _ = await asyncio.wait_for(asking, DEADLINE)
            assert status == 200

    run(test)


def test_draining_holds_new_requests_while_the_one_in_flight_finishes(short_dir: Path) -> None:
    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            await s.big.start()
            s.big.finish.clear()
            s.controller.say("big", "ready")
            async with s.post(stream=True) as streaming:
                assert await streaming.content.readuntil(b"\n\n") != KEEPALIVE
                await s.controller.until(lambda t: t.in_flight == 1)
                s.controller.say("big", "draining", "unloading: idle for 300 s")
                await s.controller.told()
                # Said back at once: the controller stops the tier only once it reads
                # held_back with nothing in flight.
                drained = await s.controller.until(lambda t: t.held_back)
                assert drained.in_flight == 1
                held = asyncio.ensure_future(s.ask())
                load = await s.controller.until(lambda t: t.waiting == 1)
                assert load.in_flight == 1 and load.held_back and s.big.started_streams == 1
                s.big.finish.set()
                rest = await read_stream(streaming)
            assert rest[-1] == b"data: [DONE]\n\n"  # the one in flight was not cut
            await s.controller.until(lambda t: t.in_flight == 0 and t.waiting == 1)
            assert not held.done()
            s.controller.say("big", "ready")
            status, _, _ = await asyncio.wait_for(held, DEADLINE)
            assert status == 200
            assert not (await s.controller.until(lambda t: not t.held_back)).held_back

    run(test)


def test_last_end_is_the_streams_last_byte_not_its_start(short_dir: Path) -> None:
    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            await s.big.start()
            s.big.finish.clear()
            s.controller.say("big", "ready")
            s.clock.now = 1000.0
            async with s.post(stream=True) as resp:
                await resp.content.readuntil(b"\n\n")
                await s.controller.until(lambda t: t.in_flight == 1)
                s.clock.now = 2000.0
                s.big.finish.set()
                await read_stream(resp)
            done = await s.controller.until(lambda t: t.in_flight == 0)
            assert done.last_end == 2000.0

    run(test)


def test_in_flight_is_counted_for_always_tiers_too(short_dir: Path) -> None:
    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            s.small.finish.clear()
            async with s.post("small", stream=True) as one, s.post("small", stream=True) as two:
                await one.content.readuntil(b"\n\n")
                await two.content.readuntil(b"\n\n")
                load = await s.controller.until(lambda t: t.in_flight == 2, "small")
                assert load.waiting == 0 and load.last_end is None
                s.small.finish.set()
                await read_stream(one)
                await read_stream(two)
            done = await s.controller.until(lambda t: t.in_flight == 0, "small")
            assert done.last_end is not None
            assert "big" in s.controller.reports[-1].tiers  # every routed tier, always

    run(test)


def test_a_burst_of_held_requests_makes_few_reports(short_dir: Path) -> None:
    async def test() -> None:
        setup = Setup(short_dir / "admin.sock", cadence=Cadence(held=1.0, busy=2.0, gap=0.05))
        async with running(setup) as s:
            s.controller.say("big", "cold", "waiting for memory")
            await s.controller.until(lambda t: True)  # the start-up heartbeat
            before = len(s.controller.reports)
            asking = [asyncio.ensure_future(s.ask()) for _ in range(32)]
            await s.controller.until(lambda t: t.waiting == 32)
            burst = s.controller.reports[before:]
            assert len(burst) <= 6, [r.tiers["big"].waiting for r in burst]
            assert max(r.tiers["big"].waiting for r in s.controller.reports) == 32
            s.controller.say("big", "unavailable", "its load failed", retry_after=60)
            answers = await asyncio.wait_for(asyncio.gather(*asking), DEADLINE)
            assert {a[0] for a in answers} == {503}

    run(test)


def test_a_client_that_goes_away_while_held_is_no_longer_waiting(short_dir: Path) -> None:
    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            s.controller.say("big", "cold", "waiting for memory")
            asking = asyncio.ensure_future(s.ask())
            await s.controller.until(lambda t: t.waiting == 1)
            asking.cancel()  # the client closes its connection
            with contextlib.suppress(asyncio.CancelledError):
                await asking
            await s.controller.until(lambda t: t.waiting == 0)
            async with s.post(stream=True) as resp:
                await resp.content.readuntil(b"\n\n")
                await s.controller.until(lambda t: t.waiting == 1)
                resp.close()
            await s.controller.until(lambda t: t.waiting == 0)
            # And it never reaches the tier once that loads.
            await s.big.start()
            s.controller.say("big", "ready")
            await s.controller.told()
            assert s.big.started_streams == 0

    run(test)


def test_too_many_waiting_requests_are_refused_at_once(short_dir: Path) -> None:
    async def test() -> None:
        cadence = Cadence(held=0.05, gap=0.01, max_waiting=2)
        setup = Setup(short_dir / "admin.sock", cadence=cadence)
        async with running(setup) as s:
            s.controller.say("big", "cold", "waiting for memory")
            held = [asyncio.ensure_future(s.ask()) for _ in range(2)]
            await s.controller.until(lambda t: t.waiting == 2)
            status, body, headers = await s.ask()
            assert (status, body["error"]["code"]) == (503, "too_many_waiting")
            assert "Retry-After" in headers
            s.controller.say("big", "unavailable", "gone")
            await asyncio.wait_for(asyncio.gather(*held), DEADLINE)

    run(test)


def test_a_planned_restart_holds_an_always_tiers_new_requests_while_one_runs(
    short_dir: Path,
) -> None:
    """``draining`` for an always tier (a planned restart): the stream running finishes,
    a new request is held (reported as waiting) and sent once the verdict is ready."""

    async def test() -> None:
        setup = Setup(short_dir / "admin.sock")
        async with running(setup) as s:
            s.small.finish.clear()
            async with s.post("small", stream=True) as streaming:
                await streaming.content.readuntil(b"\n\n")
                await s.controller.until(lambda t: t.in_flight == 1, "small")
                s.controller.say("small", "draining", "restart (args changed)")
                await s.controller.told()
                drained = await s.controller.until(lambda t: t.held_back, "small")
                assert drained.in_flight == 1
                held = asyncio.ensure_future(s.ask("small"))
                await s.controller.until(lambda t: t.waiting == 1, "small")
                s.small.finish.set()
                rest = await read_stream(streaming)
            assert rest[-1] == b"data: [DONE]\n\n"
            assert not held.done() and s.small.started_streams == 1
            s.controller.say("small", "ready")
            status, _, _ = await asyncio.wait_for(held, DEADLINE)
            assert status == 200

    run(test)


def test_a_request_queued_at_the_gate_when_a_drain_begins_is_held_for_the_new_process(
    short_dir: Path,
) -> None:
    """One stream at a one-slot always tier, a second queued at its gate; ``draining``
    comes: when the first ends, the second is held (waiting, never sent to the old
    process the restart stops, nothing in flight) and sent once the verdict is ready."""

    async def test() -> None:
        setup = Setup(short_dir / "admin.sock", small_capacity=1)
        async with running(setup) as s:
            s.small.finish.clear()
            async with s.post("small", stream=True) as first:
                await first.content.readuntil(b"\n\n")
                queued = asyncio.ensure_future(s.ask("small"))
                await s.controller.until(lambda t: (t.in_flight, t.waiting) == (1, 1), "small")
                s.controller.say("small", "draining", "restart (args changed)")
                await s.controller.told()
                s.small.finish.set()
                rest = await read_stream(first)
            assert rest[-1] == b"data: [DONE]\n\n"
            drained = await s.controller.until(lambda t: t.held_back and t.in_flight == 0, "small")
            assert drained.waiting == 1 and not queued.done()
            s.controller.say("small", "ready")
            status, body, _ = await asyncio.wait_for(queued, DEADLINE)
            assert status == 200 and body["choices"][0]["message"]["content"] == "hello"

    run(test)


def test_an_idle_gateway_reports_every_second_while_an_on_demand_tier_is_loaded() -> None:
    """A ``draining`` verdict (idle timeout over) comes back only as a report's answer:
    while a tier may be drained, the idle heartbeat is 1 s, not 5 s."""
    from mlxctl.gateway.demand import Demand
    from mlxctl.testing.fakes import FakeClock

    demand = Demand(None, FakeClock(), tiers=lambda: ("big",), cadence=Cadence())
    assert demand._pause() == 5.0
    demand._apply(DemandAnswer(tiers={"big": TierVerdict(state="ready")}))
    assert demand._pause() == 1.0
    demand._apply(DemandAnswer(tiers={"big": TierVerdict(state="loading")}))
    assert demand._pause() == 1.0  # its first request was sent, its readiness check runs
    demand._apply(DemandAnswer(tiers={"big": TierVerdict(state="cold")}))
    assert demand._pause() == 5.0
