"""Running the gateway: build the routes, bind, serve, and reload routes in place.

LiteLLM is loaded only for routes that need its Router (fallbacks, or the fast path
off: :attr:`RoutingTable.needs_router`), and then at start or at the reload that adds
them, in the background, so that the first failover does not wait for its import.
The listening socket is opened with ``SO_REUSEPORT``, so a replacement gateway
can bind the same port while the old one still serves: the kernel hands new
connections to both until the old one closes, which keeps a restart's error window
near zero. ``SIGTERM`` stops accepting and lets running requests (streams
included) finish.

Reload: mlxctl replaces the routes file atomically (write + rename); the gateway
notices the new file within :data:`POLL_SECONDS` (or at once on ``SIGHUP``),
validates it, builds a new routing table and swaps it in. A file that does not
validate is logged and the current routes stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from mlxctl.gateway.app import Gateway, build_app, log
from mlxctl.gateway.drain import DrainingServer, closing_while_draining
from mlxctl.gateway.intake import GuardedHttpTools
from mlxctl.gateway.requests import request_adapters
from mlxctl.gateway.routing import RoutingTable, warm_litellm
from mlxctl.runtimes.gateway import (
    ADMIN_SOCKET_ENV,
    KEY_FILE_ENV,
    MASTER_KEY_ENV,
    GatewayConfig,
    parse_config,
)

if TYPE_CHECKING:
    from mlxctl.machine.interfaces import Clock

POLL_SECONDS = 0.5


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_config(path: Path) -> GatewayConfig:
    return parse_config(path.read_text(encoding="utf-8"))


def read_key(key_file: Path | None) -> str:
    """The master key: the generated key's file when there is one, else the environment."""
    if key_file is not None:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError:
            key = ""
        if key:
            return key
    return os.environ.get(MASTER_KEY_ENV, "").strip()


class Reloader:
    """Swaps the routing table when the routes file changes, and the key when its file does."""

    def __init__(self, gateway: Gateway, path: Path, key_file: Path | None = None) -> None:
        self.gateway = gateway
        self.path = path
        self.stamp = _stamp(path)
        self.key_file = key_file
        self.key_stamp = _stamp(key_file) if key_file else None
        self.wake = asyncio.Event()
        self.warm: asyncio.Future[None] | None = None

    def reload_key(self) -> None:
        if self.key_file is None:
            return
        stamp = _stamp(self.key_file)
        if stamp is None or stamp == self.key_stamp:
            return
        self.key_stamp = stamp
        key = read_key(self.key_file)
        if key:
            self.gateway.set_key(key)
            log(f"master key re-read from {self.key_file}")

    def reload(self) -> bool:
        stamp = _stamp(self.path)
        if stamp is None or stamp == self.stamp:
            return False
        self.stamp = stamp
        started = self.gateway.clock.monotonic()
        try:
            config = read_config(self.path)
            if config == self.gateway.table.config:
                return False
            table = RoutingTable(config, previous=self.gateway.table)
            if table.needs_router:
                self.warm = asyncio.ensure_future(
                    warm(table, self.gateway.clock, key=self.gateway.key)
                )
        except Exception as exc:  # a bad file must never take the serving routes down
            log(f"routes file {self.path} not loaded, keeping the current routes: {exc}")
            return False
        self.gateway.table = table
        took = (self.gateway.clock.monotonic() - started) * 1000
        log(f"routes reloaded in {took:.1f} ms: {', '.join(table.models()) or '(none)'}")
        return True

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
            self.wake.clear()
            self.reload_key()
            self.reload()


async def warm(table: RoutingTable, clock: Clock, *, key: str) -> None:
    """Build ``table``'s Router and run LiteLLM's request path once, off the event loop,
    when its routes need the Router; otherwise nothing (LiteLLM stays unimported).
    ``key``: the master key, which the Router sends to other machines' gateways."""
    if not table.needs_router:
        log("litellm.Router not needed (no fallbacks; the fast path serves every request)")
        return
    started = clock.monotonic()
    await table.router(key=key)
    await asyncio.to_thread(warm_litellm)
    log(f"litellm.Router ready ({clock.monotonic() - started:.2f} s)")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


async def serve(config_path: Path, host: str, port: int, *, clock: Clock) -> None:
    import uvicorn

    started = clock.monotonic()
    key_file = Path(os.environ[KEY_FILE_ENV]) if os.environ.get(KEY_FILE_ENV) else None
    key = read_key(key_file)
    if not key:
        raise SystemExit(f"gateway: no master key in {MASTER_KEY_ENV} or {KEY_FILE_ENV}")
    admin = os.environ.get(ADMIN_SOCKET_ENV, "").strip()
    gateway = Gateway(
        key,
        RoutingTable(read_config(config_path)),
        clock=clock,
        admin_socket=Path(admin) if admin else None,
    )
    for endpoint in ("chat", "text"):  # the OpenAI schema, compiled before the first request
        request_adapters(endpoint)
    reloader = Reloader(gateway, config_path, key_file)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.wake.set)
    watcher = asyncio.create_task(reloader.run())
    server: DrainingServer | None = None
    app = closing_while_draining(build_app(gateway), lambda: server is not None and server.draining)
    server = DrainingServer(
        uvicorn.Config(
            app,
            # httptools (C parser: ~0.2 ms less CPU a request than h11, docs/gateway.md) with
            # a deadline on each request's headers.
            http=GuardedHttpTools,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=30,
            timeout_keep_alive=30,
        ),
        clock=clock,
    )
    sock = bind(host, port)
    models = ", ".join(gateway.table.models())
    log(f"serving {models} on {host}:{port} ({clock.monotonic() - started:.2f} s after start)")
    if not admin:
        log(f"no {ADMIN_SOCKET_ENV}: demand is reported nowhere; on-demand tiers answer 503")

    warming = asyncio.create_task(warm(gateway.table, clock, key=gateway.key))
    # Demand reports from the start (not only once a request comes): a controller that
    # restarted learns each tier's last request end from the first heartbeat.
    gateway.demand.start()
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        warming.cancel()
        await gateway.aclose()  # the tiers' connections, closed rather than dropped
