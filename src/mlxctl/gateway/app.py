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
which retries it and walks the stack's fallbacks, local or remote. Measured here,
LiteLLM's completion path costs ~7 ms of CPU a request; the whole fast path, HTTP
server included, ~1.3-1.5 ms (see ``docs/gateway.md``).

The client to the tiers is aiohttp, not httpx: measured in process against
``mlx_lm.server``, one 1-token completion costs ~0.75-1.1 ms of CPU through aiohttp
and ~1.7-2.5 ms through httpx (httpcore, anyio's cancel scopes and h11 in pure
Python), which was most of the gateway's own CPU per request.

Every request passes through :meth:`Gateway.handle`: one place that holds it (the
tier's concurrency gate) and sees it end (a stream ends with its last byte), which
is where on-demand start and request accounting hook in.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as HttpRoute

from mlxctl.gateway.answers import StreamRenamer, renamed
from mlxctl.gateway.requests import Checked, Endpoint, RequestError, check_request
from mlxctl.gateway.routing import RoutingTable
from mlxctl.machine.clock import SystemClock
from mlxctl.runtimes.base import HOST
from mlxctl.runtimes.gateway import Route

if TYPE_CHECKING:
    from mlxctl.machine.interfaces import Clock

PATHS: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "text": "/v1/completions"}
JSON_BODY = {"Content-Type": "application/json"}
# A refused connection is known at once; a tier that accepts but never answers
# headers is slow, not dead, and gets the whole request timeout.
CONNECT_TIMEOUT = 5.0
HOLD_POLL = 0.25


def error(
    status: int,
    message: str,
    *,
    code: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
) -> JSONResponse:
    """An OpenAI-style error response."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def backend_error(exc: Exception) -> JSONResponse:
    """A Router exception as the client should see it: the backend's 4xx, else 5xx."""
    from litellm.exceptions import APIConnectionError, Timeout

    message = str(exc).replace("litellm.", "", 1)[:500]
    if isinstance(exc, Timeout):
        return error(504, message, code="timeout", type_="timeout_error")
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 408):
        return error(status, message, code="backend_rejected")
    if isinstance(exc, APIConnectionError):
        return error(502, message, code="backend_unreachable", type_="server_error")
    return error(502, message, code="backend_error", type_="server_error")


class Gateway:
    """The app's state: the master key, the current routing table, the backend client,
    and the clock (hold deadlines, the models list's ``created``, reload timings)."""

    def __init__(self, key: str, table: RoutingTable, *, clock: Clock | None = None) -> None:
        self._key = b""
        self.set_key(key)
        self.table = table
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.requests_done = 0
        self._session: aiohttp.ClientSession | None = None

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
        if self._session is not None:
            await self._session.close()

    def set_key(self, key: str) -> None:
        if not key.strip():
            raise ValueError("the gateway needs a master key")
        self._key = key.strip().encode()

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        token = token or request.headers.get("x-api-key", "")
        return hmac.compare_digest(token.encode(), self._key)

    async def handle(
        self, table: RoutingTable, name: str, checked: Checked, endpoint: Endpoint
    ) -> Response:
        """Answer one request inside the tier's gate; the gate opens when the answer ends."""
        gate = table.gates.get(name)
        if gate is not None:
            await gate.semaphore.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.requests_done += 1
                if gate is not None:
                    gate.semaphore.release()

        try:
            route = table.config.route(name)
            if route is not None and table.config.fast_path:
                answer = await self._relay(table, route, checked, endpoint, release)
                if answer is not None:
                    return answer
                log(f"tier '{name}' did not answer; the Router retries it and its fallbacks")
            return await self._route(table, name, checked, endpoint, release)
        except BaseException:
            release()
            raise

    async def _relay(
        self,
        table: RoutingTable,
        route: Route,
        checked: Checked,
        endpoint: Endpoint,
        release: Callable[[], None],
    ) -> Response | None:
        """The fast path: the tier's answer, or None when the tier failed to answer."""
        body = json.dumps({**checked.params, "model": route.served_model}).encode()
        url = f"http://{HOST}:{route.port}{PATHS[endpoint]}"
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
        try:
            while True:
                try:
                    resp = await self.session.post(
                        url, data=body, headers=JSON_BODY, timeout=timeout
                    )
                    break
                except aiohttp.ClientConnectorError:
                    if held_until is None or clock.monotonic() >= held_until:
                        raise
                    # Yields to the event loop between attempts (the clock's sleep would
                    # block it); the deadline above is the clock's.
                    await asyncio.sleep(HOLD_POLL)
        except aiohttp.ConnectionTimeoutError:
            return None
        except TimeoutError:  # connected, but no answer within the timeout
            release()
            return error(504, f"tier '{route.name}' did not answer in time", code="timeout",
                         type_="timeout_error")  # fmt: skip
        except aiohttp.ClientError:
            return None  # refused or reset: the Router retries and falls back
        if resp.status >= 500:
            resp.release()
            return None
        media = resp.headers.get("Content-Type", "application/json")
        if not checked.stream or resp.status != 200:
            try:
                content = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                return None
            finally:
                resp.release()
            release()
            if resp.status == 200:
                content = renamed(content, checked.model)
            return Response(content, status_code=resp.status, media_type=media)
        return StreamingResponse(_events(resp, checked.model, release), media_type=media)

    async def _route(
        self,
        table: RoutingTable,
        name: str,
        checked: Checked,
        endpoint: Endpoint,
        release: Callable[[], None],
    ) -> Response:
        """Through ``litellm.Router``: its retries, timeouts and fallbacks (local or remote)."""
        params = dict(checked.params)
        try:
            router = await table.router()
            if endpoint == "chat":
                result = await router.acompletion(model=name, **params)
            else:
                result = await router.atext_completion(model=name, **params)
        except Exception as exc:  # the Router's errors, each mapped to its status
            release()
            return backend_error(exc)
        if not checked.stream:
            release()
            return Response(_dump(result, checked.model), media_type="application/json")
        stream = _sse(result, checked.model, release)
        return StreamingResponse(stream, media_type="text/event-stream")


