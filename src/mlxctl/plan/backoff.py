"""Crash-loop backoff as data: how long to wait before restarting a crashed service.

The first crash is healed at once (a ``kill -9`` should cost seconds, not minutes);
each further crash within the stability window waits 10 s, 20 s, 40 s ... capped at
5 minutes, like Kubernetes' CrashLoopBackOff. A service that ran for 10 minutes
before crashing starts the count again.

The schedules are tenacity's wait strategies (``wait_exponential``), used as the pure
values they are: a strategy maps an attempt number to seconds and reads nothing else
(``tenacity/wait.py``). The planner never runs a ``Retrying`` (that sleeps and reads
the clock); it asks the strategy for a delay and plans a wait of that long.
``tests/unit/test_architecture.py`` lets the planner import ``tenacity.wait`` and only
its deterministic strategies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from tenacity.wait import wait_exponential

if TYPE_CHECKING:
    from tenacity import RetryCallState


@dataclass(frozen=True)
class _Attempt:
    """What a wait strategy reads of tenacity's ``RetryCallState`` (whose constructor
    reads the clock, so the planner cannot build one)."""

    attempt_number: int


def delay_after(strategy: wait_exponential, attempt: int) -> float:
    """Seconds ``strategy`` waits after attempt number ``attempt`` (1 = the first)."""
    return float(strategy(cast("RetryCallState", _Attempt(attempt))))


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
        # The second crash is the schedule's first wait (``initial``).
        schedule = wait_exponential(multiplier=self.initial, exp_base=self.factor, max=self.cap)
        return delay_after(schedule, consecutive_crashes - 1)

    def count_after_crash(self, previous: int, uptime: float) -> int:
        """The consecutive-crash count after a crash that followed ``uptime`` seconds of running."""
        return 1 if uptime >= self.reset_after else previous + 1


DEFAULT_BACKOFF = BackoffPolicy()

# The longest a failing controller pass (it raised) waits before the next try (a
# trigger still runs one sooner); the controller applies :func:`failure_backoff`.
MAX_FAILURE_BACKOFF = 60.0


def failure_backoff(failures: int, interval: float) -> float:
    """Seconds before retrying after ``failures`` passes in a row raised: a sixth of the
    resync interval, doubling, at most :data:`MAX_FAILURE_BACKOFF`; pure."""
    # The attempt is bounded (as before: 2**20 times a sixth of any interval is past
    # the cap) so that a zero interval, which tenacity does not short-cut, stays cheap.
    attempt = min(max(failures, 1), 21)
    return delay_after(wait_exponential(multiplier=interval / 6, max=MAX_FAILURE_BACKOFF), attempt)
