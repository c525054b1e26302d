"""The ledger: a change to the inventory and the event that explains it, as one fact.

Every effect the executor confirms is recorded here, so the inventory (what runs,
and why) and the event log (what happened, and why) never disagree. Writes are
serialised: the executor and the job runner record from different threads.
"""

from __future__ import annotations

import threading

from mlxctl.apply.events import Event, EventLog
from mlxctl.machine.interfaces import Clock
from mlxctl.machine.inventory import Inventory
from mlxctl.machine.record import Record
from mlxctl.plan.actions import Action


class Ledger:
    def __init__(self, inventory: Inventory, events: EventLog, clock: Clock) -> None:
        self.inventory = inventory
        self.events = events
        self.clock = clock
        self._lock = threading.Lock()

    def load(self) -> dict[str, Record]:
        with self._lock:
            return self.inventory.load()

    def emit(
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
                exit_cause=action.exit_cause.to_json() if action.exit_cause else None,
                restarted_after=(
                    action.restarted_after.to_json() if action.restarted_after else None
                ),
            )
        )

    def put(
        self,
        record: Record,
        action: Action | None = None,
        result: str = "ok",
        message: str = "",
        duration: float | None = None,
    ) -> None:
        with self._lock:
            self.inventory.put(record)
        if action is not None:
            self.emit(action, result, message, duration)

    def change(self, put: tuple[Record, ...] = (), remove: tuple[str, ...] = ()) -> None:
        """Several records put and removed in one write: readers never see half of it."""
        with self._lock:
            records = self.inventory.load()
            for name in remove:
                records.pop(name, None)
            for record in put:
                records[record.name] = record
            self.inventory.save(records)

    def remove(self, name: str, action: Action, result: str = "ok", message: str = "") -> None:
        with self._lock:
            self.inventory.remove(name)
        self.emit(action, result, message)
