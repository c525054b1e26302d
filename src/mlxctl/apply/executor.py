"""The executor: applies a plan through the effect interfaces, recording only what is confirmed.

Phases follow the plan's order: every stop runs first (in parallel) so memory is
free before anything starts; models are prepared; then every start is launched and
all readiness waits run in parallel. A process that dies while starting is reported
at the next poll (about a second at most) with the tail of its log, not after the
startup timeout.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mlxctl.apply.events import Event, EventLog
from mlxctl.desired.state import DesiredService, DesiredState
from mlxctl.machine.interfaces import Clock, ModelStore, Prober, ProbeResult, ProcessControl
from mlxctl.machine.inventory import Inventory, write_atomic
from mlxctl.machine.logfiles import tail
from mlxctl.machine.processes import INSTANCE_ENV
from mlxctl.machine.record import Record
from mlxctl.plan.actions import Action, Plan
from mlxctl.plan.backoff import DEFAULT_BACKOFF, BackoffPolicy
from mlxctl.spec import secrets

SERVICE_ENV = "MLXCTL_SERVICE"
_T = TypeVar("_T")
PROBE_TIMEOUT = 30.0
PORT_RELEASE_WAIT = 5.0
FAST_POLL = 0.05
MAX_POLL = 1.0


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    message: str = ""
    duration: float = 0.0
    # The service was still not ready when its startup timeout ran out.
    timed_out: bool = False


@dataclass(frozen=True)
class ExecutorSettings:
    grace: float = 10.0
    backoff: BackoffPolicy = DEFAULT_BACKOFF
    # Overrides every service's startup timeout (the CLI's --timeout).
    startup_timeout: float | None = None
    # Set by the controller when it is asked to stop: readiness waits end at once and
    # leave the starting server running (the next controller waits for it).
    cancel: threading.Event | None = None


class Interrupted(Exception):
    """The wait was cancelled (the controller is stopping)."""


class StartFailed(Exception):
    """A service exited or never became ready while starting."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Executor:
    def __init__(
        self,
        *,
        procs: ProcessControl,
        prober: Prober,
        clock: Clock,
        store: ModelStore,
        inventory: Inventory,
        events: EventLog,
        logs_dir: Path,
        environ: Mapping[str, str],
        settings: ExecutorSettings | None = None,
    ) -> None:
        self.procs = procs
        self.prober = prober
        self.clock = clock
        self.store = store
        self.inventory = inventory
        self.events = events
        self.logs_dir = logs_dir
        self.environ = environ
        self.settings = settings or ExecutorSettings()
        self._lock = threading.Lock()

    # -- public ---------------------------------------------------------------

    def apply(
        self, plan: Plan, desired: DesiredState, *, wait_starting: bool = True
    ) -> list[Outcome]:
        """Apply ``plan``; with ``wait_starting``, also wait for services still starting."""
        if plan.refused:
            return []
        ordered = plan.ordered()
        outcomes: list[Outcome] = []
        records = self.inventory.load()

        stops = [
            a
            for a in ordered
            if a.kind in ("stop", "restart") or (a.kind == "crash" and a.stop_process)
        ]
        outcomes += self._parallel(stops, lambda a: self._stop(a, records.get(a.target)))
        # A service whose old process survived its stop must not be started a second time.
        unstopped = {o.action.target for o in outcomes if not o.ok}
        for action in ordered:
            if action.kind in ("forget", "crash", "rehash"):
                outcomes.append(self._bookkeeping(action, records.get(action.target), desired))
            elif action.kind == "reconfigure":
                outcomes.append(self._reconfigure(action, desired))
        # Identities of models whose preparation failed: no tier using one may start.
        failed_models: set[str] = set()
        for action in ordered:
            if action.kind == "prepare":
                outcome = self._prepare(action, desired)
                outcomes.append(outcome)
                model = _model_identity(desired, action.target)
                if not outcome.ok and model is not None:
                    failed_models.add(model)
        starts: list[Action] = []
        for action in ordered:
            if action.kind not in ("start", "restart"):
                continue
            if action.target in unstopped:
                continue
            if _model_identity(desired, action.target) in failed_models:
                message = "not started: its model could not be prepared"
                self._emit(action, "failed", message)
                outcomes.append(Outcome(action, False, message))
                continue
            starts.append(action)
        waits = [a for a in ordered if a.kind == "wait" and a.starting]
        launched: list[tuple[Action, Record]] = []
        for action in starts:
            service = desired.get(action.target)
            assert service is not None, f"plan starts unknown service {action.target}"
            result = self._launch(action, service)
            if isinstance(result, Outcome):
                outcomes.append(result)
            else:
                launched.append((action, result))
        if wait_starting:
            for action in waits:
                current = self.inventory.load().get(action.target)
                service = desired.get(action.target)
                if current is not None and service is not None:
                    launched.append((action, current))
        outcomes += self._parallel(launched, lambda pair: self._await_ready(*pair, desired))
        return outcomes

    # -- helpers ----------------------------------------------------------------

    def _parallel(self, items: Sequence[_T], fn: Callable[[_T], Outcome]) -> list[Outcome]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=len(items)) as pool:
            return list(pool.map(fn, items))

    def _emit(
        self, action: Action, result: str, message: str = "", duration: float | None = None
    ) -> None:
        self.events.emit(
            Event(
                ts=self.clock.time(),
                kind=action.kind,
                target=action.target,
                cause=action.cause,
                result=result,
                message=message,
                duration=duration,
            )
        )

    def _put(self, record: Record) -> None:
        with self._lock:
            self.inventory.put(record)

    def _remove(self, name: str) -> None:
        with self._lock:
            self.inventory.remove(name)

    def _stop(self, action: Action, record: Record | None) -> Outcome:
        started = self.clock.monotonic()
        if record is None:
            return Outcome(action, True, "nothing to stop")
        result = self.procs.stop(record.identity(), self.settings.grace)
        duration = self.clock.monotonic() - started
        if result.signalled and "survived" in result.detail:
            self._emit(action, "failed", result.detail, duration)
            return Outcome(action, False, result.detail, duration)
        if action.kind == "stop":
            self._remove(action.target)
        self._emit(action, "ok" if action.kind == "stop" else "stopped", result.detail, duration)
        return Outcome(action, True, result.detail, duration)

    def _bookkeeping(self, action: Action, record: Record | None, desired: DesiredState) -> Outcome:
        if action.kind == "forget":
            self._remove(action.target)
        elif record is not None and action.kind == "crash":
            now = self.clock.time()
            self._put(
                record.evolve(
                    died_at=now,
                    consecutive_crashes=action.crashes,
                    not_before=action.not_before,
                    last_error=action.cause,
                )
            )
        elif record is not None and action.kind == "rehash":
            service = desired.get(action.target)
            if service is not None:
                self._put(record.evolve(spec_hash=service.spec_hash, launch=dict(service.launch)))
        self._emit(action, "ok")
        return Outcome(action, True)

    def _reconfigure(self, action: Action, desired: DesiredState) -> Outcome:
        """Replace a running service's files atomically; the gateway reloads its routes."""
        service = desired.get(action.target)
        assert service is not None
        self._write_files(service)
        self._emit(action, "ok")
        return Outcome(action, True)

    def _prepare(self, action: Action, desired: DesiredState) -> Outcome:
        service = desired.get(action.target)
        assert service is not None and service.model is not None
        started = self.clock.monotonic()
        self._emit(action, "started")
        try:
            path = self.store.prepare(service.model)
        except Exception as exc:  # a failed conversion must not take the other tiers down
            message = f"preparing {service.model.display} failed: {exc}"
            self._emit(action, "failed", message, self.clock.monotonic() - started)
            return Outcome(action, False, message)
        duration = self.clock.monotonic() - started
        self._emit(action, "ok", str(path), duration)
        return Outcome(action, True, str(path), duration)

    def _child_env(self, service: DesiredService, instance: str) -> dict[str, str]:
        env = dict(self.environ)
        for key, raw in service.env:
            env[key] = secrets.resolve(raw, self.environ, where=f"{service.name}: env.{key}")
        env[INSTANCE_ENV] = instance
        env[SERVICE_ENV] = service.name
        return env

    def _launch(self, action: Action, service: DesiredService) -> Record | Outcome:
        previous = self.inventory.load().get(service.name)
        try:
            owner = self._wait_port_free(service.port)
            if owner is not None:
                raise StartFailed(f"port {service.port} is already in use by {owner}")
            self._write_files(service)
            instance = uuid.uuid4().hex
            env = self._child_env(service, instance)
            log = self.logs_dir / f"{service.name}.log"
            spawned = self.procs.spawn(service.argv, env, log)
        except (StartFailed, secrets.MissingSecretError, OSError) as exc:
            message = str(exc)
            self._emit(action, "failed", message)
            return Outcome(action, False, message)
        same_spec = previous is not None and previous.spec_hash == service.spec_hash
        record = Record(
            name=service.name,
            role=service.role,
            pid=spawned.pid,
            pgid=spawned.pgid,
            create_time=spawned.create_time,
            cmdline=spawned.cmdline,
            instance=instance,
            spec_hash=service.spec_hash,
            port=service.port,
            log=str(log),
            started_at=self.clock.time(),
            launch=dict(service.launch),
            restarts=(previous.restarts + 1) if previous else 0,
            consecutive_crashes=previous.consecutive_crashes if (previous and same_spec) else 0,
        )
        self._put(record)
        self._emit(action, "started", f"pid {spawned.pid}, port {service.port}")
        return record

    def _wait_port_free(self, port: int) -> str | None:
        """Who holds ``port``, after giving a just-stopped server a moment to release it.

        A multi-threaded server's socket can outlive its main thread by a few
        milliseconds, so a restart on the same port polls briefly before failing.
        """
        deadline = self.clock.monotonic() + PORT_RELEASE_WAIT
        while True:
            owner = self.procs.port_owner(port)
            if owner is None or self.clock.monotonic() >= deadline:
                return owner
            self.clock.sleep(FAST_POLL)

    def _write_files(self, service: DesiredService) -> None:
        for path, content in service.files:
            # The gateway's routes name remotes and key variables: its owner's only.
            write_atomic(Path(path), content, mode=0o600)
        for _key, raw in service.env:
            for ref in secrets.find_refs(raw):
                kind, _, name = ref.partition(":")
                if kind == "file" and service.role == "gateway":
                    ensure_generated_key(Path(name))

    def _await_ready(self, action: Action, record: Record, desired: DesiredState) -> Outcome:
        service = desired.get(action.target)
        assert service is not None
        timeout = self.settings.startup_timeout or service.startup_timeout
        deadline = (
            record.started_at + timeout if action.kind == "wait" else self.clock.time() + timeout
        )
        started = self.clock.monotonic()
        try:
            detail = self.wait_ready(record, service, deadline)
        except StartFailed as exc:
            return self._start_failed(action, record, exc, started)
        except Interrupted as exc:
            self._emit(action, "interrupted", str(exc))
            return Outcome(action, False, f"interrupted: {exc}")
        duration = self.clock.monotonic() - started
        self._put(
            record.evolve(
                ready_at=self.clock.time(), last_error=None, died_at=None, not_before=None
            )
        )
        self._emit(action, "ok", f"ready ({detail})", duration)
        return Outcome(action, True, "ready", duration)

    def wait_ready(self, record: Record, service: DesiredService, deadline: float) -> str:
        """Poll until ``service`` is ready; raise :class:`StartFailed` when it dies or times out."""
        from tenacity import RetryError, Retrying, retry_if_result, wait_exponential

        ident = record.identity()
        last: list[ProbeResult] = [ProbeResult(False, "not probed yet")]

        def attempt() -> bool:
            status = self.procs.status(ident)
            if not status.alive:
                code = f" with code {status.exit_code}" if status.exit_code is not None else ""
                lines = tail(Path(record.log), 15)
                raise StartFailed(
                    f"exited{code} while starting; last log lines:\n" + "\n".join(lines)
                )
            remaining = max(deadline - self.clock.time(), 0.1)
            last[0] = self.prober.probe(service.probe, "ready", min(PROBE_TIMEOUT, remaining))
            if last[0].fatal:
                lines = tail(Path(record.log), 15)
                raise StartFailed(
                    f"cannot become ready ({last[0].detail}); last log lines:\n" + "\n".join(lines)
                )
            return last[0].ok

        cancel = self.settings.cancel

        def cancelled() -> bool:
            return cancel is not None and cancel.is_set()

        def sleep(seconds: float) -> None:
            if cancel is None:
                self.clock.sleep(seconds)
            else:
                cancel.wait(seconds)

        retrying = Retrying(
            retry=retry_if_result(lambda ok: ok is not True),
            wait=wait_exponential(multiplier=FAST_POLL, min=FAST_POLL, max=MAX_POLL),
            stop=lambda _state: cancelled() or self.clock.time() >= deadline,
            sleep=sleep,
            reraise=True,
        )
        try:
            retrying(attempt)
        except RetryError:
            if cancelled():
                raise Interrupted(f"still starting: {last[0].detail}") from None
            message = f"not ready before the startup timeout: {last[0].detail}"
            raise StartFailed(message, timed_out=True) from None
        return last[0].detail

    def _start_failed(
        self, action: Action, record: Record, exc: StartFailed, started: float
    ) -> Outcome:
        message = str(exc)
        self.procs.stop(record.identity(), self.settings.grace)
        now = self.clock.time()
        crashes = self.settings.backoff.count_after_crash(
            record.consecutive_crashes, now - record.started_at
        )
        self._put(
            record.evolve(
                died_at=now,
                consecutive_crashes=crashes,
                not_before=now + self.settings.backoff.delay(crashes),
                last_error=message.splitlines()[0],
            )
        )
        duration = self.clock.monotonic() - started
        self._emit(action, "failed", message, duration)
        return Outcome(action, False, message, duration, timed_out=exc.timed_out)


def _model_identity(desired: DesiredState, name: str) -> str | None:
    service = desired.get(name)
    return service.model.identity if service is not None and service.model is not None else None


def ensure_generated_key(path: Path) -> None:
    """Create the gateway's master key once, readable by its owner only."""
    if path.exists():
        return
    write_atomic(path, "sk-mlxctl-" + pysecrets.token_urlsafe(32) + "\n", mode=0o600)
    os.chmod(path, 0o600)
