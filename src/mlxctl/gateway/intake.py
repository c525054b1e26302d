"""Receiving a request: headers and body within a deadline, a bounded body, strict JSON.

- A body larger than :data:`~mlxctl.gateway.bounds.MAX_BODY_BYTES` is a 413: refused
  from its ``Content-Length`` before a byte of it is read, or as soon as a chunked one
  passes the limit.
- A body must arrive within :data:`~mlxctl.gateway.bounds.BODY_READ_SECONDS` of its
  headers (408): one shorter than its ``Content-Length`` is not waited for forever.
- Headers must arrive within :data:`~mlxctl.gateway.bounds.HEADER_READ_SECONDS` of the
  connection (or of the request's first byte, on a kept-alive connection): the
  connection is closed otherwise (:class:`GuardedHttpTools`, uvicorn's httptools
  protocol with that one timer added).
- JSON is parsed strictly (:func:`~mlxctl.gateway.bounds.parse_json`: no NaN, no
  Infinity, a bounded depth, a 400 rather than a RecursionError), in a worker thread
  when the body is large: a 16 MB body never stalls every other client.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlxctl.gateway import bounds
from mlxctl.gateway.bounds import (
    HEADER_READ_SECONDS,
    MAX_BODY_BYTES,
    PARSE_OFF_LOOP_BYTES,
    RequestError,
    parse_json,
)


def too_large(size: int | None = None) -> RequestError:
    sent = f" ({size} bytes sent)" if size is not None else ""
    return RequestError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes{sent}",
                        code="request_too_large")  # fmt: skip


async def read_body(request: Request, *, deadline: float | None = None) -> bytes:
    """The request's body: at most :data:`MAX_BODY_BYTES` (413), within ``deadline``
    seconds (408; default :data:`BODY_READ_SECONDS`); a client that leaves meanwhile is
    a 499."""
    deadline = bounds.BODY_READ_SECONDS if deadline is None else deadline
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise RequestError(400, "Content-Length is not a number", code="invalid_request")
        if int(length) > MAX_BODY_BYTES:
            raise too_large(int(length))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise too_large()
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {deadline:g} s",
                           code="request_timeout") from None  # fmt: skip
    except ClientDisconnect:
        raise RequestError(499, "the client went away", code="client_gone") from None
    return b"".join(chunks)


async def read_json(request: Request, *, deadline: float | None = None) -> Any:
    """The request's body parsed as strict JSON (a large one off the event loop)."""
    data = await read_body(request, deadline=deadline)
    if len(data) > PARSE_OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json, data)
    return parse_json(data)


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on a request's headers: a connection
    that opens and sends nothing, or trickles a header forever, is closed after
    :data:`HEADER_READ_SECONDS` (uvicorn's keep-alive timer covers only the idle time
    between two requests)."""

    header_timeout = HEADER_READ_SECONDS
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
