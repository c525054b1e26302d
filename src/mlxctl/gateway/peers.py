"""Tiers on other machines: relayed to their machine's gateway (docs/multi-host.md).

A stack may span machines; each runs its own controller and gateway on the same files.
A route with ``peer`` set names a tier another machine serves: every request for it
(chat, completions, embeddings, Messages, Responses; streamed or not) goes to that
machine's gateway, at the same path, with the stack's master key as bearer, and the
answer comes back with its ``model`` set to the name the client sent, like a local
tier's. The peer gateway holds, queues, checks and falls back for its tier as for any
request, and reports its demand to its own controller: this gateway counts such
requests for its metrics only and reports them to nobody.

**The hop guard.** A request a gateway relays to a peer carries :data:`HOP_HEADER`.
A gateway never relays such a request again: not to the peer route it names (the
answer is a 508 naming where the tier is) and not through its Router's fallbacks (the
Router of a relayed request knows only this machine's tiers and the remotes). So a
fallback chain that crosses machines cannot loop: the gateway that first took the
request walks the tier's fallbacks when the peer could not serve it.

**A peer that fails** (refuses the connection, does not accept one within
:data:`CONNECT_TIMEOUT`, breaks it, answers 5xx, refuses the key, or does not know the
tier) is a tier failure (:class:`PeerFailure`): the tier's declared fallbacks are
tried, else the client gets an error naming the host and its address. A 4xx about the
request itself is the client's answer, passed on as the peer wrote it.

**Its tiers' states** (``/v1/models``): read from the peer gateway's own ``/v1/models``
(:class:`PeerStates`), with the key and the hop header (so the peer lists only what it
serves and asks nobody else), cached for :data:`STATES_TTL` seconds, read with a
deadline and a size bound, and treated as untrusted: only the fields and values this
gateway would write itself are kept. A peer that does not answer makes its tiers
``unreachable``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from starlette.responses import JSONResponse, Response, StreamingResponse

from mlxctl.gateway.answers import renamed
from mlxctl.gateway.backend_errors import BODY_MAX
from mlxctl.gateway.errors import message_of, openai_error
from mlxctl.gateway.streams import open_stream, relay_events

if TYPE_CHECKING:
    from mlxctl.gateway.requests import Checked
    from mlxctl.machine.interfaces import Clock
    from mlxctl.runtimes.gateway import Route

# Marks a request one gateway relayed to another: it is never relayed again.
HOP_HEADER = "x-mlxctl-hop"
# The response header naming the tier that answered (as mlxctl.gateway.app sets it).
TIER_HEADER = "x-mlxctl-tier"
# A peer on the LAN accepts a connection within milliseconds; a machine that is off
# does not answer at all: its tiers' fallbacks are tried after this long.
CONNECT_TIMEOUT = 5.0
# /v1/models: how long a peer's states are kept, how long it may take to answer, and
# how much of its answer is read (a few hundred bytes a tier).
STATES_TTL = 2.0
STATES_TIMEOUT = 2.0
MAX_STATES_BYTES = 1 << 20
MAX_STATES_TIERS = 4096
MAX_DETAIL = 300
# The states a gateway writes in /v1/models (mlxctl.gateway.models); anything else a
# peer says reads as unknown.
KNOWN_STATES = frozenset({"loaded", "loading", "on_demand", "unloading", "unavailable", "unknown"})
CAPABILITIES = ("tools", "reasoning", "vision", "embeddings", "chat")


def came_from_peer(headers: Mapping[str, str]) -> bool:
    """Whether another machine's gateway relayed this request (see the hop guard)."""
    return HOP_HEADER in headers


def peer_headers(key: str) -> dict[str, str]:
    """What a request to a peer gateway carries: the stack's key and the hop mark."""
    return {"Authorization": f"Bearer {key}", HOP_HEADER: "1"}


def where(route: Route) -> str:
    """``host 'studio' (http://10.0.0.2:4000)``: where a peer route's tier is served."""
    return f"host '{route.host}' ({route.peer})"


def hop_refusal(route: Route) -> JSONResponse:
    """A relayed request for a tier this machine does not serve either: never relayed
    again (508), so the gateway that first took it walks the tier's fallbacks."""
    return openai_error(
        508,
        f"tier '{route.name}' is served by {where(route)}; a request relayed by another "
        "machine's gateway is not relayed again (are the stack files the same on every "
        "machine?)",
        code="hop_refused",
        type_="server_error",
    )


