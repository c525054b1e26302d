"""The gateway's HTTP surface: auth, validation, the fast path and ``litellm.Router``.

Endpoints: ``/v1/chat/completions``, ``/v1/completions`` (streamed or not),
``/v1/models`` (tier names and aliases), ``/health/liveliness`` (no key). Every
refusal is an OpenAI-style error object with the right status: 401 for a missing
or wrong key, 404 naming the models that exist, 400 for a request outside the
OpenAI schema, and the backend's own 4xx passed on.

A validated request to a local tier is relayed to it as is (the fast path: the
answer, streamed or not, goes back as the tier wrote it, event by event, tool calls
and reasoning fields included, with only its ``model`` set to the name the client
asked for: :mod:`mlxctl.gateway.answers`). Only when the tier fails to answer
(refused connection, reset, a 5xx) is the request handed to ``litellm.Router``,
which retries it and walks the stack's fallbacks, local or remote (a tier without
fallbacks is asked again by the fast path itself: LiteLLM is loaded only for routes
that have fallbacks, :attr:`RoutingTable.needs_router`). Measured here,
LiteLLM's completion path costs ~7 ms of CPU a request; the whole fast path, HTTP
server included, ~1.3-1.5 ms (see ``docs/gateway.md``).

The client to the tiers is aiohttp, not httpx: measured in process against
``mlx_lm.server``, one 1-token completion costs ~0.75-1.1 ms of CPU through aiohttp
and ~1.7-2.5 ms through httpx (httpcore, anyio's cancel scopes and h11 in pure
Python), which was most of the gateway's own CPU per request.

Every request passes through :meth:`Gateway.handle`: one place that holds it (the
tier's concurrency gate) and sees it end (a stream ends with its last byte), which
is where request accounting hooks in (:mod:`mlxctl.gateway.demand`: every tier's
held and in-flight counts and its last request's end, reported to the controller).
A request for an on-demand tier is held there until the controller's verdict lets it
through (:meth:`Gateway._on_demand`): a stream gets its headers and SSE keep-alive
comments while it waits, and a 503 with ``Retry-After`` when it cannot be served.

A tier another machine serves (a stack of several machines, docs/multi-host.md) is
relayed to that machine's gateway instead (:meth:`Gateway._to_peer`,
:mod:`mlxctl.gateway.peers`), with the master key and a mark that it is never relayed
again; its demand is that machine's to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from mlxctl.gateway import anthropic, embeddings, errors, families, metrics, peers, ranks, responses
from mlxctl.gateway import models as model_list
from mlxctl.gateway.answers import renamed
from mlxctl.gateway.backend_errors import BODY_MAX, BackendAnswer, classify, router_error
from mlxctl.gateway.bounds import clip
from mlxctl.gateway.capacity import (
    Backoff,
    ClientGone,
    Gone,
    QueueFull,
    TierKeys,
    unless_gone,
    wait_turn,
)
from mlxctl.gateway.demand import HOLD, SEND, Cadence, Claim, Demand, Refusal
from mlxctl.gateway.errors import openai_error as error
from mlxctl.gateway.intake import read_json
from mlxctl.gateway.prompt_tokens import fit_context
from mlxctl.gateway.requests import Checked, Endpoint, RequestError, check_request
from mlxctl.gateway.routing import RoutingTable
from mlxctl.gateway.streams import chunk_finished, open_stream, relay_events
from mlxctl.gateway.streams import error_event as stream_error
from mlxctl.gateway.tierfit import fit_request
from mlxctl.machine.clock import SystemClock
from mlxctl.runtimes.base import HOST
from mlxctl.runtimes.gateway import Route

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from mlxctl.gateway.routing import Gate
    from mlxctl.machine.interfaces import Clock

PATHS: dict[str, str] = {
    "chat": "/v1/chat/completions",
    "text": "/v1/completions",
    "embeddings": "/v1/embeddings",  # mlxctl.gateway.embeddings
}
JSON_BODY = {"Content-Type": "application/json"}
# A refused connection is known at once; a tier that accepts but never answers
# headers is slow, not dead, and gets the whole request timeout.
CONNECT_TIMEOUT = 5.0
HOLD_POLL = 0.25
# How often a request whose client went away checks whether it was sent meanwhile.
GONE_POLL = 0.25
KEEPALIVE = b": keep-alive\n\n"
# The response header naming the tier (or remote) that answered: a fallback's name when
# one did, whatever model name the client asked for.
TIER_HEADER = "x-mlxctl-tier"
# Retry-After for a tier that cannot generate: its liveness check replaces it within
# about its interval (10 s) and a new one starts.
RETRY_DEAD = 15


class _Refused:
    """The tier refused the connection (returned by :meth:`Gateway._relay` when the
    caller holds the request itself)."""


REFUSED = _Refused()


def refusal(why: Refusal) -> JSONResponse:
    """A 503 for a request that cannot be served now, with when to try again."""
    response = error(503, why.message, code=why.code, type_="server_error")
    response.headers["Retry-After"] = why.retry_after_header
    return response


def error_event(response: Response) -> bytes:
    """An error answer as one SSE event, for a stream whose headers already went out."""
    try:
        body = json.loads(bytes(response.body))
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error" not in body:
        text = bytes(response.body).decode("utf-8", "replace")[:500]
        body = {"error": {"message": text, "type": "server_error", "code": "backend_error"}}
    body["error"]["status"] = response.status_code
    if retry := response.headers.get("retry-after"):
        body["error"]["retry_after"] = int(retry)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def answered(answer: BackendAnswer, retry_after: int | None = None) -> JSONResponse:
    """A tier's error (:mod:`mlxctl.gateway.backend_errors`) as the client's response."""
    response = JSONResponse(answer.body(), status_code=answer.status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def queue_full(full: QueueFull) -> JSONResponse:
    """A 503 for a request the tier's queue has no room for, with when to try again."""
    response = error(503, str(full), code="queue_full", type_="server_error")
    response.headers["Retry-After"] = str(full.retry_after)
    return response


