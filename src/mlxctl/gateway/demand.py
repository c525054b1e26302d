"""Demand: the gateway's counts of requests per tier, its reports, and the verdicts back.

The gateway decides nothing about tiers. It counts, per tier, the requests it holds
(``waiting``: arrived, not sent yet) and the ones a tier is answering (``in_flight``,
a stream until its last byte), remembers when the last one ended (``last_end``), and
reports that whole view to the controller (``PUT /v1/demand`` on the admin socket
named by ``MLXCTL_ADMIN_SOCKET``). The answer carries a verdict per on-demand tier,
which says what to do with the requests held for it: send them (``ready``), keep
holding them (``cold``, ``loading``, ``draining``) or answer them with a 503 now
(``unavailable``).

Reports are level-triggered (the whole view each time, so a restarted controller
learns everything from the next one) and come from one task, so at most one is in
flight: a change made while one is under way (a new held request, a request ending)
is carried by the next, sent as soon as the current one is answered (no sooner than
:attr:`Cadence.gap` after the previous one began: a burst of requests makes a few
reports, not one each). Without changes the task re-reports every
:attr:`Cadence.held` seconds while a request is held for a tier that is not ready
(so a ``ready`` verdict reaches it quickly), every :attr:`Cadence.busy` seconds while
anything is held or in flight, and every :attr:`Cadence.idle` seconds otherwise (so a
controller that restarted learns ``last_end``).

Nothing here may hurt a request: a report that fails (no socket, refused, a timeout,
a malformed answer) is logged once per kind of failure and retried by the next cycle,
never raised; the event loop never blocks on it; held requests are bounded per tier
(:attr:`Cadence.max_waiting`) and each is forgotten once its hold has passed, even if
its handler never ran its cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import aiohttp
from pydantic import ValidationError

from mlxctl.runtimes.base import HOST
from mlxctl.runtimes.gateway import (
    ADMIN_SOCKET_ENV,
    DemandAnswer,
    DemandReport,
    Route,
    TierLoad,
    TierVerdict,
)

if TYPE_CHECKING:
    from mlxctl.machine.interfaces import Clock

# The controller reads the gateway as stale after a few missed reports (its demand book
# names this constant): the heartbeat while requests are held or in flight.
REPORT_EVERY = 2.0
# Seconds a client is told to wait when a verdict gives no ``retry_after``.
DEFAULT_RETRY_AFTER = 5.0
# The controller's answer is a few verdicts; anything larger is not an answer.
MAX_ANSWER_BYTES = 1 << 20
URL = "http://mlxctl/v1/demand"
HOW_TO_START = "start one with `mlxctl reconcile` (or mlxctl's service)"


@dataclass(frozen=True)
class Cadence:
    """How often the gateway reports and polls (tests shorten them)."""

    # Re-report while a request is held for a tier that is not ready: the added latency
    # of a cold request over the tier's own load is at most about this plus one answer.
    held: float = 0.1
    busy: float = REPORT_EVERY
    idle: float = 5.0
    # While an on-demand tier is loaded (its verdict ``ready``, ``loading`` or
    # ``draining``): the controller's verdict
    # ``draining`` (its idle timeout is over) comes back only as the answer to a report,
    # and the tier stops only once the gateway says it holds its requests, so an idle
    # unload is late by up to this much.
    loaded: float = 1.0
    # No two reports start closer than this: bursts are coalesced (at most 20 a second
    # however busy the gateway is).
    gap: float = 0.05
    # A tier whose verdict is ``loading`` (or ``ready`` but refusing) is polled this often:
    # a held request is sent as soon as its port accepts connections.
    port_poll: float = 0.025
    # A held stream gets an SSE comment this often (clients and proxies see bytes).
    keepalive: float = 3.0
    # A new held request waits this long for its report's answer before a stream's headers
    # go out (a quick ``ready`` or ``unavailable`` is then a plain answer or a real 503).
    first: float = 1.0
    # Seconds to wait for the controller's answer to a report.
    answer_timeout: float = 2.0
    # Requests held at once per tier; more are answered with 503 at once.
    max_waiting: int = 256
    # A request arriving for a tier that is not ready while the socket is missing or
    # refuses is answered "no controller" at once when the controller has not answered
    # for this long (or never did); within it, the controller is taken to be restarting.
    grace: float = 10.0


@dataclass(frozen=True)
class Refusal:
    """Why a held request is answered with 503 now: the message names what holds it."""

    message: str
    retry_after: float
    code: str

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds (the header takes no fractions), at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


Send = Literal["send"]
Hold = Literal["hold"]
SEND: Send = "send"
HOLD: Hold = "hold"
Step = Send | Hold | Refusal
PortState = Literal["unknown", "open", "closed"]
ClaimState = Literal["held", "sent", "closed"]


class _Tier:
    """One tier's counts, its latest verdict and what its port did lately."""

    __slots__ = ("held", "in_flight", "last_end", "port", "prober", "verdict")

    def __init__(self) -> None:
        # ticket -> (arrival, wall clock; forget after, monotonic or None: never)
        self.held: dict[int, tuple[float, float | None]] = {}
        self.in_flight = 0
        self.last_end: float | None = None
        self.verdict: TierVerdict | None = None
        self.port: PortState = "unknown"
        self.prober: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return not self.held and self.in_flight == 0