async def _events(
    resp: aiohttp.ClientResponse, model: str, release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """A tier's stream, each event as soon as it is complete; the gate opens when it ends."""
    events = StreamRenamer(model)
    try:
        async for chunk in resp.content.iter_any():
            if out := events.feed(chunk):
                yield out
        if rest := events.flush():
            yield rest
    except (aiohttp.ClientError, TimeoutError) as exc:  # the tier died mid-stream: in-band
        message = f"the tier stopped mid-stream: {exc!r}"
        body = {"error": {"message": message, "code": "backend_error"}}
        yield b"data: " + json.dumps(body).encode() + b"\n\n"
    finally:
        resp.release()
        release()


def _dump(result: Any, public: str) -> bytes:
    data = result.model_dump(exclude_none=True)
    data["model"] = public
    return json.dumps(data, separators=(",", ":")).encode()


async def _sse(stream: Any, public: str, release: Callable[[], None]) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield b"data: " + _dump(chunk, public) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except Exception as exc:  # a backend that fails mid-stream: tell the client, in-band
        body = json.loads(bytes(backend_error(exc).body))
        yield b"data: " + json.dumps(body).encode() + b"\n\n"
    finally:
        release()


def build_app(gateway: Gateway) -> Starlette:
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
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "the request body is not valid JSON", code="invalid_json")
        try:
            checked = check_request(body, endpoint)
        except RequestError as exc:
            return error(exc.status, str(exc), code=exc.code, param=exc.param)
        table = gateway.table
        name = table.resolve(checked.model)
        if name is None:
            models = ", ".join(table.models()) or "(none)"
            return error(404, f"model '{checked.model}' does not exist; models: {models}",
                         code="model_not_found", param="model")  # fmt: skip
        return await gateway.handle(table, name, checked, endpoint)

    async def chat(request: Request) -> Response:
        return await completions(request, "chat")

    async def text(request: Request) -> Response:
        return await completions(request, "text")

    async def models(request: Request) -> Response:
        if not gateway.authorized(request):
            return unauthorized()
        now = int(gateway.clock.time())
        data = [
            {"id": n, "object": "model", "created": now, "owned_by": "mlxctl"}
            for n in gateway.table.models()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def live(_: Request) -> Response:
        routes = len(gateway.table.config.routes)
        # The PID tells mlxctl's probe which gateway answered while two share the port.
        return JSONResponse({"status": "ok", "routes": routes, "pid": os.getpid()})

    routes = [
        HttpRoute("/v1/chat/completions", chat, methods=["POST"]),
        HttpRoute("/chat/completions", chat, methods=["POST"]),
        HttpRoute("/v1/completions", text, methods=["POST"]),
        HttpRoute("/completions", text, methods=["POST"]),
        HttpRoute("/v1/models", models, methods=["GET"]),
        HttpRoute("/models", models, methods=["GET"]),
        HttpRoute("/health/liveliness", live, methods=["GET"]),
        HttpRoute("/health", live, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def log(message: str) -> None:
    """One line on stderr (the gateway's log file), stamped with the local time (called
    before any Gateway, and its clock, exists)."""
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} gateway: {message}", file=sys.stderr, flush=True)