def client_gone() -> JSONResponse:
    return error(499, "the client went away", code="client_gone")


class Gateway:
    """The app's state: the master key, the current routing table, the backend client,
    and the clock (hold deadlines, the models list's ``created``, reload timings)."""

    def __init__(
        self,
        key: str,
        table: RoutingTable,
        *,
        clock: Clock | None = None,
        admin_socket: Path | None = None,
        cadence: Cadence | None = None,
    ) -> None:
        self._key = b""
        self.set_key(key)
        self.table = table
        self.clock: Clock = clock if clock is not None else SystemClock()
        # Without the controller's socket the counts are kept but reported nowhere, and
        # an on-demand tier's requests are answered 503 (nothing could load the tier).
        self.demand = Demand(
            admin_socket,
            self.clock,
            tiers=self._tier_names,
            cadence=cadence,
            log=log,
            pid=os.getpid(),
        )
        # Requests relayed to other machines' gateways: counted for the metrics, reported
        # to nobody (each machine's gateway reports its own tiers: gateway.peers).
        self.peer_counts = Demand(None, self.clock, log=log)
        self.peer_states = peers.PeerStates(self.clock)
        self.metrics = metrics.Metrics(
            self.demand, lambda: self.table.config.routes, peers=self.peer_counts
        )
        self.demand.on_verdict = self.metrics.verdict
        self.requests_done = 0
        self._session: aiohttp.ClientSession | None = None
        # Each tier's own key, sent with every request to it (runtimes.tier_guard).
        self.keys = TierKeys()

    def _tier_names(self) -> list[str]:
        """The tiers whose demand this gateway reports: this machine's (another
        machine's gateway reports for its own)."""
        return [route.name for route in self.table.config.routes if route.peer is None]

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client to the tiers, made on first use (aiohttp binds it to the running loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # No pool limit: each tier's gate bounds its requests.
                connector=aiohttp.TCPConnector(limit=0),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def aclose(self) -> None:
        await self.demand.aclose()
        if self._session is not None:
            await self._session.close()

    def set_key(self, key: str) -> None:
        if not key.strip():
            raise ValueError("the gateway needs a master key")
        self._key = key.strip().encode()

    @property
    def key(self) -> str:
        """The master key: also the bearer this gateway sends other machines' gateways."""
        return self._key.decode()

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        token = token or request.headers.get("x-api-key", "")
        return hmac.compare_digest(token.encode(), self._key)

    async def handle(
        self,
        table: RoutingTable,
        name: str,
        checked: Checked,
        endpoint: Endpoint,
        *,
        gone: Gone | None = None,
    ) -> Response:
        """Answer one request inside the tier's gate; the gate opens when the answer ends.

        ``gone`` ends when the client disconnects: a request held for an on-demand tier
        is then dropped (it was only demand), one already sent runs on as before.
        """
        metrics.routed(name)
        route = table.config.route(name)
        if route is not None and route.peer is not None:  # another machine's tier
            return await self._to_peer(table, route, checked, endpoint, gone)
        if route is not None and (route.on_demand or self.demand.draining(name)):
            # Held by the controller's verdicts: an on-demand tier, or a planned restart.
            return await self._on_demand(table, route, checked, endpoint, gone)
        claim = self.demand.claim(name)  # counted: held at the gate, then in flight
        assert claim is not None  # only on-demand holds are capped
        slot = await self._turn(table, name, route, claim, gone)
        if isinstance(slot, Response):
            return slot
        if route is not None and self.demand.draining(name):
            # A planned restart began while it waited at the gate: counted in flight since
            # its turn came (so no report could say the tier drained), it goes back and is
            # held for the new process, never sent to the old one the restart stops.
            slot.give_back()
            claim.close()
            return await self._on_demand(table, route, checked, endpoint, gone)
        try:
            if route is not None and table.config.fast_path:
                relay = self._relay(table, route, checked, endpoint, slot.release)
                answer = await unless_gone(relay, gone, _let_go)
                if isinstance(answer, Response):
                    return answer
                if isinstance(answer, BackendAnswer):  # it cannot serve: its fallbacks may
                    return await unless_gone(
                        self._fallback(table, name, checked, endpoint, slot.release, answer),
                        gone, _let_go)  # fmt: skip
                if not table.config.fallbacks.get(name):
                    retried = self._retried(table, route, checked, endpoint, slot.release)
                    return await unless_gone(retried, gone, _let_go)
                if checked.hop and not fallbacks_for(table, name, checked):
                    # Relayed by another machine's gateway, and every fallback of the tier
                    # is on another machine: say so at once, and that gateway walks them
                    # (retrying here would keep its client waiting for a restart).
                    slot.release()
                    message = f"tier '{name}' did not answer; its fallbacks are on other machines"
                    return answered(
                        BackendAnswer("error", 503, message, "backend_unreachable"), RETRY_DEAD
                    )
                log(f"tier '{name}' did not answer; the Router retries it and its fallbacks")
            routed = self._route(table, name, checked, endpoint, slot.release)
            return await unless_gone(routed, gone, _let_go)
        except ClientGone:  # the request to the tier was closed with it
            slot.release()
            return client_gone()
        except BaseException:
            slot.release()
            raise

    async def _turn(
        self,
        table: RoutingTable,
        name: str,
        route: Route | None,
        claim: Claim,
        gone: Gone | None,
    ) -> _Slot | Response:
        """A turn at the tier's capacity (:mod:`mlxctl.gateway.capacity`), within the
        queue's deadline, or the answer for a request that got none (its queue is full,
        the deadline passed, its client left meanwhile): ``claim`` is closed then."""
        wait = table.config.queue_timeout
        turn = _Slot.take(self, table.gates.get(name), claim, route)
        try:
            return await unless_gone(asyncio.wait_for(turn, wait), gone, _Slot.orphaned)
        except (QueueFull, ClientGone) as exc:
            claim.close()
            return queue_full(exc) if isinstance(exc, QueueFull) else client_gone()
        except TimeoutError:
            claim.close()
            why = f"tier '{name}' is busy: the request waited {wait:g} s for its turn"
            return refusal(Refusal(why, min(wait, 30.0), "queue_timeout"))
        except BaseException:
            claim.close()
            raise

    async def _to_peer(
        self,
        table: RoutingTable,
        route: Route,
        checked: Checked,
        endpoint: Endpoint,
        gone: Gone | None,
    ) -> Response:
        """A request for a tier another machine serves: relayed to that machine's gateway
        (:mod:`mlxctl.gateway.peers`), within this gateway's bounds for the route; the
        tier's fallbacks when it cannot serve. A request that was itself relayed here is
        never relayed again (the hop guard)."""
        if checked.hop:
            return peers.hop_refusal(route)
        claim = self.peer_counts.claim(route.name)
        assert claim is not None
        slot = await self._turn(table, route.name, route, claim, gone)
        if isinstance(slot, Response):
            return slot
        try:
            answer = await unless_gone(self._to_peer_once(table, route, checked, endpoint,
                                                          slot.release), gone, _let_go)  # fmt: skip
            if isinstance(answer, Response):
                return answer
            failover = self._peer_failed(table, route, checked, endpoint, slot.release, answer)
            return await unless_gone(failover, gone, _let_go)
        except ClientGone:
            slot.release()
            return client_gone()
        except BaseException:
            slot.release()
            raise

    async def _to_peer_once(
        self,
        table: RoutingTable,
        route: Route,
        checked: Checked,
        endpoint: Endpoint,
        release: Callable[[], None],
    ) -> Response | peers.PeerFailure:
        path = checked.path if isinstance(checked, families.Native) else PATHS[endpoint]
        metrics.sending()
        answer = await peers.relay(self.session, route, checked, path, release, key=self.key,
                                   read_timeout=table.config.timeout)  # fmt: skip
        if isinstance(answer, peers.PeerFailure):
            self.metrics.peer_failed(route.host or "", answer.kind)
        return answer

    async def _peer_failed(
        self,
        table: RoutingTable,
        route: Route,
        checked: Checked,
        endpoint: Endpoint,
        release: Callable[[], None],
        failure: peers.PeerFailure,
    ) -> Response:
        """The tier's declared fallbacks, in order, after its machine failed to serve it:
        one on another machine is relayed there (one on the machine that just failed is
        skipped: it was tried there, or that machine is down); the first on this machine
        (or a remote) takes the request through the Router, with its own fallbacks.
        Without one, the client's answer names the machine and its address."""
        log(f"tier '{route.name}': {peers.where(route)} {failure.why}")
        for target in table.config.fallbacks.get(route.name, ()):
            other = table.config.route(target)
            if other is not None and other.peer is not None:
                if other.host == route.host:
                    continue
                answer = await self._to_peer_once(table, other, checked, endpoint, release)
                if isinstance(answer, Response):
                    return answer
                log(f"tier '{target}': {peers.where(other)} {answer.why}")
                continue
            log(f"tier '{route.name}': sent to '{target}'")
            return await self._route(table, target, checked, endpoint, release)
        release()
        return failure.response(route)

    async def _on_demand(
        self,
        table: RoutingTable,
        route: Route,
        checked: Checked,
        endpoint: Endpoint,
        gone: Gone | None,
    ) -> Response:
        """Hold a request for an on-demand tier until its verdict lets it through.

        It is reported (``waiting``) at once; the controller decides. A quick fate (the
        tier is ready, unavailable, or no controller runs) is answered as usual; a
        stream that must wait gets its headers and keep-alive comments now, and its
        answer (or an error event) once the tier serves or the hold ends.
        """
        demand = self.demand
        hold = route.hold if route.hold is not None else table.config.hold
        claim = demand.claim(route.name, hold=hold)
        if claim is None:
            limit = demand.cadence.max_waiting
            why = f"tier '{route.name}' already has {limit} requests waiting for it to load"
            return refusal(Refusal(why, hold, "too_many_waiting"))
        held = _Held(self, table, route, checked, endpoint, claim)
        try:
            step = await demand.settle(claim, route, nap=demand.cadence.first, first=True)
        except BaseException:
            claim.close()
            raise
        if isinstance(step, Refusal):
            claim.close()
            return refusal(step)
        if step == HOLD and checked.stream:
            # Nothing runs until the server iterates it: a response never sent holds
            # nothing (its claim is forgotten after the hold).
            stream = _held_stream(held, demand.cadence.keepalive)
            return StreamingResponse(stream, media_type="text/event-stream")
        return await _unless_gone(held, gone)

    async def _relay(
        self,
        table: RoutingTable,
        route: Route,
        checked: Checked,
        endpoint: Endpoint,
        release: Callable[[], None],
        *,
        wait_refused: bool = True,
    ) -> Response | _Refused | BackendAnswer | None:
        """The fast path: the tier's answer, or None when the tier failed to answer (a
        :class:`BackendAnswer` when it said it cannot serve at all: skip it).

        A refused connection is waited out here (up to the hold, for a tier without
        fallbacks), or with ``wait_refused=False`` returned as :data:`REFUSED` for the
        caller to hold the request itself. A tier's "busy" is never relayed: the request
        keeps its turn and asks again, up to the hold (:mod:`mlxctl.gateway.capacity`);
        its errors reach the client in OpenAI's shape (:mod:`mlxctl.gateway.backend_errors`)."""
        body = json.dumps({**checked.params, "model": route.served_model}).encode()
        # A Messages or Responses request to a tier that serves that route itself.
        path = checked.path if isinstance(checked, families.Native) else PATHS[endpoint]
        url = f"http://{HOST}:{route.port}{path}"
        headers = {**JSON_BODY, **self.keys.headers(route.key_file)}
        config = table.config
        # Per read, not in total: a stream may run for minutes, a cold model is slow to
        # its first token; a refused connection is known at once.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=config.timeout
        )
        # A tier without a fallback that refuses connections is restarting (or starting):
        # hold the request until it listens again, up to ``hold`` seconds.
        clock = self.clock
        held_until = None if config.fallbacks.get(route.name) else clock.monotonic() + config.hold
        busy = Backoff(clock.monotonic, config.hold)
        metrics.sending()
        while True:
            try:
                while True:
                    try:
                        resp = await self.session.post(
                            url, data=body, headers=headers, timeout=timeout
                        )
                        break
                    except aiohttp.ClientConnectorError:
                        if not wait_refused:
                            return REFUSED
                        if held_until is None or clock.monotonic() >= held_until:
                            raise
                        # Yields to the event loop between attempts (the clock's sleep
                        # would block it); the deadline above is the clock's.
                        await asyncio.sleep(HOLD_POLL)
            except aiohttp.ConnectionTimeoutError:
                return None
            except TimeoutError:  # connected, but no answer within the timeout
                release()
                return error(504, f"tier '{route.name}' did not answer in time", code="timeout",
                             type_="timeout_error")  # fmt: skip
            except aiohttp.ClientError:
                return None  # refused or reset: the Router retries and falls back
            media = resp.headers.get("Content-Type", "application/json")
            try:
                if resp.status == 200 and checked.stream:
                    start = await open_stream(resp)
                    if not start.empty:
                        events = relay_events(resp, checked.model, release, start.head)
                        return StreamingResponse(events, media_type=media)
                    # Closed before a word: vllm-mlx's busy stream, or a tier that died.
                    verdict = BackendAnswer("busy" if route.runtime == "vllm-mlx" else "failed",
                                            502, "the tier closed the stream at once")  # fmt: skip
                elif resp.status == 200:
                    content = renamed(await resp.read(), checked.model)
                    resp.release()
                    metrics.answered()
                    release()
                    return Response(content, status_code=200, media_type=media)
                else:
                    verdict = classify(
                        route.runtime, resp.status, await resp.content.read(BODY_MAX)
                    )
            except (aiohttp.ClientError, TimeoutError):
                resp.close()
                return None  # it broke before answering: the Router retries and falls back
            except BaseException:  # the client left: the request to the tier is closed
                resp.close()
                raise
            resp.close()
            if verdict.kind == "busy":
                if await busy.again():
                    continue
                release()
                gate = table.gates.get(route.name)
                retry = gate.waiting.retry_after(route.max_concurrency) if gate else 1
                message = f"tier '{route.name}' stayed busy for {config.hold:g} s; try again later"
                return answered(BackendAnswer("error", 503, message, "tier_busy"), retry)
            if verdict.kind == "failed":
                log(f"tier '{route.name}': {verdict.message}")
                return verdict if verdict.dead else None
            release()
            return answered(verdict)

    async def _retried(
        self,
        table: RoutingTable,
        route: Route,
        checked: Checked,
        endpoint: Endpoint,
        release: Callable[[], None],
    ) -> Response:
        """A tier without fallbacks that failed to answer, asked again ``retries`` times
        by the fast path itself: all the Router would do for it (it walks fallbacks,
        and there are none), without loading LiteLLM for it (:attr:`RoutingTable.
        needs_router`). A connection refused now is a failure (the fast path already
        held the request while the tier refused), then a 502."""
        log(f"tier '{route.name}' did not answer; asking it again")
        for _ in range(table.config.retries):
            answer = await self._relay(table, route, checked, endpoint, release, wait_refused=False)
            if isinstance(answer, Response):
                return answer
            if isinstance(answer, BackendAnswer):  # it cannot serve at all
                return await self._fallback(table, route.name, checked, endpoint, release, answer)
        release()
        tries = 1 + table.config.retries
        message = f"tier '{route.name}' did not answer ({tries} attempts)"
        return answered(BackendAnswer("error", 502, message, "backend_unreachable"))

    async def _fallback(
        self,
        table: RoutingTable,
        name: str,
        checked: Checked,
        endpoint: Endpoint,
        release: Callable[[], None],
        why: BackendAnswer,
    ) -> Response:
        """A request for a tier that said it cannot serve at all: to its first fallback
        (through the Router, with that one's own fallbacks), or a 503 when it has none."""
        fallbacks = fallbacks_for(table, name, checked)
        if not fallbacks:
            release()
            message = f"tier '{name}': {why.message}; it is being replaced"
            return answered(BackendAnswer("error", 503, message, why.code), RETRY_DEAD)
        log(f"tier '{name}': {why.message}; sent to '{fallbacks[0]}'")
        return await self._route(table, fallbacks[0], checked, endpoint, release)

    async def _route(
        self,
        table: RoutingTable,
        name: str,
        checked: Checked,
        endpoint: Endpoint,
        release: Callable[[], None],
    ) -> Response:
        """Through ``litellm.Router``: its retries, timeouts and fallbacks (local or remote)."""
        if isinstance(checked, families.Native):  # as a chat completion, translated back
            return await families.route_native(table, name, checked, release, self.clock,
                                               self.key)  # fmt: skip
        params = dict(checked.params)
        try:
            # A request relayed from another machine: a Router of this machine's tiers.
            router = await table.router(hop=checked.hop, key=self.key)
            if endpoint == "chat":
                result = await router.acompletion(model=name, **params)
            elif endpoint == "text":
                result = await router.atext_completion(model=name, **params)
            else:  # embeddings (mlxctl.gateway.embeddings)
                result = await router.aembedding(model=name, **params)
        except Exception as exc:  # the Router's errors, each mapped to its status
            release()
            verdict = router_error(exc, name)
            return answered(verdict, 1 if verdict.kind == "busy" else None)
        served = {TIER_HEADER: _served_by(result, name)}
        if not checked.stream:
            release()
            return Response(
                _dump(result, checked.model), media_type="application/json", headers=served
            )
        stream = _sse(result, checked.model, release)
        return StreamingResponse(stream, media_type="text/event-stream", headers=served)


