"""The API families besides OpenAI chat and text completions: what they share.

``POST /v1/messages`` (Anthropic Messages, :mod:`mlxctl.gateway.anthropic`) and
``POST /v1/responses`` (OpenAI Responses, :mod:`mlxctl.gateway.responses`) reach a tier
one of two ways, decided by the tier's runtime:

- **native**: vllm-mlx serves both routes itself. The request goes to the tier's own
  route as is (``model`` set to its served name), through :meth:`Gateway.handle` and
  the fast path like a chat request (:class:`Native`), and the answer comes back as the
  tier wrote it but for its ``model`` (:mod:`mlxctl.gateway.answers`).
- **translated**: ``mlx_lm.server`` serves only chat completions. The request is
  translated to a chat completion, which then *is* a chat request for the gateway
  (the same checks, gate, holds, fast path, Router), and its answer, streamed or not,
  is translated back.

Either way, the request is also checked as the chat completion it translates to
(:func:`mlxctl.gateway.requests.check_request`), so the chat route's bounds and
refusals apply to every family. When the tier fails to answer, the Router walks its
fallbacks with the translated chat completion (:func:`route_native`), and the result
is translated back: a native request's fallback may be any tier or remote.

Why our own translation and not LiteLLM's (``Router.aanthropic_messages``,
``Router.aresponses``), measured here with LiteLLM 1.106.2 against ``mlx_lm.server``
(the tiny tool-call model):

- with the deployments the gateway uses (``openai/...``), both calls send the request
  to the backend's own ``/v1/responses`` (``/v1/messages`` is bridged to Responses for
  the ``openai`` provider): ``mlx_lm.server`` answers 404. Chat completions are reached
  only with a process-wide switch (``litellm.use_chat_completions_url_for_anthropic_messages``)
  and a per-call ``use_chat_completions_api=True``; with both, its streamed tool calls
  were right;
- but every request of these routes would then run through LiteLLM: ~9 ms added at p50
  over a direct call (1-token, 30 sequential requests; ``mlx_lm.server`` p50 11.3 ms,
  through ``aanthropic_messages`` 20.5 ms), against ~1 ms for the fast path, and outside
  the fast path's holds (a tier refusing connections while it restarts or loads on
  demand is waited for there, not in the Router);
- its usage was wrong for the Anthropic shape (``input_tokens: 1`` with
  ``cache_read_input_tokens: 21`` for an 18-token prompt, ``0`` in ``message_start``)
  and its Responses ids are base64 blobs of LiteLLM's routing state.

A translation of a few hundred lines keeps every family on the fast path, with the
same holds, gates and model names, and is tested against fake tiers and real ones.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from mlxctl.gateway.answers import _EVENT_END
from mlxctl.gateway.bounds import MAX_MODEL_NAME, RequestError, clip, refusal
from mlxctl.gateway.errors import Body, as_bytes, openai_error_fields
from mlxctl.gateway.intake import read_json
from mlxctl.gateway.peers import came_from_peer
from mlxctl.gateway.prompt_tokens import fit_context
from mlxctl.gateway.requests import Checked, check_request
from mlxctl.gateway.tierfit import fit_request

if TYPE_CHECKING:
    from mlxctl.gateway.app import Gateway
    from mlxctl.gateway.routing import RoutingTable
    from mlxctl.machine.interfaces import Clock
    from mlxctl.runtimes.gateway import Route

Api = Literal["messages", "responses"]
# The routes each runtime serves itself (vllm-mlx 0.5: both; mlx_lm.server: neither).
NATIVE: dict[str, frozenset[Api]] = {"vllm-mlx": frozenset({"messages", "responses"})}
NATIVE_PATHS: dict[Api, str] = {"messages": "/v1/messages", "responses": "/v1/responses"}


def request_head(body: Any, refused: Mapping[str, str]) -> str:
    """What every family checks first: a JSON object, a model name, and none of the
    fields it refuses outright (``refused``: field -> why); returns the model name."""
    if not isinstance(body, dict):
        raise refusal("body", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_NAME:
        raise refusal("model", "a model name (a string) is required")
    for name, why in refused.items():
        if body.get(name):
            raise refusal(name, f"not supported: {why}")
    return model


def serves_natively(route: Route | None, api: Api) -> bool:
    return route is not None and api in NATIVE.get(route.runtime, frozenset())


@dataclass(frozen=True, kw_only=True)
class Native(Checked):
    """A Messages or Responses request relayed as is to a tier that serves its route.

    ``params`` is the request itself (without ``model``); the fast path posts it to
    ``path``. Should the tier fail, the Router gets ``family``'s chat translation."""

    path: str
    family: Family


