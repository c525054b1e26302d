"""What wakes the controller: each source of "reconcile now" on its own.

The controller is level-triggered, so a trigger only says *that* something may have
changed, with a reason for the log (``"fast exited"``, ``"changed: a.yaml"``); the pass
it causes re-reads everything. A trigger that fires too often costs a pass, one that is
missed is caught by the next trigger or the periodic resync: no trigger is ever needed
for correctness, each one is there for latency.

A thread-driven trigger is a :class:`Trigger`: :meth:`Controller.run
<mlxctl.reconcile.controller.Controller.run>` starts one daemon thread per entry of its
list and stops them with its stop event, so a new source (demand from the gateway, an
admin request) is one more class here and one more entry in :func:`controller_triggers`.
Two sources are callbacks instead of threads, because they belong to what they watch:
health answers (:class:`~mlxctl.reconcile.monitor.HealthMonitor`, which is also the
passes' health source) and finished model prepares (the context's ``on_job_change``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mlxctl.apply.events import Event
from mlxctl.reconcile.context import Context
from mlxctl.spec.loader import STACK_SUFFIXES

# One save (by rename, or truncate-and-write) is one batch of file events.
DEBOUNCE_MS = 400
# How often recorded processes are checked: a crash is acted on within a second.
POLL_INTERVAL = 0.25
# ... and while a stop is under way: a swap of on-demand tiers starts the next one once
# the last one's process is gone, so each poll's wait is on the swap's path.
STOPPING_POLL_INTERVAL = 0.05

Wake = Callable[[str], None]


class Trigger(Protocol):
    """A source of wake-ups, run in its own thread until ``stop`` is set."""

    @property
    def name(self) -> str:
        """The thread's name (seen in a stack dump)."""
        ...

    def run(self, wake: Wake, stop: threading.Event) -> None: ...


@dataclass
class ProcessExits:
    """A recorded process that died, or a stop that completed, noticed within ``interval``.

    Polling (not waiting on the child) because mlxctl's servers outlive the mlxctl that
    started them: a controller adopts processes it is not the parent of. A death is also
    an event (``exit ... noticed``), said once per process.
    """

    ctx: Context
    interval: float = POLL_INTERVAL
    name: str = "mlxctl-poll"
    stopping_interval: float = STOPPING_POLL_INTERVAL

    def run(self, wake: Wake, stop: threading.Event) -> None:
        known: set[tuple[str, int, bool]] = set()
        ctx = self.ctx
        interval = self.interval
        while not stop.wait(interval):
            interval = self.interval
            try:
                records = ctx.inventory.load()
            except (OSError, ValueError):
                continue
            for name, record in records.items():
                if not record.spawned:
                    continue
                key = (name, record.pid, record.stopping)
                if key in known:
                    continue
                if record.stopping:
                    if ctx.procs.remaining(record.identity()) == 0:
                        known.add(key)
                        wake(f"{name} stopped")
                    else:
                        interval = min(interval, self.stopping_interval)
                    continue
                if record.died_at is not None:
                    continue
                status = ctx.procs.status(record.identity())
                if status.alive:
                    continue
                known.add(key)
                code = f" with code {status.exit_code}" if status.exit_code is not None else ""
                ctx.event_log().emit(
                    Event(
                        ctx.clock.time(), "exit", name, f"pid {record.pid} exited{code}", "noticed"
                    )
                )
                wake(f"{name} exited")


@dataclass
class StackFiles:
    """A saved stack file (``*.yaml``/``*.yml`` under the watched targets).

    watchfiles debounces a save by rename or by truncate-and-write into one batch;
    hidden files and other suffixes (editor swap files) are ignored, and so are mlxctl's
    own writes, which live in the state directory, not beside the stacks.
    """

    targets: Sequence[Path]
    name: str = "mlxctl-watch"

    def run(self, wake: Wake, stop: threading.Event) -> None:
        from watchfiles import watch

        dirs: dict[Path, set[str] | None] = {}
        for target in self.targets:
            if target.is_dir():
                dirs[target.resolve()] = None
            else:
                names = dirs.setdefault(target.resolve().parent, set())
                if names is not None:
                    names.add(target.name)
        if not dirs:
            return

        def relevant(_change: object, path: str) -> bool:
            p = Path(path)
            if p.suffix not in STACK_SUFFIXES or p.name.startswith("."):
                return False
            names = dirs.get(p.parent)
            return p.parent in dirs and (names is None or p.name in names)

        for changes in watch(
            *dirs,
            watch_filter=relevant,
            debounce=DEBOUNCE_MS,
            step=50,
            stop_event=stop,
            recursive=False,
            yield_on_timeout=False,
        ):
            changed = sorted({Path(path).name for _, path in changes})
            wake(f"changed: {', '.join(changed)}")


def controller_triggers(
    ctx: Context, targets: Sequence[Path], *, poll_interval: float, watch: bool
) -> list[Trigger]:
    """The thread-driven triggers of a controller: process exits always; the stack files
    when it watches them (``mlxctl reconcile``, not ``--once`` or ``down``)."""
    triggers: list[Trigger] = [ProcessExits(ctx, poll_interval)]
    if watch:
        triggers.append(StackFiles(list(targets)))
    return triggers
