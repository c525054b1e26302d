"""Run the real mlxctl CLI with one fault injected at the worst moment of a start.

``python -m tests.integration.faulty_mlxctl FAULT mlxctl-args...`` where FAULT is

* ``kill-after-spawn``: the process SIGKILLs itself the moment its first server is
  spawned, before the spawn's PID is recorded (the 50-65 ms window between the
  spawn and the second inventory write, made deterministic);
* ``enospc-after-spawn``: every inventory write after the first spawn fails with
  ENOSPC, as on a disk that filled up between the two writes.

Only the test decides when a fault fires; the product code runs unchanged.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Any

from mlxctl.cli import main
from mlxctl.machine import inventory, processes


def inject(fault: str) -> None:
    real_spawn = processes.RealProcessControl.spawn
    real_save = inventory.Inventory.save
    spawned = False

    def spawn(self: processes.RealProcessControl, *args: Any, **kwargs: Any) -> Any:
        nonlocal spawned
        result = real_spawn(self, *args, **kwargs)
        spawned = True
        if fault == "kill-after-spawn":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def save(self: inventory.Inventory, records: Any) -> None:
        if spawned and fault == "enospc-after-spawn":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real_save(self, records)

    processes.RealProcessControl.spawn = spawn  # type: ignore[method-assign]
    inventory.Inventory.save = save  # type: ignore[method-assign]


if __name__ == "__main__":
    inject(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