class Claim:
    """One request's place in its tier's counts, from arrival to end.

    ``held`` -> ``sent`` (counted in flight) -> ``closed``; :meth:`refused` puts a
    request whose connection was refused back among the held ones, keeping its
    arrival. :meth:`close` is idempotent, so every exit path may call it and a count
    can never leak or be taken twice.
    """

    def __init__(
        self,
        demand: Demand,
        tier: str,
        ticket: int,
        change: int,
        *,
        hold: float | None,
        deadline: float | None,
    ) -> None:
        self.demand = demand
        self.tier = tier
        self.ticket = ticket
        # The change number of the arrival: a report that carried it has number >= this.
        self.change = change
        # Seconds it may be held, and until when (monotonic); None: it waits for a gate only.
        self.hold = hold
        self.deadline = deadline
        self.arrived = demand.clock.time()
        self.state: ClaimState = "held"

    @property
    def urgent(self) -> bool:
        """A change to it is reported at once (an on-demand request), not by the heartbeat."""
        return self.hold is not None

    @property
    def held(self) -> bool:
        return self.state == "held"

    def sent(self) -> None:
        if self.state == "held":
            self.state = "sent"
            self.demand._sent(self)

    def refused(self) -> None:
        if self.state == "sent":
            self.state = "held"
            self.demand._refused(self)

    def close(self) -> None:
        if self.state != "closed":
            was, self.state = self.state, "closed"
            self.demand._closed(self, was)