@dataclass(frozen=True)
class PeerFailure:
    """A peer gateway that could not serve the request: why, and its own error answer
    when it gave one (status, body, ``Retry-After``)."""

    why: str
    # Which of the failure counters it is (refused, timeout, key, unknown_tier, status).
    kind: str
    status: int = 502
    body: bytes = b""
    retry_after: str | None = None

    def response(self, route: Route) -> JSONResponse:
        """The client's answer when no fallback served: the peer's own error (its status
        and ``Retry-After``) prefixed with where the tier is, else a 502 naming it."""
        if self.body:
            message = f"tier '{route.name}' on {where(route)}: {message_of(self.body)}"
            code = _code_of(self.body) or "peer_error"
        else:
            message = f"tier '{route.name}' is served by {where(route)}, which {self.why}"
            code = "peer_unavailable"
        response = openai_error(self.status, message[:2000], code=code, type_="server_error")
        if self.retry_after:
            response.headers["Retry-After"] = self.retry_after
        return response


def _code_of(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) and len(code) <= 64 else None


async def relay(
    session: aiohttp.ClientSession,
    route: Route,
    checked: Checked,
    path: str,
    release: Callable[[], None],
    *,
    key: str,
    read_timeout: float,
) -> Response | PeerFailure:
    """``checked`` posted to ``route``'s peer gateway at ``path``: its answer (the turn
    is released when it ends), or a :class:`PeerFailure` (the turn is the caller's)."""
    assert route.peer is not None
    body = json.dumps({**checked.params, "model": route.served_model}).encode()
    headers = {"Content-Type": "application/json", **peer_headers(key)}
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_TIMEOUT, sock_read=read_timeout
    )
    try:
        resp = await session.post(f"{route.peer}{path}", data=body, headers=headers,
                                  timeout=timeout)  # fmt: skip
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)
        return PeerFailure(f"could not be reached ({reason})", "refused")
    except aiohttp.ConnectionTimeoutError:
        return PeerFailure(f"did not accept a connection within {CONNECT_TIMEOUT:g} s", "timeout")
    except TimeoutError:
        return PeerFailure(f"did not answer within {read_timeout:g} s", "timeout", 504)
    except aiohttp.ClientError as exc:
        return PeerFailure(f"broke the connection ({type(exc).__name__})", "broken")
    media = resp.headers.get("Content-Type", "application/json")
    served = {TIER_HEADER: resp.headers[TIER_HEADER]} if TIER_HEADER in resp.headers else {}
    try:
        if resp.status == 200 and checked.stream:
            start = await open_stream(resp)
            if start.empty:
                resp.close()
                return PeerFailure("closed the stream before a word", "broken")
            events = relay_events(resp, checked.model, release, start.head)
            return StreamingResponse(events, media_type=media, headers=served)
        if resp.status == 200:
            content = renamed(await resp.read(), checked.model)
            resp.release()
            release()
            return Response(content, status_code=200, media_type=media, headers=served)
        answer = await resp.content.read(BODY_MAX)
    except (aiohttp.ClientError, TimeoutError) as exc:
        resp.close()
        return PeerFailure(f"broke the connection ({type(exc).__name__})", "broken")
    except BaseException:  # the client left: the request to the peer is closed
        resp.close()
        raise
    resp.close()
    return _answered(resp.status, answer, resp.headers.get("Retry-After"), route, release)


def _answered(
    status: int, body: bytes, retry_after: str | None, route: Route, release: Callable[[], None]
) -> Response | PeerFailure:
    """A peer's error answer: the request's own fault (passed on) or the peer's failure."""
    if status in (401, 403):
        return PeerFailure(
            "refused this gateway's key: every machine must resolve spec.gateway.masterKey "
            "to the same key",
            "key",
        )
    if status == 404 and _code_of(body) == "model_not_found":  # not the tier's own 404
        return PeerFailure(
            f"does not know tier '{route.name}' (are the stack files the same on every machine?)",
            "unknown_tier",
        )
    if status >= 500:
        return PeerFailure(f"answered {status}", "status", status, body, retry_after)
    release()
    response = Response(body, status_code=status, media_type="application/json")
    if retry_after:
        response.headers["Retry-After"] = retry_after
    return response


# -- the peers' tier states, for /v1/models ---------------------------------------------


@dataclass(frozen=True)
class PeerTier:
    """What a peer gateway says of one of its tiers (checked: see :func:`read_states`)."""

    state: str
    detail: str = ""
    load: str | None = None
    context_length: int | None = None
    capabilities: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Unreachable:
    """A peer that did not answer ``/v1/models`` (or not with a list of models)."""

    why: str


Answer = Mapping[str, PeerTier] | Unreachable


