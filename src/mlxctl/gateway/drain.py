"""A gateway that hands its clients over before it exits.

mlxctl replaces a gateway by starting the new one on the same port (``SO_REUSEPORT``)
and sending the old one ``SIGTERM`` once the new one serves. uvicorn's own graceful
shutdown closes every idle keep-alive connection at once; a client that sends its
next request on such a connection just then gets a connection error (measured: one
failed request per restart for a client sending back to back).

So ``SIGTERM`` first *drains*: the listening socket closes (new connections all reach
the new gateway), and each request still arriving on an open connection is answered
with ``Connection: close``, which moves that client to a new connection, i.e. to the
new gateway, without an error. The drain ends when no connection is left, or after
:data:`DRAIN_SECONDS`; then uvicorn's shutdown runs as usual (running requests and
streams finish). A second ``SIGTERM`` or a ``SIGINT`` skips what is left of the drain.

The listener is closed by the event loop, not in the signal handler: uvicorn's handler
is a Python one and runs between any two bytecodes, e.g. inside uvloop's accept callback
while it builds the new connection's protocol; closing the server there made uvloop's
``Server._attach`` raise an unhandled ``AssertionError`` (and drop that connection).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, MutableMapping
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    from mlxctl.machine.interfaces import Clock

DRAIN_SECONDS = 2.0
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
CLOSE = (b"connection", b"close")


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose ``SIGTERM`` drains connections before shutting down."""

    def __init__(
        self, config: uvicorn.Config, drain: float = DRAIN_SECONDS, *, clock: Clock
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.clock = clock
        self.drain_until: float | None = None

    @property
    def draining(self) -> bool:
        return self.drain_until is not None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain > 0 and not self.draining:
            self.drain_until = self.clock.monotonic() + self.drain
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not serving (yet): nothing is being accepted
                self.stop_listening()
            else:  # between two of the loop's callbacks, never inside an accept
                loop.call_soon_threadsafe(self.stop_listening)
            return
        super().handle_exit(sig, frame)

    def stop_listening(self) -> None:
        for server in self.servers:
            server.close()  # no new connection reaches this process

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and not self.should_exit:
            idle = not self.server_state.connections
            if idle or self.clock.monotonic() >= self.drain_until:
                super().handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)


def closing_while_draining(app: App, draining: Callable[[], bool]) -> App:
    """``app``, answering the requests that arrive while the server drains with
    ``Connection: close`` (a request already running keeps its connection; its client's
    next request gets the close)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not draining():
            await app(scope, receive, send)  # the usual case costs one check
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != CLOSE[0]]
                message = {**message, "headers": [*headers, CLOSE]}
            await send(message)

        await app(scope, receive, send_closing)

    return wrapped