@dataclass(frozen=True)
class Parsed:
    """A family's request, checked: the public model name, whether it streams, the
    body to relay to a native tier, and its chat completion translation."""

    model: str
    stream: bool
    native: dict[str, Any]
    chat: dict[str, Any]
    # What the answer's translation needs of the request (the Responses API: the
    # namespace of each function tool that came in a namespace).
    namespaces: dict[str, str] = field(default_factory=dict)
    # When it arrived (the gateway's clock, whole seconds): the Responses ``created_at``.
    created: int = 0


class Translator(Protocol):
    """One streamed answer, translated from chat completion chunks to a family's events."""

    def start(self) -> bytes: ...
    def feed(self, chunk: dict[str, Any]) -> bytes: ...
    def finish(self) -> bytes: ...
    def fail(self, status: int, message: str) -> bytes: ...


class Family(Protocol):
    """What differs between the API families."""

    api: Api

    def parse(self, body: Any) -> Parsed: ...
    def error(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        retry_after: str | None = None,
    ) -> Response: ...
    def fix_error(self, response: Response) -> Response: ...
    def native_stream(self, stream: Body) -> AsyncIterator[bytes]: ...
    def from_chat(self, completion: dict[str, Any], parsed: Parsed) -> dict[str, Any]: ...
    def translator(self, parsed: Parsed) -> Translator: ...


# -- the chat completion stream, parsed ------------------------------------------------

DONE = object()


def _events(buffer: bytes) -> tuple[list[bytes], bytes]:
    events: list[bytes] = []
    start = 0
    for end in _EVENT_END.finditer(buffer):
        events.append(buffer[start : end.start()])
        start = end.end()
    return events, buffer[start:]


def parse_event(event: bytes) -> object:
    """One SSE event of a chat stream: its JSON ``data`` (a dict), :data:`DONE`, the
    event itself for a comment (keep-alives pass on), or None for anything else."""
    data = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if not data:
        return event if event.startswith(b":") else None
    payload = b"\n".join(data)
    if payload == b"[DONE]":
        return DONE
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def translate_stream(body: Body, translator: Translator) -> AsyncIterator[bytes]:
    """A chat completion stream (SSE bytes, as the fast path relays it) as a family's events.

    Comments (a held request's keep-alives) pass at once; the family's first event goes
    out with the tier's first event. A stream that ends with neither ``[DONE]`` nor a
    ``finish_reason``, or with an in-band error, ends with the family's error event.
    """
    tail = b""
    started = finished = False
    try:
        async for piece in body:
            chunk = as_bytes(piece)
            events, tail = _events(tail + chunk)
            out: list[bytes] = []
            for event in events:
                item = parse_event(event)
                if item is None:
                    continue
                if isinstance(item, bytes):
                    out.append(item + b"\n\n")
                    continue
                if not started:
                    out.append(translator.start())
                    started = True
                if item is DONE:
                    finished = True
                    continue
                assert isinstance(item, dict)
                if "error" in item and "choices" not in item:
                    out.append(translator.fail(*openai_error_fields(item)))
                    yield b"".join(out)
                    return
                out.append(translator.feed(item))
            if out:
                yield b"".join(out)
    except Exception as exc:  # the relay itself failed: tell the client, in-band
        yield (b"" if started else translator.start()) + translator.fail(
            502, f"the stream broke: {exc!r}"[:500]
        )
        return
    if not started:
        yield translator.start()
    yield (
        translator.finish()
        if finished or _ended(translator)
        else translator.fail(502, "the tier's stream ended before its answer did")
    )


def _ended(translator: Translator) -> bool:
    return getattr(translator, "stop", None) is not None


async def chunk_stream(chunks: Any, translator: Translator, name: str) -> AsyncIterator[bytes]:
    """LiteLLM's streamed chat chunks (objects) as a family's events."""
    from mlxctl.gateway.backend_errors import router_error

    yield translator.start()
    try:
        async for chunk in chunks:
            yield translator.feed(chunk.model_dump(exclude_none=True))
    except Exception as exc:
        why = router_error(exc, name)
        yield translator.fail(why.status, why.message)
        return
    yield translator.finish()


# -- the request path ------------------------------------------------------------------