class Demand:
    """The counts, the report loop and the verdicts (one per gateway process)."""

    def __init__(
        self,
        socket: Path | None,
        clock: Clock,
        *,
        tiers: Callable[[], Iterable[str]] = tuple,
        cadence: Cadence | None = None,
        log: Callable[[str], None] = lambda _: None,
        pid: int = 1,
    ) -> None:
        self.socket = socket
        self.clock = clock
        self.cadence = cadence or Cadence()
        self._names = tiers
        self._log = log
        self._pid = pid
        self._tiers: dict[str, _Tier] = {}
        self._tickets = itertools.count(1)
        # Every change to the counts has a number; a report carries the latest one.
        self._change = 0
        self._settled = 0  # the change number of the last report answered or failed
        self._heard: float | None = None  # when the controller last answered (monotonic)
        self._absent: str | None = None  # why the last report found no controller
        self._failure: str | None = None  # why the last report failed, if it did
        self._dirty = asyncio.Event()
        self._news = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # Told each change of a tier's verdict state (the gateway's metrics: loads, unloads).
        self.on_verdict: Callable[[str, TierVerdict | None, TierVerdict | None], None] | None = None

    # -- counts -------------------------------------------------------------------------

    def claim(self, tier: str, *, hold: float | None = None) -> Claim | None:
        """Count a request arriving for ``tier`` as held; None when the tier already has
        :attr:`Cadence.max_waiting` requests held (the caller answers 503).

        ``hold``: the seconds it may be held (an on-demand request: reported at once,
        and forgotten after the hold even if its cleanup never ran); None for a request
        that only waits for its tier's gate (counted, picked up by the next heartbeat).
        """
        state = self._tier(tier)
        now = self.clock.monotonic()
        if hold is not None:
            self._forget_expired(state, now)
            if len(state.held) >= self.cadence.max_waiting:
                return None
        ticket = next(self._tickets)
        deadline = None if hold is None else now + hold
        self._change += 1
        claim = Claim(self, tier, ticket, self._change, hold=hold, deadline=deadline)
        state.held[ticket] = (claim.arrived, _forget_after(deadline))
        if claim.urgent:
            self._dirty.set()
            self.start()
        return claim

    def _sent(self, claim: Claim) -> None:
        state = self._tier(claim.tier)
        state.held.pop(claim.ticket, None)
        state.in_flight += 1
        self._changed(claim.urgent)

    def _refused(self, claim: Claim) -> None:
        state = self._tier(claim.tier)
        state.in_flight = max(0, state.in_flight - 1)
        state.held[claim.ticket] = (claim.arrived, _forget_after(claim.deadline))
        self._changed(claim.urgent)

    def _closed(self, claim: Claim, was: ClaimState) -> None:
        state = self._tier(claim.tier)
        if was == "held":
            state.held.pop(claim.ticket, None)
        else:
            state.in_flight = max(0, state.in_flight - 1)
            # Idle time counts from here: the answer's (or the stream's) last byte.
            state.last_end = self.clock.time()
        # An always tier's counts ride on the heartbeat; an on-demand tier's go at once.
        self._changed(claim.urgent)

    def _changed(self, urgent: bool) -> None:
        self._change += 1
        if urgent:
            self._dirty.set()

    def _tier(self, name: str) -> _Tier:
        state = self._tiers.get(name)
        if state is None:
            state = self._tiers[name] = _Tier()
        return state

    @staticmethod
    def _forget_expired(state: _Tier, now: float) -> None:
        """Drop held requests whose hold is long over (a handler that never cleaned up)."""
        stale = [t for t, (_, forget) in state.held.items() if forget is not None and now > forget]
        for ticket in stale:
            del state.held[ticket]

    def load(self, tier: str) -> TierLoad:
        """What the next report says of ``tier``."""
        state = self._tiers.get(tier)
        if state is None:
            return TierLoad()
        self._forget_expired(state, self.clock.monotonic())
        since = min((arrived for arrived, _ in state.held.values()), default=None)
        return TierLoad(
            waiting=len(state.held),
            in_flight=state.in_flight,
            waiting_since=since,
            last_end=state.last_end,
            # Its verdict says draining, so no new request is sent to it (see step): with
            # nothing in flight in this same report, nothing is on its way either.
            held_back=state.verdict is not None and state.verdict.state == "draining",
        )

    def snapshot(self) -> DemandReport:
        """The whole view: every routed tier, and any other one still counting requests
        (a tier removed from the routes while a stream to it runs)."""
        names = set(self._names())
        for name, state in list(self._tiers.items()):
            if name not in names and state.idle:
                del self._tiers[name]  # gone from the routes and finished: forgotten
        names |= set(self._tiers)
        return DemandReport(
            gateway_pid=self._pid, tiers={name: self.load(name) for name in sorted(names)}
        )

    # -- verdicts -------------------------------------------------------------------------

    def verdict(self, tier: str) -> TierVerdict | None:
        state = self._tiers.get(tier)
        return state.verdict if state is not None else None

    def draining(self, tier: str) -> bool:
        """An always tier's new requests are held: a planned restart drains it (while a
        controller answers; without one they go as usual)."""
        verdict = self.verdict(tier)
        return verdict is not None and verdict.state == "draining" and not self._controller_gone()

    def step(self, claim: Claim, route: Route, *, arriving: bool = False) -> Step:
        """What a held request does now, by its tier's latest verdict (and its port).

        ``arriving``: the request just came. It is refused at once, "no controller", when
        the report carrying it found no controller (the socket missing or refusing) and
        none answered within :attr:`Cadence.grace`; a request already held waits on for
        a controller that restarts (its hold bounds it).
        """
        state = self._tier(route.name)
        verdict = state.verdict
        unserved = verdict is None or verdict.state != "ready"
        if arriving and unserved and self._settled >= claim.change and self._controller_gone():
            return self._no_controller(route)
        if verdict is None:
            return HOLD
        if verdict.state == "unavailable":
            return Refusal(
                verdict.detail or f"tier '{route.name}' cannot be served now",
                verdict.retry_after if verdict.retry_after is not None else DEFAULT_RETRY_AFTER,
                "tier_unavailable",
            )
        ready = verdict.state == "ready" and state.port != "closed"
        if ready or (verdict.state in ("ready", "loading") and state.port == "open"):
            return SEND
        if verdict.state in ("ready", "loading"):
            self._watch_port(route)
        return HOLD

    def _controller_gone(self) -> bool:
        """The last report found no controller, and none answered within the grace."""
        if not self._absent:
            return False
        heard = self._heard
        return heard is None or self.clock.monotonic() - heard > self.cadence.grace

    def _no_controller(self, route: Route) -> Refusal:
        message = (
            f"tier '{route.name}' loads on demand, but no mlxctl controller is running to "
            f"load it ({self._absent}): {HOW_TO_START}"
        )
        return Refusal(message, DEFAULT_RETRY_AFTER, "controller_unavailable")

    def expired(self, route: Route, hold: float) -> Refusal:
        """The 503 of a request held for its whole hold: it names what the tier waits for."""
        verdict = self.verdict(route.name)
        why = verdict.detail if verdict is not None and verdict.detail else ""
        if self._failure:
            why = f"{why}; " if why else ""
            why += f"the controller did not answer the last report ({self._failure})"
        elif verdict is None:
            why = why or "the controller gave no verdict for it"
        else:
            why = why or f"it is {verdict.state}"
        retry = verdict.retry_after if verdict is not None else None
        return Refusal(
            f"tier '{route.name}' was not ready within {hold:g} s: {why}",
            retry if retry is not None else DEFAULT_RETRY_AFTER,
            "tier_not_ready",
        )

    async def settle(
        self, claim: Claim, route: Route, *, nap: float = math.inf, first: bool = False
    ) -> Step:
        """Wait, up to ``nap`` seconds, for a held request's fate.

        SEND or a :class:`Refusal` as soon as one applies (woken by each answer and by
        the port poll), a Refusal once the claim's hold is over, else HOLD after ``nap``;
        with ``first``, HOLD already once a report carrying this request was answered
        (or failed), so a stream's headers wait for one round trip at most.
        """
        clock = self.clock
        hold = claim.hold if claim.hold is not None else 0.0
        deadline = claim.deadline if claim.deadline is not None else clock.monotonic()
        until = min(deadline, clock.monotonic() + nap)
        while True:
            news = self._news
            step = self.step(claim, route, arriving=first)
            if step != HOLD:
                return step
            now = clock.monotonic()
            if now >= deadline:
                return self.expired(route, hold)
            if now >= until or (first and self._settled >= claim.change):
                return HOLD
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), until - now)

    def refused(self, route: Route) -> None:
        """The tier refused a connection: its held requests wait for its port again."""
        self._tier(route.name).port = "closed"
        self._watch_port(route)

    def _watch_port(self, route: Route) -> None:
        """One poll of the tier's port at a time, while it has held requests and its
        verdict says it is (or is about to be) serving."""
        state = self._tier(route.name)
        if state.prober is None or state.prober.done():
            state.prober = asyncio.ensure_future(self._poll_port(route.name, route.port))

    async def _poll_port(self, name: str, port: int) -> None:
        while True:
            state = self._tiers.get(name)
            verdict = state.verdict if state is not None else None
            if state is None or not state.held or verdict is None:
                return
            if verdict.state not in ("ready", "loading") or state.port == "open":
                return
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
            except (OSError, TimeoutError):
                state.port = "closed"
            else:
                writer.close()
                state.port = "open"
                self._wake()
                return
            await asyncio.sleep(self.cadence.port_poll)

    def _wake(self) -> None:
        """Wake every held request to look at the verdicts again."""
        news, self._news = self._news, asyncio.Event()
        news.set()

    # -- reports --------------------------------------------------------------------------

    def start(self) -> None:
        """Run the report loop (from the first call on; a no-op once it runs)."""
        if self._task is None or self._task.done():
            self._dirty.set()  # the first report goes at once
            self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for state in self._tiers.values():
            if state.prober is not None:
                state.prober.cancel()
        if self._session is not None:
            await self._session.close()

    def _pause(self) -> float:
        """Seconds until the next report if nothing changes."""
        cadence = self.cadence
        busy = loaded = False
        for state in self._tiers.values():
            cold = state.verdict is None or state.verdict.state != "ready"
            # An on-demand request held (a gate's queue has no deadline) for a tier not ready.
            if cold and any(forget is not None for _, forget in state.held.values()):
                return cadence.held
            busy = busy or not state.idle
            # Loaded, or on its way (a tier whose first request was sent at its port's
            # first answer is still "loading" until the controller's check says ready).
            verdict = state.verdict
            loaded = loaded or (
                verdict is not None and verdict.state in ("ready", "loading", "draining")
            )
        pause = cadence.busy if busy else cadence.idle
        return min(pause, cadence.loaded) if loaded else pause

    async def _run(self) -> None:
        clock = self.clock
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self._pause())
            self._dirty.clear()
            began = clock.monotonic()
            try:
                await self.report()
            except Exception as exc:  # never: report() catches its own; the loop must live
                self._log(f"demand report failed unexpectedly: {exc!r}")
            rest = self.cadence.gap - (clock.monotonic() - began)
            if rest > 0:
                await asyncio.sleep(rest)

    async def report(self) -> None:
        """Send the whole view once and take the verdicts back; never raises."""
        change = self._change
        body = self.snapshot().model_dump_json()
        absent = failure = None
        answer: DemandAnswer | None = None
        if self.socket is None:
            absent = f"the gateway was started without {ADMIN_SOCKET_ENV}"
        else:
            try:
                answer = await self._put(body)
            except aiohttp.ClientConnectorError as exc:
                os_error = getattr(exc, "os_error", None)
                if isinstance(os_error, FileNotFoundError | ConnectionRefusedError):
                    absent = f"{self.socket}: {os_error.strerror or type(os_error).__name__}"
                else:
                    failure = f"{self.socket}: {exc}"
            except (aiohttp.ClientError, TimeoutError, ValidationError, ValueError) as exc:
                failure = _short(exc)
        self._settled = max(self._settled, change)
        if answer is not None:
            if self._failure or self._absent:
                self._log("the controller answers demand reports again")
            self._heard = self.clock.monotonic()
            self._absent = self._failure = None
            self._apply(answer)
        else:
            why = absent or failure
            if why != (self._absent or self._failure):
                self._log(f"demand report not delivered: {why}")
            self._absent, self._failure = absent, failure
        self._wake()

    async def _put(self, body: str) -> DemandAnswer:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket)),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        timeout = aiohttp.ClientTimeout(total=self.cadence.answer_timeout)
        headers = {"Content-Type": "application/json"}
        async with self._session.put(URL, data=body, headers=headers, timeout=timeout) as resp:
            data = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise ValueError(f"the controller's answer is over {MAX_ANSWER_BYTES} bytes")
            if resp.status != 200:
                raise ValueError(f"the controller answered {resp.status}: {bytes(data[:200])!r}")
        return DemandAnswer.model_validate_json(bytes(data))

    def _apply(self, answer: DemandAnswer) -> None:
        """Keep the verdicts of the tiers this gateway knows (a new state forgets what
        the port did: a tier loading again starts from a closed port)."""
        names = set(self._names()) | set(self._tiers)
        for name in names:
            verdict = answer.tiers.get(name)
            state = self._tiers.get(name)
            if state is None:
                if verdict is None:
                    continue
                state = self._tier(name)
            old = state.verdict
            if verdict is None or old is None or verdict.state != old.state:
                state.port = "unknown"
            draining = verdict is not None and verdict.state == "draining"
            if draining != (old is not None and old.state == "draining"):
                # The controller waits for this to stop the tier: said at once.
                self._changed(urgent=True)
            state.verdict = verdict
            if self.on_verdict is not None and (old and old.state) != (verdict and verdict.state):
                self.on_verdict(name, old, verdict)


def _forget_after(deadline: float | None) -> float | None:
    """When a held request is dropped from the counts even if its handler never closed it:
    a moment after its hold (the handler answers it at the deadline itself)."""
    return None if deadline is None else deadline + 1.0


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."
