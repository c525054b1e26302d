"""Use cases of several machines (docs/multi-host.md): naming this machine."""

from __future__ import annotations

import os

from mlxctl.machine.host_name import HOST_ENV


def name_this_machine(name: str) -> None:
    """``--host NAME``: this process (and every process it starts, a controller among
    them) knows the machine as ``name`` among the stack's hosts. The environment is the
    one place the name is read from (:mod:`mlxctl.machine.host_name`)."""
    os.environ[HOST_ENV] = name
