"""The routing table: a ``litellm.Router`` built from the routes file, and its limits.

A :class:`RoutingTable` is immutable once built. A reload builds a new one and the
app swaps a single reference, so requests already running finish on the table they
started with and new requests see the new routes: no restart, no failed request.
The per-tier concurrency gates are carried over from the old table when the tier
is unchanged, so a reload never lets a burst through to a busy backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlxctl.gateway.capacity import Waiting
from mlxctl.gateway.peers import HOP_HEADER
from mlxctl.runtimes.base import HOST
from mlxctl.runtimes.gateway import GatewayConfig, Route
from mlxctl.runtimes.tier_guard import read_key


@dataclass(frozen=True)
class Gate:
    """At most ``limit`` requests at once to one backend; the rest wait their turn, at
    most ``Route.max_waiting`` of them (:mod:`mlxctl.gateway.capacity`)."""

    key: tuple[str, int, int]
    semaphore: asyncio.Semaphore
    waiting: Waiting = field(default_factory=Waiting)


def deployment(route: Route, key: str = "") -> dict[str, Any]:
    """The Router deployment of a tier (LiteLLM's OpenAI-compatible adapter): a local
    tier's server, or the gateway of the machine serving it (``route.peer``), reached
    with the master key ``key`` and marked as relayed (gateway.peers' hop guard)."""
    if route.peer is not None:
        return {
            "model_name": route.name,
            "litellm_params": {
                "model": f"openai/{route.served_model}",
                "api_base": f"{route.peer}/v1",
                "api_key": key or "none",
                "extra_headers": {HOP_HEADER: "1"},
            },
            "model_info": {"id": route.name},
        }
    return {
        "model_name": route.name,
        "litellm_params": {
            "model": f"openai/{route.served_model}",
            "api_base": f"http://{HOST}:{route.port}/v1",
            # The tier's own key (runtimes.tier_guard), when it has one.
            "api_key": _tier_key(route.key_file) or "none",
        },
        # The deployment's id: the Router reports it for the answer (the response header
        # naming who answered, a fallback included).
        "model_info": {"id": route.name},
    }


def _tier_key(path: str | None) -> str:
    if not path:
        return ""
    try:
        return read_key(path)
    except OSError:
        return ""


def key_stamps(config: GatewayConfig) -> tuple[tuple[str, int], ...]:
    """When each tier's key file last changed (0: absent): a Router built before a key
    was written (the tier started after the gateway) is built again."""
    stamps = []
    for route in config.routes:
        if route.key_file:
            try:
                stamps.append((route.key_file, os.stat(route.key_file).st_mtime_ns))
            except OSError:
                stamps.append((route.key_file, 0))
    return tuple(stamps)


def router_kwargs(
    config: GatewayConfig, environ: Mapping[str, str], *, key: str = "", hop: bool = False
) -> dict[str, Any]:
    """``litellm.Router`` arguments for ``config``; remote keys come from ``environ``,
    ``key`` is the master key the tiers of other machines are reached with. ``hop``:
    for requests another machine's gateway relayed here, which are never relayed again,
    so the tiers of other machines are neither deployments nor fallbacks."""
    peers = {r.name for r in config.routes if r.peer is not None} if hop else set()
    model_list = [deployment(r, key) for r in config.routes if r.name not in peers]
    for remote in config.remotes:
        params: dict[str, Any] = {"model": remote.model}
        if remote.api_base:
            params["api_base"] = remote.api_base
        if remote.api_key_env:
            params["api_key"] = environ.get(remote.api_key_env, "")
        model_list.append(
            {"model_name": remote.name, "litellm_params": params, "model_info": {"id": remote.name}}
        )
    return {
        "model_list": model_list,
        # Where the Router reads fallbacks: a list of {model_group: [fallback groups]}.
        "fallbacks": [
            {name: [t for t in targets if t not in peers]}
            for name, targets in config.fallbacks.items()
            if name not in peers and any(t not in peers for t in targets)
        ],
        # The fast path made the first attempt: the Router's own first attempt on the
        # tier is the first retry.
        "num_retries": max(0, config.retries - 1) if config.fast_path else config.retries,
        "timeout": config.timeout,
        "stream_timeout": config.timeout,
        # One deployment per tier: a cooldown would refuse every request to the tier
        # for seconds after a single failure ("No deployments available").
        "disable_cooldowns": True,
    }


_IMPORT_LOCK = threading.Lock()
# LiteLLM's request path has run once in this process (:func:`warm_litellm`).
_warmed = threading.Event()


def _litellm_router_class() -> Any:
    """Import LiteLLM once, with nothing in the request path this gateway does not need.

    LiteLLM fetches its model cost map from the network when imported unless told not
    to; the gateway reads no prices, and a fetch that times out (no network) logs a
    warning seconds later from a background thread, into whatever runs then.
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from litellm.router import Router

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.drop_params = True
    litellm.callbacks = []
    litellm.success_callback = []
    litellm.failure_callback = []
    return Router


def warm_litellm() -> None:
    """Run LiteLLM's request path once against a port that refuses, in this thread.

    Its first real call imports the provider code (~3-4 s here): without this, the
    first request that fails over would wait that long. A socket bound but not
    listening refuses at once, so nothing is sent anywhere. Once per process.
    """
    import socket

    if _warmed.is_set():
        return
    with _IMPORT_LOCK:
        router_class = _litellm_router_class()
    with socket.socket() as closed:
        closed.bind((HOST, 0))
        port = closed.getsockname()[1]
        warm = Route(name="warm-up", port=port, served_model="warm-up")
        router = router_class(model_list=[deployment(warm)], num_retries=0, disable_cooldowns=True)
        call = router.acompletion(model="warm-up", messages=[{"role": "user", "content": "."}])
        # The refusal is the point: the code path is imported now.
        with contextlib.suppress(Exception):
            asyncio.run(call)
    _warmed.set()


class RoutingTable:
    """The routes of one version of the routes file.

    The ``litellm.Router`` is built on first need (:meth:`router`), in a thread: importing
    LiteLLM takes ~4-6 s here (and its first call ~2 s more), and the fast path never
    needs it. Only a table that :attr:`needs_router` ever reaches it; for any other,
    LiteLLM is never imported (~157 MiB of the gateway's ~236 MiB RSS here).
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        previous: RoutingTable | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.names = config.public_names()
        self._environ = os.environ if environ is None else environ
        self._router: Any = None
        self._stamps: tuple[tuple[str, int], ...] = ()
        # With routes to other machines, the requests another machine's gateway relayed
        # here (``hop``) have a Router of their own, built on first need.
        self._peers = any(r.peer is not None for r in config.routes)
        self._hop_router: Any = None
        self._hop_stamps: tuple[tuple[str, int], ...] = ()
        self._building: asyncio.Lock | None = None
        old = previous.gates if previous else {}
        self.gates: dict[str, Gate] = {}
        for route in config.routes:
            key = (route.name, route.port, route.max_concurrency)
            gate = old.get(route.name)
            if gate is None or gate.key != key:
                gate = Gate(key, asyncio.Semaphore(route.max_concurrency))
            self.gates[route.name] = gate

    @property
    def needs_router(self) -> bool:
        """Whether a request can reach the Router: it walks fallbacks (local tiers or
        remotes, which are only ever fallbacks), and takes every request when the fast
        path is off. A tier without fallbacks that fails to answer is asked again by the
        fast path itself (:meth:`mlxctl.gateway.app.Gateway._retried`)."""
        return bool(self.config.fallbacks) or not self.config.fast_path

    def _build_router(self, key: str, hop: bool) -> Any:
        with _IMPORT_LOCK:  # two threads importing LiteLLM at once see it half-initialised
            router_class = _litellm_router_class()
        return router_class(**router_kwargs(self.config, self._environ, key=key, hop=hop))

    async def router(self, *, hop: bool = False, key: str = "") -> Any:
        """The ``litellm.Router`` of these routes (built once, off the event loop, and
        again when a tier's key file, or the master key the tiers of other machines are
        reached with, has changed since). ``hop``: the Router of requests another
        machine's gateway relayed here (the same one when no tier is elsewhere)."""
        hop = hop and self._peers
        stamps = key_stamps(self.config)
        if self._peers:
            stamps += (("master key", hash(key)),)
        if self._built(hop) != stamps:
            if self._building is None:
                self._building = asyncio.Lock()
            async with self._building:
                if self._built(hop) != stamps:
                    router = await asyncio.to_thread(self._build_router, key, hop)
                    if hop:
                        self._hop_router, self._hop_stamps = router, stamps
                    else:
                        self._router, self._stamps = router, stamps
        return self._hop_router if hop else self._router

    def _built(self, hop: bool) -> tuple[tuple[str, int], ...] | None:
        """The stamps the Router was built with (None: not built yet)."""
        if hop:
            return self._hop_stamps if self._hop_router is not None else None
        return self._stamps if self._router is not None else None

    def resolve(self, name: str) -> str | None:
        """The route a public name (tier name or alias) reaches, or None."""
        return self.names.get(name)

    def models(self) -> list[str]:
        return sorted(self.names)
