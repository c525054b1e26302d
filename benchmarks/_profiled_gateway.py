"""``python -m mlxctl.gateway`` under cProfile, switched on and off from outside.

Used by ``gateway_cpu.py``: ``SIGUSR1`` starts profiling, ``SIGUSR2`` stops it and
writes the stats to the file named by ``MLXCTL_PROFILE_OUT``. The gateway runs its
event loop on the main thread, where Python runs signal handlers, so the profile
covers every request the loop serves in between (and nothing of the start).
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from types import FrameType

from mlxctl.gateway.__main__ import main

profiler = cProfile.Profile()


def start(_sig: int, _frame: FrameType | None) -> None:
    profiler.enable()


def stop(_sig: int, _frame: FrameType | None) -> None:
    profiler.disable()
    profiler.dump_stats(os.environ["MLXCTL_PROFILE_OUT"])
    print("profile written", file=sys.stderr, flush=True)


signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
main()
