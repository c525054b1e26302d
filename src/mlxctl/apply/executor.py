"""The executor: applies a plan's actions, each one an instant effect recorded as a fact.

Nothing here waits. A start records its intent (with the instance marker its
processes will carry), spawns, and records the PID; a stop sends SIGTERM and records
that it began; a prepare is handed to the job runner. Readiness, the end of a stop
and the end of a prepare are observed by later passes, which the controller runs as
soon as they happen. Every decision (what to start, when to escalate, crash counts
and backoff) is the planner's; the executor only carries actions out and records
what it confirmed through the :class:`~mlxctl.apply.ledger.Ledger`.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlxctl.apply.jobs import PrepareJobs
from mlxctl.apply.ledger import Ledger
from mlxctl.desired.state import DesiredService, DesiredState
from mlxctl.errors import StorageError, storage_error
from mlxctl.machine import observed_memory
from mlxctl.machine.environment import child_environment
from mlxctl.machine.interfaces import (
    INSTANCE_ENV,
    SERVICE_ENV,
    STATE_ENV,
    Clock,
    ProcessControl,
)
from mlxctl.machine.inventory import write_atomic
from mlxctl.machine.record import Record
from mlxctl.plan.actions import Action, Plan
from mlxctl.runtimes.tier_guard import KEY_FILE_ENV as TIER_KEY_FILE_ENV
from mlxctl.spec import secrets


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    message: str = ""
    duration: float = 0.0
    # The service was still not ready when its startup timeout ran out.
    timed_out: bool = False


class Executor:
    def __init__(
        self,
        *,
        procs: ProcessControl,
        clock: Clock,
        ledger: Ledger,
        jobs: PrepareJobs,
        logs_dir: Path,
        environ: Mapping[str, str],
    ) -> None:
        self.procs = procs
        self.clock = clock
        self.ledger = ledger
        self.jobs = jobs
        self.logs_dir = logs_dir
        self.environ = environ

    def apply(self, plan: Plan, desired: DesiredState) -> list[Outcome]:
        """Apply every action of ``plan`` in phase order; an error in one never stops the
        others (each returns a failed outcome)."""
        if plan.refused:
            return []
        outcomes: list[Outcome] = []
        full: StorageError | None = None
        for action in plan.ordered():
            if action.kind == "wait":
                continue
            record = self.ledger.load().get(action.target)
            try:
                outcomes.append(self._apply(action, record, desired))
            except OSError as exc:  # a write that failed (disk full, permissions)
                full = full or storage_error(exc)
                message = f"{action.kind} {action.target}: {exc}"
                self.ledger.emit(action, "failed", message)
                outcomes.append(Outcome(action, False, message))
        if full is not None:
            # Every action was tried (each stop's SIGTERM is sent before its record is
            # written), but what this pass did could not all be recorded: say so, once,
            # rather than plan again from an inventory that is behind.
            raise full
        return outcomes

    def _apply(self, action: Action, record: Record | None, desired: DesiredState) -> Outcome:
        kind = action.kind
        if kind == "start":
            service = desired.get(action.target)
            assert service is not None, f"plan starts unknown service {action.target}"
            return self._start(action, service, record)
        if kind == "reconfigure":
            # Replace the running gateway's routes file atomically: it reloads it in place.
            service = desired.get(action.target)
            assert service is not None
            self._write_files(service)
            self.ledger.emit(action, "ok")
            return Outcome(action, True)
        if kind == "prepare":
            service = desired.get(action.target)
            assert service is not None and service.model is not None
            self.jobs.submit(service.model, action.target, action.cause)
            self.ledger.emit(action, "started")
            return Outcome(action, True, "started")
        if record is None:
            return Outcome(action, True, "nothing recorded")
        now = self.clock.time()
        if kind == "restart" and action.overlap:
            service = desired.get(action.target)
            assert service is not None
            return self._hand_over(action, service, record)
        if kind in ("stop", "restart"):
            return self._terminate(action, record, record, action.cause)
        if kind == "crash":
            cause = action.exit_cause
            crashed = record.evolve(
                died_at=now,
                consecutive_crashes=action.crashes,
                not_before=action.not_before,
                last_error=action.cause.splitlines()[0],
                exit_cause=cause,
                exit_code=cause.exit_code if cause is not None else record.exit_code,
            )
            if action.raise_memory_to is not None:
                self._raise_estimate(action, record, action.raise_memory_to, now)
            if action.stop_process:
                return self._terminate(action, record, crashed, action.cause.splitlines()[0])
            self.ledger.put(crashed, action, "failed", action.cause)
            return Outcome(action, True, action.cause)
        if kind == "kill":
            result = self.procs.kill(record.identity())
            self.ledger.put(record.evolve(kill_sent_at=now), action, "ok", result.detail)
            return Outcome(action, True, result.detail)
        if kind == "forget":
            self.ledger.remove(action.target, action)
            return Outcome(action, True)
        if kind == "adopt":
            assert action.adopt is not None
            pid, pgid, create_time, cmdline = action.adopt
            adopted = record.evolve(pid=pid, pgid=pgid, create_time=create_time, cmdline=cmdline)
            self.ledger.put(adopted, action, "ok", f"pid {pid}")
            return Outcome(action, True, f"pid {pid}")
        if kind == "ready":
            ready = record.evolve(
                ready_at=now, last_error=None, died_at=None, not_before=None, exit_cause=None
            )
            duration = now - record.started_at
            self.ledger.put(ready, action, "ok", f"ready ({action.cause})", duration)
            return Outcome(action, True, "ready", duration)
        if kind == "rehash":
            service = desired.get(action.target)
            if service is not None:
                rehashed = record.evolve(spec_hash=service.spec_hash, launch=dict(service.launch))
                self.ledger.put(rehashed, action)
            return Outcome(action, True)
        raise AssertionError(f"unknown action kind {kind}")

    def _raise_estimate(self, action: Action, record: Record, to: int, now: float) -> None:
        """Keep the tier's raised estimate for its next admission (an out-of-memory
        death); a failed write loses only the raise (said in the event log)."""
        before = record.memory_bytes or 0
        why = action.exit_cause.word if action.exit_cause is not None else "out of memory"
        raised = observed_memory.Raised(record.spec_hash, before, to, now, why)
        try:
            observed_memory.record_raise(
                observed_memory.path_in(self.logs_dir.parent), record.name, raised
            )
        except OSError as exc:
            self.ledger.emit(action, "failed", f"cannot keep the raised memory estimate: {exc}")

    def _terminate(self, action: Action, record: Record, updated: Record, cause: str) -> Outcome:
        """Begin a stop: SIGTERM now, recorded; the planner escalates or moves on later."""
        result = self.procs.terminate(record.identity())
        stopping = updated.evolve(stop_requested_at=self.clock.time(), stop_cause=cause)
        message = "stopping" if result.signalled else result.detail
        self.ledger.put(
            stopping,
            action,
            "failed" if action.kind == "crash" else "ok",
            action.cause if action.kind == "crash" else message,
        )
        return Outcome(action, True, message)

    def _hand_over(self, action: Action, service: DesiredService, record: Record) -> Outcome:
        """An overlapping restart: the running instance is renamed ``NAME~PID`` (it keeps
        serving; the planner stops it once the new one is ready) and the new one starts
        under the service's name."""
        retiring = record.retiring()
        outcome = self._start(action, service, record, retiring=retiring)
        if not outcome.ok:
            return outcome
        return Outcome(action, True, f"{outcome.message}; {retiring.name} serves until it is ready")

    # -- starting -------------------------------------------------------------------

    def _child_env(self, service: DesiredService, instance: str) -> dict[str, str]:
        """A minimal environment: what the runtime needs plus the declared ``env``; never
        mlxctl's whole environment (the gateway's key stays out of every tier)."""
        declared = {
            key: secrets.resolve(raw, self.environ, where=f"{service.name}: env.{key}")
            for key, raw in service.env
        }
        env = child_environment(self.environ, declared)
        env[INSTANCE_ENV] = instance
        env[SERVICE_ENV] = service.name
        env[STATE_ENV] = str(self.logs_dir.parent)
        return env

    def _start(
        self,
        action: Action,
        service: DesiredService,
        previous: Record | None,
        *,
        retiring: Record | None = None,
    ) -> Outcome:
        """Record the intent, spawn, record the PID. ``retiring``: ``previous`` renamed,
        written with the intent in one inventory write (and named back if the spawn
        fails), so the running instance is never without its record."""
        # A distributed tier's rank above 0 does not listen on its port (no HTTP).
        shared = (
            not service.serves_http
            or self._shared_port(service)
            or (retiring is not None and retiring.port == service.port)
        )
        try:
            owner = None if shared else self.procs.port_owner(service.port)
            if owner is not None:
                raise OSError(f"port {service.port} is already in use by {owner}")
            self._write_files(service)
            instance = uuid.uuid4().hex
            env = self._child_env(service, instance)
        except (secrets.MissingSecretError, OSError) as exc:
            message = str(exc)
            self.ledger.emit(action, "failed", message)
            return Outcome(action, False, message)
        log = self.logs_dir / f"{service.name}.log"
        same_spec = previous is not None and previous.spec_hash == service.spec_hash
        intent = Record(
            name=service.name,
            role=service.role,
            pid=0,
            pgid=0,
            create_time=0.0,
            cmdline=service.argv,
            instance=instance,
            spec_hash=service.spec_hash,
            port=service.port,
            log=str(log),
            started_at=self.clock.time(),
            launch=dict(service.launch),
            restarts=(previous.restarts + 1) if previous else 0,
            consecutive_crashes=previous.consecutive_crashes if (previous and same_spec) else 0,
            restarted_after=action.restarted_after,
            memory_bytes=service.memory.total if service.memory is not None else None,
            stack=service.stack,
            generation=action.generation,
            # A distributed tier's new generation keeps saying why the last one ended
            # until it serves (status on every member shows which rank failed).
            last_error=previous.last_error if previous and action.generation else None,
        )
        # The intent is on disk before the process exists: nothing is ever unowned.
        self.ledger.change(put=(intent, retiring) if retiring else (intent,))
        try:
            spawned = self.procs.spawn(service.argv, env, log)
        except OSError as exc:
            if retiring is not None and previous is not None:
                self.ledger.change(put=(previous,), remove=(retiring.name,))
                self.ledger.emit(action, "failed", str(exc))
            else:
                self.ledger.remove(service.name, action, "failed", str(exc))
            return Outcome(action, False, str(exc))
        record = intent.evolve(
            pid=spawned.pid,
            pgid=spawned.pgid,
            create_time=spawned.create_time,
            cmdline=spawned.cmdline,
            cgroup=spawned.cgroup,
            oom_kills_at_start=spawned.oom_kills,
        )
        message = f"pid {spawned.pid}, port {service.port}"
        self.ledger.put(record, action, "started", message)
        return Outcome(action, True, message)

    def _shared_port(self, service: DesiredService) -> bool:
        """The port is held by an instance this one replaces (it listens with
        ``SO_REUSEPORT`` and keeps serving until this one is ready): not a conflict."""
        return any(
            rec.handover_to == service.name and rec.port == service.port and not rec.stopping
            for rec in self.ledger.load().values()
        )

    def _write_files(self, service: DesiredService) -> None:
        for path, content in service.files:
            write_atomic(Path(path), content)
        for key, raw in service.env:
            if key == TIER_KEY_FILE_ENV and service.role == "tier":
                ensure_generated_key(Path(raw))  # the tier's own key (runtimes.tier_guard)
            for ref in secrets.find_refs(raw):
                kind, _, name = ref.partition(":")
                if kind == "file" and service.role == "gateway":
                    ensure_generated_key(Path(name))


def ensure_generated_key(path: Path) -> None:
    """Create the gateway's master key once, readable by its owner only."""
    if path.exists():
        return
    write_atomic(path, "sk-mlxctl-" + pysecrets.token_urlsafe(32) + "\n", mode=0o600)
    os.chmod(path, 0o600)
