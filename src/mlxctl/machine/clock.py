"""The real clock: the only place mlxctl reads time or sleeps (tests pass a fake).

Everything else is handed a :class:`~mlxctl.machine.interfaces.Clock` by a composition
root (``reconcile.context.real_context``, the gateway's ``__main__``, the CLI), and
``tests/unit/test_architecture.py`` checks that no other module reads the time. This
module imports nothing from mlxctl, so every layer, the gateway included, may use it.
"""

from __future__ import annotations

import time


class SystemClock:
    def time(self) -> float:
        # The OS wall clock, truly: it is compared with psutil's process start times
        # (uptime, crash-loop resets) and written to records and events.
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)
