"""Job files: the progress of long jobs (model prepares), visible to every mlxctl process.

A job runs in the process that started it (the controller, ``reconcile --once``,
``models pull``); its progress is written to ``state/jobs/`` so that ``status`` in
another process, and the next controller after a crash, see it. A job whose owner
process is gone without finishing was interrupted: the planner plans it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from mlxctl.machine.inventory import write_atomic
from mlxctl.observe.state import PrepareJob


@dataclass(frozen=True)
class Owner:
    pid: int
    created: float

    @staticmethod
    def this_process() -> Owner:
        return Owner(os.getpid(), psutil.Process().create_time())

    def alive(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.created) < 0.05
        except psutil.Error:
            return False


class JobFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, identity: str) -> Path:
        return self.directory / f"{hashlib.sha256(identity.encode()).hexdigest()[:16]}.json"

    def write(self, job: PrepareJob, owner: Owner) -> None:
        data = {**asdict(job), "owner_pid": owner.pid, "owner_created": owner.created}
        data.pop("running")
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
        fields = set(PrepareJob.__dataclass_fields__) - {"running"}
        for path in paths:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                owner = Owner(int(data["owner_pid"]), float(data["owner_created"]))
                values = {k: v for k, v in data.items() if k in fields}
                running = values.get("finished_at") is None and owner.alive()
                job = PrepareJob(running=running, **values)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a foreign or half-written file is never trusted
            jobs[job.identity] = job
        return jobs
