"""The job runner: model prepares (conversions, downloads) run in the background.

A pass never waits for a prepare: the executor submits it here and returns. The job
runs in a thread of this process, writes its progress to a job file (so ``status``
and the next pass see it), records its end in the event log, and calls
``on_change`` so the controller plans again at once instead of at the next resync.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from mlxctl.apply.events import Event, EventLog
from mlxctl.desired.state import ModelRef
from mlxctl.machine.interfaces import Clock, JobProgress, ModelStore
from mlxctl.observe.jobfiles import JobFiles, Owner
from mlxctl.observe.state import PrepareJob

# Progress is written at most this often (a download reports every chunk).
PROGRESS_EVERY = 0.5
# Prepares that run at once (downloads share the link and the disk); the rest queue.
MAX_RUNNING = 2
Spawn = Callable[[Callable[[], None]], None]


def in_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, name="mlxctl-job", daemon=True).start()


class PrepareJobs:
    def __init__(
        self,
        store: ModelStore,
        files: JobFiles,
        events: EventLog,
        clock: Clock,
        *,
        on_change: Callable[[str], None] | None = None,
        spawn: Spawn = in_thread,
    ) -> None:
        self.store = store
        self.files = files
        self.events = events
        self.clock = clock
        self.on_change = on_change
        self.spawn = spawn
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._owner: Owner | None = None
        self._slots = threading.BoundedSemaphore(MAX_RUNNING)

    def owner(self) -> Owner:
        if self._owner is None:
            self._owner = Owner.this_process()
        return self._owner

    def submit(self, model: ModelRef, target: str, cause: str) -> bool:
        """Start preparing ``model`` unless this process already is; returns at once."""
        with self._lock:
            if model.identity in self._running:
                return False
            self._running.add(model.identity)
        started = self.clock.time()
        job = PrepareJob(model.identity, model.display, started, running=True, step="queued")
        self.files.write(job, self.owner())
        self.spawn(lambda: self._run(model, job, target, cause))
        return True

    def _run(self, model: ModelRef, job: PrepareJob, target: str, cause: str) -> None:
        last_write = 0.0

        def progress(update: JobProgress) -> None:
            nonlocal job, last_write
            step_changed = update.step and update.step != job.step
            job = PrepareJob(
                job.identity,
                job.display,
                job.started_at,
                running=True,
                step=update.step or job.step,
                done=update.done,
                total=update.total,
            )
            now = self.clock.monotonic()
            if step_changed or now - last_write >= PROGRESS_EVERY:
                last_write = now
                self.files.write(job, self.owner())

        result, message = "ok", ""
        try:
            with self._slots:
                progress(JobProgress(step="starting"))
                path = self.store.prepare(model, progress)
            message = str(path)
            self.files.remove(model.identity)
        except Exception as exc:  # a failed prepare must never take the controller down
            result, message = "failed", f"preparing {model.display} failed: {exc}"
            failed = PrepareJob(
                job.identity,
                job.display,
                job.started_at,
                running=False,
                step=job.step,
                finished_at=self.clock.time(),
                error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            with contextlib.suppress(OSError):  # the event below still says why
                self.files.write(failed, self.owner())
        finally:
            with self._lock:
                self._running.discard(model.identity)
        duration = self.clock.time() - job.started_at
        self.events.emit(
            Event(self.clock.time(), "prepare", target, cause, result, message, duration)
        )
        if self.on_change is not None:
            self.on_change(f"prepare of {model.display} {'done' if result == 'ok' else result}")