def fallbacks_for(table: RoutingTable, name: str, checked: Checked) -> tuple[str, ...]:
    """``name``'s fallbacks for this request: a request relayed from another machine's
    gateway goes to none on another machine (the hop guard, :mod:`mlxctl.gateway.peers`)."""
    fallbacks = table.config.fallbacks.get(name, ())
    if not checked.hop:
        return fallbacks
    return tuple(t for t in fallbacks if not _is_peer(table, t))


def _is_peer(table: RoutingTable, name: str) -> bool:
    route = table.config.route(name)
    return route is not None and route.peer is not None


class _Slot:
    """A request's turn at its tier: the gate taken and the request counted in flight.

    :meth:`release` ends it (the answer's last byte: the gate opens, ``last_end`` is
    stamped); :meth:`give_back` undoes it for a request that was not sent after all
    (the connection was refused, or the verdict changed while it waited at the gate).
    """

    def __init__(self, gateway: Gateway, gate: Gate | None, claim: Claim) -> None:
        self.gateway = gateway
        self.gate = gate
        self.claim = claim
        self.done = False
        self.since = gateway.clock.monotonic()

    @classmethod
    async def take(
        cls, gateway: Gateway, gate: Gate | None, claim: Claim, route: Route | None = None
    ) -> _Slot:
        if gate is not None:
            if route is None:
                await gate.semaphore.acquire()
            else:  # bounded: QueueFull when the tier's queue is full
                await wait_turn(gate, route.name, route.max_concurrency, route.max_waiting)
        claim.sent()
        return cls(gateway, gate, claim)

    @staticmethod
    async def orphaned(slot: _Slot) -> None:
        """A turn that came just as its client left."""
        slot.release()

    def _open_gate(self) -> bool:
        if self.done:
            return False
        self.done = True
        if self.gate is not None:
            self.gate.waiting.timed(self.gateway.clock.monotonic() - self.since)
            self.gate.semaphore.release()
        return True

    def release(self) -> None:
        if self._open_gate():
            self.gateway.requests_done += 1
            self.claim.close()

    def give_back(self) -> None:
        if self._open_gate():
            self.claim.refused()


