"""A tier's real capacity, respected: a bounded queue in the gateway, never the backend's.

Each tier's gate (:class:`mlxctl.gateway.routing.Gate`) lets ``Route.max_concurrency``
requests reach its server at once: the capacity mlxctl derives from the runtime and
``concurrency`` (:mod:`mlxctl.desired.tier_route`; a vllm-mlx tier without continuous
batching takes ONE). The others wait here, in arrival order, at most
``Route.max_waiting`` of them; one more is answered at once with 503 and a
``Retry-After`` estimated from how long the tier's requests take (the OpenAI and
Anthropic SDKs retry a 503 after that long).

A request whose client goes away while it waits leaves the queue at once, and one
already sent has its request to the tier closed at once (:func:`unless_gone`): the
tier is not made to generate for nobody (what each runtime then does is measured in
``docs/gateway.md``).

A server may still answer "busy" (vllm-mlx's 503 ``text_generation_busy``) to a request
the gateway sent it: mlxctl's own 1-token probe, a request whose client left that the
server has not noticed yet, another program on its port. That answer is never passed
on: the request keeps its turn and asks again (:class:`Backoff`), up to the tier's
hold, then gets a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from mlxctl.runtimes.tier_guard import read_key

if TYPE_CHECKING:
    from mlxctl.gateway.routing import Gate

T = TypeVar("T")
# An awaitable that ends when the client has gone (its connection closed).
Gone = Callable[[], Awaitable[object]]
# Seconds a tier's requests are assumed to take before one has been timed.
FIRST_GUESS = 2.0
RETRY_AFTER_MAX = 60
# Asking a busy tier again: first after BUSY_FIRST seconds, then 1.5 times longer each
# time, never more than BUSY_MAX apart (a probe's 1-token completion takes ~10-50 ms).
BUSY_FIRST = 0.02
BUSY_MAX = 0.5


class QueueFull(Exception):
    """No room left in a tier's queue: answer 503 with ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client went away before its answer started."""


@dataclass
class Waiting:
    """A gate's queue: how many wait, and how long its requests take (a moving mean)."""

    count: int = 0
    mean_seconds: float = FIRST_GUESS

    def retry_after(self, capacity: int) -> int:
        """Seconds until the queue has likely moved by its own length."""
        turns = (self.count + 1) / max(1, capacity)
        return max(1, min(RETRY_AFTER_MAX, math.ceil(turns * self.mean_seconds)))

    def timed(self, seconds: float) -> None:
        self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * max(0.0, seconds)


async def wait_turn(gate: Gate, name: str, capacity: int, limit: int) -> None:
    """Take a turn at ``gate``: at once if the tier has room, else after the requests
    ahead; :class:`QueueFull` when ``limit`` requests already wait."""
    semaphore, waiting = gate.semaphore, gate.waiting
    if semaphore.locked() and waiting.count >= limit:
        retry = waiting.retry_after(capacity)
        raise QueueFull(
            f"tier '{name}' is at its capacity ({capacity} at once) and {waiting.count} "
            f"requests are already waiting for it; try again in {retry} s",
            retry,
        )
    waiting.count += 1
    try:
        await semaphore.acquire()
    finally:
        waiting.count -= 1


async def unless_gone(
    work: Awaitable[T], gone: Gone | None, orphan: Callable[[T], Awaitable[None]] | None = None
) -> T:
    """``work``'s result; :class:`ClientGone` (and ``work`` cancelled, which closes its
    connection to the tier) when the client goes away first. A result that came just
    as the client left is handed to ``orphan`` to let go of what it holds."""
    task = asyncio.ensure_future(work)
    if gone is None:
        return await task
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            raise ClientGone from None
        if orphan is not None:  # it finished just as it was cancelled
            await orphan(result)
        raise ClientGone
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


class Backoff:
    """Waits between the times a busy tier is asked again, up to a deadline."""

    def __init__(self, now: Callable[[], float], budget: float) -> None:
        self.now = now
        self.until = now() + budget
        self.delay = BUSY_FIRST
        self.tries = 0

    async def again(self) -> bool:
        """Wait, then True; False (no wait) once the deadline has passed."""
        if self.now() + self.delay > self.until:
            return False
        await asyncio.sleep(self.delay)
        self.tries += 1
        self.delay = min(BUSY_MAX, self.delay * 1.5)
        return True


class TierKeys:
    """Each tier's key, read from its file (``Route.key_file``) and read again when the
    file changes (it is created when the tier first starts, maybe after the gateway)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}

    def headers(self, path: str | None) -> dict[str, str]:
        """``Authorization`` for the tier whose key is in ``path`` (none without one)."""
        if not path:
            return {}
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            return {}
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            key = read_key(path)
        except OSError:
            return {}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._cache[path] = (stamp, headers)
        return headers
