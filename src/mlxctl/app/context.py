"""What a front door (the CLI, later the controller's admin API) hands to the use cases.

The use cases in this package never build their context nor take the state lock, so
that a controller that already holds the lock can call them; the front door does both,
through these two functions (the CLI reaches the core only through ``app``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mlxctl.apply.events import Listener
from mlxctl.paths import Paths
from mlxctl.reconcile.context import Context, real_context
from mlxctl.reconcile.state_lock import StateLock

__all__ = ["Context", "real", "state_lock"]


def real(
    paths: Paths, *, listeners: list[Listener] | None = None, online_models: bool = False
) -> Context:
    """The real effects (processes, HTTP, files, clock) over ``paths``; see
    :func:`~mlxctl.reconcile.context.real_context`."""
    return real_context(paths, listeners=listeners, online_models=online_models)


@contextmanager
def state_lock(ctx: Context) -> Iterator[Context]:
    """Hold the state directory's lock (one reconciler at a time) around use cases that
    act; StateLockHeldError (exit 6) names the holder."""
    with StateLock(ctx.paths.lock):
        yield ctx
