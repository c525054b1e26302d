"""Crash-loop backoff as data: how long to wait before restarting a crashed service.

The first crash is healed at once (a ``kill -9`` should cost seconds, not minutes);
each further crash within the stability window waits 10 s, 20 s, 40 s ... capped at
5 minutes, like Kubernetes' CrashLoopBackOff. A service that ran for 10 minutes
before crashing starts the count again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    initial: float = 10.0
    factor: float = 2.0
    cap: float = 300.0
    reset_after: float = 600.0

    def delay(self, consecutive_crashes: int) -> float:
        """Seconds to wait before the restart that follows crash number ``consecutive_crashes``."""
        if consecutive_crashes <= 1:
            return 0.0
        return min(self.initial * self.factor ** (consecutive_crashes - 2), self.cap)

    def count_after_crash(self, previous: int, uptime: float) -> int:
        """The consecutive-crash count after a crash that followed ``uptime`` seconds of running."""
        return 1 if uptime >= self.reset_after else previous + 1


DEFAULT_BACKOFF = BackoffPolicy()
