"""The gateway's drain (:mod:`mlxctl.gateway.drain`) under uvloop: a ``SIGTERM`` that
lands while uvloop accepts a connection must not leave uvloop's server half-closed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mlxctl.gateway.drain import DrainingServer, closing_while_draining
from mlxctl.machine.clock import SystemClock

uvloop = pytest.importorskip("uvloop")


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_drain_starting_while_a_connection_is_accepted_serves_it() -> None:
    """uvicorn's signal handler is a Python one: it runs between any two bytecodes, here
    inside uvloop's accept (the connection's protocol is being built). Closing the
    listener there made uvloop's ``Server._attach`` raise an unhandled AssertionError."""
    loop_errors: list[dict[str, Any]] = []
    servers: list[DrainingServer] = []

    class SignalMidAccept(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if not servers[0].draining:
                servers[0].handle_exit(signal.SIGTERM, None)  # the handover's SIGTERM
            super().__init__(*args, **kwargs)

    async def main() -> bytes:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        app = closing_while_draining(hello, lambda: servers[0].draining)
        config = uvicorn.Config(app, http=SignalMidAccept, lifespan="off", log_level="warning")
        server = DrainingServer(config, drain=5.0, clock=SystemClock())
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        servers.append(server)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await asyncio.wait_for(serving, 10)
        return answer

    answer = uvloop.run(main())
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert b"connection: close" in answer.lower()
    assert loop_errors == []