class _Held:
    """A request held for an on-demand tier, from its hold to its answer's start."""

    def __init__(
        self,
        gateway: Gateway,
        table: RoutingTable,
        route: Route,
        checked: Checked,
        endpoint: Endpoint,
        claim: Claim,
    ) -> None:
        self.gateway = gateway
        self.table = table
        self.route = route
        self.checked = checked
        self.endpoint = endpoint
        self.claim = claim
        self.slot: _Slot | None = None

    async def serve(self) -> Response:
        """Hold until the tier may be sent to, then send (the gate, then the fast path);
        a 503 when the hold ends first or the verdict says ``unavailable``. A connection
        the tier refuses puts the request back among the held ones."""
        gateway, table, route, claim = self.gateway, self.table, self.route, self.claim
        demand = gateway.demand
        try:
            while True:
                step = await demand.settle(claim, route)
                if isinstance(step, Refusal):
                    claim.close()
                    return refusal(step)
                self.slot = slot = await _Slot.take(gateway, table.gates.get(route.name), claim)
                if demand.step(claim, route) != SEND:  # it changed while the gate was shut
                    slot.give_back()
                    continue
                answer = await gateway._relay(
                    table, route, self.checked, self.endpoint, slot.release, wait_refused=False
                )
                if answer is REFUSED:
                    slot.give_back()
                    demand.refused(route)
                    continue
                if isinstance(answer, Response):
                    return answer
                if isinstance(answer, BackendAnswer):
                    return await gateway._fallback(table, route.name, self.checked,
                                                   self.endpoint, slot.release, answer)  # fmt: skip
                if not table.config.fallbacks.get(route.name):
                    return await gateway._retried(table, route, self.checked, self.endpoint,
                                                  slot.release)  # fmt: skip
                log(f"tier '{route.name}' did not answer; the Router retries it")
                return await gateway._route(table, route.name, self.checked, self.endpoint,
                                            slot.release)  # fmt: skip
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Let go of everything this request holds (its answer will never be read)."""
        if self.slot is not None:
            self.slot.release()
        self.claim.close()


def _served_by(result: Any, asked: str) -> str:
    """The tier or remote whose deployment answered through the Router (its
    ``model_info.id``: :func:`mlxctl.gateway.routing.deployment`), else ``asked``."""
    hidden = getattr(result, "_hidden_params", None)
    served = hidden.get("model_id") if isinstance(hidden, dict) else None
    return served if isinstance(served, str) and served else asked


async def _unless_gone(held: _Held, gone: Gone | None) -> Response:
    """``held``'s answer; dropped if its client goes away while it is still held (once
    sent, it runs to its end as any request does)."""
    fate = asyncio.ensure_future(held.serve())
    if gone is None:
        return await fate
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({fate, watcher}, return_when=asyncio.FIRST_COMPLETED)
        while not fate.done():
            if held.claim.held:  # the client left before the tier had the request
                fate.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fate
                return error(499, "the client went away", code="client_gone")
            await asyncio.wait({fate}, timeout=GONE_POLL)
        return fate.result()
    finally:
        watcher.cancel()
        if not fate.done():
            fate.cancel()


async def _held_stream(held: _Held, keepalive: float) -> AsyncIterator[bytes]:
    """A held stream: keep-alive comments until the tier serves, then its events (or
    an error event: the headers, 200, went out with the first comment)."""
    fate = asyncio.ensure_future(held.serve())
    relayed = False
    try:
        yield KEEPALIVE
        while not fate.done():
            await asyncio.wait({fate}, timeout=keepalive)
            if not fate.done():
                yield KEEPALIVE
        response = fate.result()
        relayed = True
        if isinstance(response, StreamingResponse):
            async for chunk in response.body_iterator:
                yield chunk if isinstance(chunk, bytes) else str(chunk).encode()
        else:
            yield error_event(response)
    finally:
        if not fate.done():
            fate.cancel()  # the client went away while held: it was only demand
        elif not relayed and not fate.cancelled() and fate.exception() is None:
            held.abandon()


def _dump(result: Any, public: str) -> bytes:
    data = result.model_dump(exclude_none=True)
    data["model"] = public
    return json.dumps(data, separators=(",", ":")).encode()


async def _sse(stream: Any, public: str, release: Callable[[], None]) -> AsyncIterator[bytes]:
    finished = False
    try:
        async for chunk in stream:
            finished = finished or chunk_finished(chunk)
            yield b"data: " + _dump(chunk, public) + b"\n\n"
        if finished:
            yield b"data: [DONE]\n\n"
        else:  # an empty or cut stream is not a successful answer (gateway.streams)
            yield stream_error("the tier ended the stream before it finished its answer")
    except Exception as exc:  # a backend that fails mid-stream: tell the client, in-band
        verdict = router_error(exc, public)
        yield stream_error(verdict.message, verdict.code, verdict.status)
    finally:
        release()


async def _let_go(answer: object) -> None:
    """An answer whose client left as it came: a stream's iterator holds the tier's
    connection and the turn, closed here (a whole answer holds nothing)."""
    body = getattr(answer, "body_iterator", None)
    if body is not None and hasattr(body, "aclose"):
        await body.aclose()


def build_app(gateway: Gateway) -> ASGIApp:
    def unauthorized() -> JSONResponse:
        return error(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>' (mlxctl gateway key)",
            code="invalid_api_key",
            type_="authentication_error",
        )

    async def completions(request: Request, endpoint: Endpoint) -> Response:
        if not gateway.authorized(request):
            return unauthorized()
        table = gateway.table
        try:
            checked = check_request(await read_json(request), endpoint)
            if peers.came_from_peer(request.headers):
                checked = dataclasses.replace(checked, hop=True)
            name = table.resolve(checked.model)
            route = table.config.route(name) if name is not None else None
            # Another machine's tier is checked by its own gateway, which knows its model.
            if route is not None and route.peer is None:
                checked = fit_request(checked, route, endpoint, table.config)
                checked = await fit_context(checked, route, endpoint)
        except RequestError as exc:
            return error(exc.status, str(exc), code=exc.code, param=exc.param)
        if name is None:
            models = ", ".join(table.models()) or "(none)"
            return error(404, f"model '{clip(checked.model)}' does not exist; models: {models}",
                         code="model_not_found", param="model")  # fmt: skip
        if (refused := embeddings.chat_refusal(table, checked.model, name)) is not None:
            return refused

        async def gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        response = await gateway.handle(table, name, checked, endpoint, gone=gone)
        response.headers.setdefault(TIER_HEADER, name)
        return response

    async def chat(request: Request) -> Response:
        return await completions(request, "chat")

    async def text(request: Request) -> Response:
        return await completions(request, "text")

    async def models(request: Request) -> Response:
        if not gateway.authorized(request):
            return unauthorized()
        now = int(gateway.clock.time())
        table = gateway.table
        states = await peer_states(request, table)
        return JSONResponse(model_list.listing(table, gateway.demand, now, states))

    async def peer_states(
        request: Request, table: RoutingTable, only: str | None = None
    ) -> Mapping[str, peers.PeerTier | peers.Unreachable] | None:
        """The other machines' tier states (None for a gateway asking for this machine's:
        it never makes this one ask the others)."""
        if peers.came_from_peer(request.headers):
            return None
        routes = [r for r in table.config.routes if r.peer and (only is None or r.name == only)]
        if not routes:
            return {}
        return await gateway.peer_states.states(gateway.session, routes, gateway.key)

    async def model(request: Request) -> Response:
        if not gateway.authorized(request):
            return unauthorized()
        name = request.path_params["model_id"]
        table = gateway.table
        states = await peer_states(request, table, table.resolve(name) or "")
        now = int(gateway.clock.time())
        found = model_list.model_object(table, gateway.demand, name, now, states)
        if found is None:
            models = ", ".join(table.models()) or "(none)"
            return error(404, f"model '{clip(name)}' does not exist; models: {models}",
                         code="model_not_found", param="model")  # fmt: skip
        return JSONResponse(found)

    async def embed(request: Request) -> Response:
        if not gateway.authorized(request):
            return unauthorized()
        return await embeddings.create(gateway, request)

    async def scrape(request: Request) -> Response:
        if not gateway.authorized(request):
            return unauthorized()
        body, content_type = gateway.metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    async def messages(request: Request) -> Response:
        return await families.serve(gateway, request, anthropic.MESSAGES)

    async def count_tokens(request: Request) -> Response:
        return await anthropic.count_tokens(gateway, request)

    async def responses_(request: Request) -> Response:
        return await families.serve(gateway, request, responses.RESPONSES)

    async def group_ranks(request: Request) -> Response:
        # The other members of a distributed tier read this machine's ranks here.
        if not gateway.authorized(request):
            return unauthorized()
        return await ranks.relay(gateway.demand.socket)

    async def live(_: Request) -> Response:
        routes = len(gateway.table.config.routes)
        # The PID tells mlxctl's probe which gateway answered while two share the port.
        return JSONResponse({"status": "ok", "routes": routes, "pid": os.getpid()})

    routes = [
        HttpRoute("/v1/chat/completions", chat, methods=["POST"]),
        HttpRoute("/chat/completions", chat, methods=["POST"]),
        HttpRoute("/v1/completions", text, methods=["POST"]),
        HttpRoute("/completions", text, methods=["POST"]),
        HttpRoute("/v1/embeddings", embed, methods=["POST"]),
        HttpRoute("/embeddings", embed, methods=["POST"]),
        HttpRoute("/v1/models", models, methods=["GET"]),
        HttpRoute("/models", models, methods=["GET"]),
        HttpRoute("/v1/models/{model_id:path}", model, methods=["GET"]),
        HttpRoute("/models/{model_id:path}", model, methods=["GET"]),
        HttpRoute("/health/liveliness", live, methods=["GET"]),
        HttpRoute("/health", live, methods=["GET"]),
        HttpRoute("/metrics", scrape, methods=["GET"]),
        HttpRoute("/mlxctl/ranks", group_ranks, methods=["GET"]),
        # Anthropic Messages and OpenAI Responses (mlxctl.gateway.families).
        HttpRoute("/v1/messages", messages, methods=["POST"]),
        HttpRoute("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        HttpRoute("/v1/responses", responses_, methods=["POST"]),
        HttpRoute("/responses", responses_, methods=["POST"]),
    ]
    # Unknown paths and methods: an error body in the style of the path's API family.
    handlers = {404: errors.not_found, 405: errors.method_not_allowed}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return metrics.Instrumented(app, gateway.metrics)


def log(message: str) -> None:
    """One line on stderr (the gateway's log file), stamped with the local time (called
    before any Gateway, and its clock, exists)."""
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} gateway: {message}", file=sys.stderr, flush=True)
