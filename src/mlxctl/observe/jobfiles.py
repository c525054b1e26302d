"""Job files: the progress of long jobs (model prepares), visible to every mlxctl process.

A job runs in the process that started it (the controller, ``reconcile --once``,
``models pull``); its progress is written to ``state/jobs/`` so that ``status`` in
another process, and the next controller after a crash, see it. A job whose owner
process is gone without finishing was interrupted: the planner plans it again.

A job file is read like every state file (:mod:`mlxctl.machine.statemodel`): a regular
file, bounded, parsed into a model with ranges. One that is not (a FIFO, ``owner_pid:
1e400``, ``identity: [1]``, random bytes) is moved aside as ``NAME.json.bad`` and
reported once through ``report``; it never raises, blocks or comes back every pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import psutil
from pydantic import Field, ValidationError

from mlxctl.files import read_text_bounded
from mlxctl.machine.inventory import write_atomic
from mlxctl.machine.statemodel import (
    MAX_TEXT,
    LivePid,
    ShortStr,
    StateModel,
    Text,
    Timestamp,
    is_identity_time,
    problem,
)
from mlxctl.observe.state import PrepareJob

# A job file holds a few short fields and at most one bounded error message.
MAX_JOB_FILE_BYTES = 64 * 1024
Bytes = Annotated[int, Field(ge=0, le=1 << 60)]
# Called with the file and a one-line reason when a job file is unusable.
Report = Callable[[Path, str], None]


@dataclass(frozen=True)
class Owner:
    pid: int
    created: float

    @staticmethod
    def this_process() -> Owner:
        return Owner(os.getpid(), psutil.Process().create_time())

    def alive(self) -> bool:
        if not is_identity_time(self.created):
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - self.created) < 0.05
        except psutil.Error:
            return False


class JobFileModel(StateModel):
    """A job file as :meth:`JobFiles.write` writes it."""

    identity: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    display: Text
    started_at: Timestamp
    step: ShortStr = ""
    done: Bytes | None = None
    total: Bytes | None = None
    finished_at: Timestamp | None = None
    error: Text | None = None
    owner_pid: LivePid
    owner_created: Timestamp


def _ignore(_path: Path, _reason: str) -> None:
    """The default :data:`Report`: say nothing."""


class JobFiles:
    def __init__(self, directory: Path, report: Report = _ignore) -> None:
        self.directory = directory
        self.report = report

    def _path(self, identity: str) -> Path:
        return self.directory / f"{hashlib.sha256(identity.encode()).hexdigest()[:16]}.json"

    def write(self, job: PrepareJob, owner: Owner) -> None:
        data = {**asdict(job), "owner_pid": owner.pid, "owner_created": owner.created}
        data.pop("running")
        if job.error is not None:
            data["error"] = job.error[:MAX_TEXT]  # so that it reads back
        write_atomic(self._path(job.identity), json.dumps(data, sort_keys=True) + "\n")

    def remove(self, identity: str) -> None:
        self._path(identity).unlink(missing_ok=True)

    def read_all(self) -> dict[str, PrepareJob]:
        """Every recorded job, with ``running`` true only while its owner runs it."""
        jobs: dict[str, PrepareJob] = {}
        try:
            paths = sorted(self.directory.glob("*.json"))
        except OSError:
            return jobs
        for path in paths:
            try:
                data = json.loads(read_text_bounded(path, MAX_JOB_FILE_BYTES))
                model = JobFileModel.model_validate(data)
            except FileNotFoundError:
                continue  # finished and removed meanwhile
            except ValidationError as exc:
                self._set_aside(path, problem(exc))
                continue
            except (OSError, ValueError, RecursionError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self._set_aside(path, reason[:200])
                continue
            owner = Owner(model.owner_pid, model.owner_created)
            values = model.model_dump(exclude={"owner_pid", "owner_created"})
            running = model.finished_at is None and owner.alive()
            jobs[model.identity] = PrepareJob(running=running, **values)
        return jobs

    def _set_aside(self, path: Path, reason: str) -> None:
        """Move an unusable job file out of the way (so it is reported once, not every
        pass) and report it; where it cannot be moved (a read-only directory) it is
        only skipped."""
        aside = path.with_name(path.name + ".bad")
        moved = False
        with contextlib.suppress(OSError):
            os.replace(path, aside)
            moved = True
        where = f"; moved aside to {aside.name}" if moved else ""
        self.report(path, f"not a usable job file ({reason}){where}")
