"""Streams that end the way the SDKs can tell: ``[DONE]`` after an answer, or an error event.

The OpenAI SDK ends a stream quietly at ``data: [DONE]`` *or at the end of the bytes*,
and raises ``APIError`` for an event whose data is ``{"error": {...}}``. So a stream a
tier breaks (killed mid-answer, a reset, a server that stops writing and closes) must
end with such an error event: a stream that just stops looks like a short success.

Two ways a tier's stream goes wrong before it has said anything:

- vllm-mlx's simple engine, asked while it generates for another request, answers a
  stream with 200, a ``role`` chunk, and then closes it (its ``_disconnect_guard``
  swallows the ``EngineBusy``): no error, no ``[DONE]``. Measured through the old
  gateway, 8115 of 8120 streams under 16 clients were such empty "successes".
- a tier killed after its headers, before its first token.

So the start of a stream is read before the client is answered (:func:`open_stream`,
at most :data:`PEEK_SECONDS`, usually one event: the busy close comes within
milliseconds): a stream that ends before it produced anything is not an answer (busy:
asked again; failed: the Router and its fallbacks), and the client never sees it.
After that, the stream is relayed event by event (:func:`relay_events`); if it ends
without ``[DONE]``, an error event closes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from mlxctl.gateway.answers import StreamRenamer

# How long the start of a stream is read before the client gets its headers.
PEEK_SECONDS = 1.0
_DONE = b"[DONE]"


def error_event(message: str, code: str = "backend_error", status: int = 502) -> bytes:
    """One SSE event the OpenAI SDK raises as ``APIError``."""
    body = {"error": {"message": message, "type": "server_error", "code": code, "status": status}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _events(buffer: bytes) -> list[bytes]:
    """The data of each complete event in ``buffer`` (comments and partial tail left out)."""
    out = []
    for event in buffer.replace(b"\r\n", b"\n").split(b"\n\n")[:-1]:
        data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data))
    return out


# Events of the Anthropic Messages and Responses streams that say nothing yet (like a
# chat stream's role announcement); every other event of theirs does.
_ANNOUNCEMENTS = frozenset(
    {"message_start", "ping", "content_block_start", "response.created", "response.in_progress"}
)
# The last event of a finished Anthropic Messages or Responses stream (a chat stream's
# is ``[DONE]``).
_LAST = frozenset(
    {"message_stop", "response.completed", "response.incomplete", "response.failed", "error"}
)


def ends_stream(out: bytes) -> bool:
    """Whether ``out`` (complete events) ends with a stream's last event."""
    tail = out.rstrip()
    if tail.endswith(_DONE):
        return True
    events = _events(tail + b"\n\n")
    if not events:
        return False
    try:
        last = json.loads(events[-1])
    except ValueError:
        return False
    return isinstance(last, dict) and last.get("type") in _LAST


def says_something(data: bytes) -> bool:
    """Whether one event's data is more than a ``role`` announcement: content, a tool
    call, a finish reason, usage, an error, or ``[DONE]``."""
    if data == _DONE:
        return True
    try:
        event = json.loads(data)
    except ValueError:
        return True  # not ours to judge: relay it
    if not isinstance(event, dict):
        return True
    if "error" in event or event.get("usage"):
        return True
    kind = event.get("type")
    if isinstance(kind, str):  # an Anthropic Messages or OpenAI Responses event
        return kind not in _ANNOUNCEMENTS
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            return True
        if choice.get("finish_reason") or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(v for k, v in delta.items() if k != "role"):
            return True
    return False


@dataclass(frozen=True)
class StreamStart:
    """The bytes of a stream read before the client is answered."""

    head: bytes
    # The tier closed the stream without a word (busy, or killed): not an answer.
    empty: bool


async def open_stream(resp: aiohttp.ClientResponse, seconds: float = PEEK_SECONDS) -> StreamStart:
    """Read ``resp``'s stream until it says something, ends, or ``seconds`` pass.

    A broken connection here raises (``aiohttp.ClientError``): nothing was relayed yet.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    head = bytearray()
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return StreamStart(bytes(head), False)
        try:
            chunk = await asyncio.wait_for(resp.content.readany(), remaining)
        except TimeoutError:
            return StreamStart(bytes(head), False)
        if not chunk:
            said = any(says_something(d) for d in _events(bytes(head)))
            return StreamStart(bytes(head), not said)
        head += chunk
        if any(says_something(d) for d in _events(bytes(head))):
            return StreamStart(bytes(head), False)


async def relay_events(
    resp: aiohttp.ClientResponse, model: str, release: Callable[[], None], head: bytes = b""
) -> AsyncIterator[bytes]:
    """A tier's stream, each event as soon as it is complete, with the client's model
    name; an error event if it breaks or ends without ``[DONE]``. The turn ends (and
    the connection to the tier is closed, if the stream did not finish) when it ends."""
    events = StreamRenamer(model)
    done = False
    finished = False
    try:
        if head and (out := events.feed(head)):
            done = ends_stream(out)
            yield out
        async for chunk in resp.content.iter_any():
            if out := events.feed(chunk):
                done = ends_stream(out)
                yield out
        if rest := events.flush():
            done = ends_stream(rest)
            yield rest
        finished = True
        if not done:
            yield error_event("the tier ended the stream before it finished its answer")
    except (aiohttp.ClientError, TimeoutError) as exc:  # the tier died mid-stream: in-band
        yield error_event(f"the tier stopped mid-stream ({type(exc).__name__})")
    finally:
        if finished:
            resp.release()
        else:  # the client left, or the tier broke: nothing more is read from it
            resp.close()
        release()


def chunk_finished(chunk: Any) -> bool:
    """Whether a LiteLLM stream chunk carries a finish reason."""
    for choice in getattr(chunk, "choices", None) or ():
        if getattr(choice, "finish_reason", None):
            return True
    return False