async def serve(gateway: Gateway, request: Request, family: Family) -> Response:
    """One request of ``family``: key, body, checks, model, then the tier (native or
    translated); every refusal in the family's own shape."""
    if not gateway.authorized(request):
        return family.error(
            401,
            "missing or wrong API key: send 'x-api-key: <key>' or 'Authorization: Bearer <key>'"
            " (mlxctl gateway key)",
            code="invalid_api_key",
        )
    table = gateway.table
    try:
        # The body's size, deadline and strict JSON: the shared intake's.
        parsed = family.parse(await read_json(request))
        parsed = dataclasses.replace(parsed, created=int(gateway.clock.time()))
        # The chat checks apply to every family: their bounds and refusals hold here too,
        # and so do the tier's (context, extensions).
        chat = check_request({**parsed.chat, "model": parsed.model}, "chat")
        if came_from_peer(request.headers):
            chat = dataclasses.replace(chat, hop=True)
        name = table.resolve(parsed.model)
        route = table.config.route(name) if name is not None else None
        # Another machine's tier is checked by its own gateway, which knows its model.
        if route is not None and route.peer is None:
            chat = fit_request(chat, route, "chat", table.config)
            chat = await fit_context(chat, route, "chat")
    except RequestError as exc:
        response = family.error(exc.status, str(exc), code=exc.code, param=exc.param)
        if exc.status == 413:  # the rest of the body would be read as the next request
            response.headers["Connection"] = "close"
        return response
    if name is None:
        models = ", ".join(table.models()) or "(none)"
        return family.error(404, f"model '{clip(parsed.model)}' does not exist; models: "
                            f"{models}", code="model_not_found", param="model")  # fmt: skip

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    from mlxctl.gateway.app import TIER_HEADER

    response = await answer(gateway, table, name, family, parsed, chat, gone)
    response.headers.setdefault(TIER_HEADER, name)
    return response


async def answer(
    gateway: Gateway,
    table: RoutingTable,
    name: str,
    family: Family,
    parsed: Parsed,
    chat: Checked,
    gone: Callable[[], Awaitable[object]] | None = None,
) -> Response:
    """The tier's answer to a checked request of ``family`` (through :meth:`Gateway.handle`)."""
    route = table.config.route(name)
    if serves_natively(route, family.api):
        native = Native(
            model=parsed.model,
            stream=parsed.stream,
            params=parsed.native,
            path=NATIVE_PATHS[family.api],
            family=family,
            hop=chat.hop,
        )
        response = await gateway.handle(table, name, native, "chat", gone=gone)
        if isinstance(response, StreamingResponse):
            return _streaming(family.native_stream(response.body_iterator), response)
        return family.fix_error(response)
    response = await gateway.handle(table, name, chat, "chat", gone=gone)
    if isinstance(response, StreamingResponse):
        if response.status_code != 200:
            return response
        body = translate_stream(response.body_iterator, family.translator(parsed))
        return _streaming(body, response)
    if response.status_code != 200:
        return family.fix_error(response)
    try:
        completion = json.loads(bytes(response.body))
    except ValueError:
        return family.error(502, "the tier's answer is not JSON", code="backend_error")
    return JSONResponse(family.from_chat(completion, parsed))


def _streaming(body: AsyncIterator[bytes], like: StreamingResponse) -> StreamingResponse:
    headers = {k: v for k, v in like.headers.items() if k.lower() != "content-length"}
    return StreamingResponse(body, status_code=like.status_code, headers=headers,
                             media_type="text/event-stream")  # fmt: skip


async def route_native(
    table: RoutingTable,
    name: str,
    checked: Native,
    release: Callable[[], None],
    clock: Clock,
    key: str,
) -> Response:
    """A native request whose tier failed: its chat translation through ``litellm.Router``
    (retries, fallbacks local or remote; ``key`` for those on other machines), the
    answer translated back."""
    from mlxctl.gateway.backend_errors import router_error

    family = checked.family
    parsed = family.parse({**checked.params, "model": checked.model})
    parsed = dataclasses.replace(parsed, created=int(clock.time()))
    params = dict(parsed.chat)
    try:
        router = await table.router(hop=checked.hop, key=key)
        result = await router.acompletion(model=name, **params)
    except Exception as exc:  # the Router's errors, each mapped to its status
        release()
        why = router_error(exc, name)
        retry = "1" if why.kind == "busy" else None
        return family.error(why.status, why.message, code=why.code, retry_after=retry)
    if not checked.stream:
        release()
        completion = result.model_dump(exclude_none=True)
        return JSONResponse(family.from_chat(completion, parsed))

    async def body() -> AsyncIterator[bytes]:
        try:
            async for out in chunk_stream(result, family.translator(parsed), name):
                yield out
        finally:
            release()

    return StreamingResponse(body(), media_type="text/event-stream")


# -- helpers the families share ----------------------------------------------------------


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


def usage_numbers(usage: dict[str, Any] | None) -> tuple[int, int, int]:
    """``(prompt, completion, cached)`` tokens of a chat completion's usage (0 unknown)."""
    if not isinstance(usage, dict):
        return 0, 0, 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0

    def number(value: object) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    return (
        number(usage.get("prompt_tokens")),
        number(usage.get("completion_tokens")),
        number(cached),
    )


def text_of(parts: Iterator[Any] | list[Any], kinds: frozenset[str]) -> str | None:
    """The text of a list of content parts when each is a text part of ``kinds``."""
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") not in kinds:
            return None
        text = part.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)


def arguments_object(arguments: object) -> dict[str, Any]:
    """A tool call's JSON arguments as an object (Anthropic's ``input`` must be one)."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return {"arguments": arguments}
        return value if isinstance(value, dict) else {"value": value}
    return {}
