"""Use cases of several machines (docs/multi-host.md): naming this machine, and the
stack as this machine runs it."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mlxctl.desired.placement import place
from mlxctl.machine.host_name import HOST_ENV, how_named, local_host
from mlxctl.spec.stack_set import StackSet


def name_this_machine(name: str) -> None:
    """``--host NAME``: this process (and every process it starts, a controller among
    them) knows the machine as ``name`` among the stack's hosts. The environment is the
    one place the name is read from (:mod:`mlxctl.machine.host_name`)."""
    os.environ[HOST_ENV] = name


def this_machines(stack: StackSet, environ: Mapping[str, str] | None = None) -> StackSet:
    """``stack`` with only the tiers this machine runs (all of them without
    ``spec.hosts``): what it pulls, keeps and collects. A machine whose name is not among
    the hosts is refused (SpecError), as by ``reconcile``."""
    env = os.environ if environ is None else environ
    return place(stack, local_host(env), how_named(env)).local