def read_states(body: bytes, expected: Iterable[str]) -> dict[str, PeerTier]:
    """The states of the tiers in ``expected`` from a peer's ``/v1/models`` answer.

    Untrusted: only the model objects of those tier names are read (each tier's own
    object, ``id`` equal to ``tier``), and of them only a known state and load, a short
    detail, a positive context length and the boolean capabilities; anything else is
    dropped. Raises ValueError for an answer that is not a list of models.
    """
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError("not a list of models")
    wanted = set(expected)
    out: dict[str, PeerTier] = {}
    for item in data["data"][:MAX_STATES_TIERS]:
        if isinstance(item, dict) and item.get("id") in wanted and item.get("tier") == item["id"]:
            out[item["id"]] = _peer_tier(item)
    return out


def _peer_tier(item: dict[str, Any]) -> PeerTier:
    state, detail, load = item.get("state"), item.get("state_detail"), item.get("load")
    context, caps = item.get("context_length"), item.get("capabilities")
    if not isinstance(caps, dict):
        caps = {}
    return PeerTier(
        state=state if isinstance(state, str) and state in KNOWN_STATES else "unknown",
        detail=detail[:MAX_DETAIL] if isinstance(detail, str) else "",
        load=load if load in ("always", "on-demand") else None,
        context_length=context if _positive(context) else None,
        capabilities={k: caps[k] for k in CAPABILITIES if type(caps.get(k)) is bool},
    )


def _positive(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31


class PeerStates:
    """Each peer gateway's tier states, fetched when ``/v1/models`` is asked and kept for
    :data:`STATES_TTL` seconds; one fetch per peer at a time (concurrent askers share it)."""

    def __init__(self, clock: Clock, *, ttl: float = STATES_TTL, timeout: float = STATES_TIMEOUT):
        self.clock = clock
        self.ttl = ttl
        self.timeout = timeout
        # peer URL -> (fetched at, monotonic; the answer)
        self._cache: dict[str, tuple[float, Answer]] = {}
        self._fetching: dict[str, asyncio.Future[Answer]] = {}

    async def states(
        self, session: aiohttp.ClientSession, routes: Iterable[Route], key: str
    ) -> dict[str, PeerTier | Unreachable]:
        """Tier name -> its state as its machine's gateway says (or why it did not)."""
        by_peer: dict[str, list[str]] = {}
        for route in routes:
            if route.peer is not None:
                by_peer.setdefault(route.peer, []).append(route.name)
        # Only the current peers are kept: the cache is bounded by the stack's hosts.
        for gone in set(self._cache) - set(by_peer):
            del self._cache[gone]
        answers = await asyncio.gather(
            *(self._answer(session, peer, names, key) for peer, names in by_peer.items())
        )
        out: dict[str, PeerTier | Unreachable] = {}
        for (_, names), answer in zip(by_peer.items(), answers, strict=True):
            for name in names:
                if isinstance(answer, Unreachable):
                    out[name] = answer
                else:
                    out[name] = answer.get(name) or Unreachable("it does not list this tier")
        return out

    async def _answer(
        self, session: aiohttp.ClientSession, peer: str, names: list[str], key: str
    ) -> Answer:
        now = self.clock.monotonic()
        cached = self._cache.get(peer)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        pending = self._fetching.get(peer)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(session, peer, names, key))
            self._fetching[peer] = pending
            pending.add_done_callback(lambda _: self._fetching.pop(peer, None))
        answer = await asyncio.shield(pending)
        self._cache[peer] = (self.clock.monotonic(), answer)
        return answer

    async def _fetch(
        self, session: aiohttp.ClientSession, peer: str, names: list[str], key: str
    ) -> Answer:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with session.get(
                f"{peer}/v1/models", headers=peer_headers(key), timeout=timeout
            ) as resp:
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_STATES_BYTES:
                        break
                if resp.status != 200:
                    return Unreachable(f"it answered {resp.status}")
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror if exc.os_error and exc.os_error.strerror else str(exc)
            return Unreachable(f"it could not be reached ({reason})")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Unreachable(
                f"it did not answer within {self.timeout:g} s ({type(exc).__name__})"
            )
        if len(body) > MAX_STATES_BYTES:
            return Unreachable(f"its answer is over {MAX_STATES_BYTES} bytes")
        try:
            return read_states(bytes(body), names)
        except ValueError as exc:  # also not JSON
            return Unreachable(f"its answer is not a list of models ({str(exc)[:100]})")


def unreachable_detail(route: Route, why: str) -> str:
    return f"{where(route)} did not answer: {why}"
