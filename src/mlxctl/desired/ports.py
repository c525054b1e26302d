"""Port assignment: declared ports first, then the ones assigned before, then the next free.

Pure; the assigned ports are persisted by the composition root so they stay stable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mlxctl.spec.stack_set import StackSet

FIRST_TIER_PORT = 8001


def assign_ports(
    stack: StackSet,
    previous: Mapping[str, int],
    in_use: Callable[[int], bool] | None = None,
    held_by_other: Callable[[str, int], bool] | None = None,
) -> dict[str, int]:
    """Ports for every tier: the declared one, else the one assigned before, else the next free.

    Stable: a tier keeps its port across runs as long as nobody else declares it and no
    other program holds it (``held_by_other(name, port)``: a listener that is not the
    tier's own server; then the tier is given a new port, and the gateway's routes follow
    the desired state). A new assignment skips ports ``in_use`` says any process holds.
    """
    taken = {t.spec.port for t in stack.tiers if t.spec.port is not None}
    if stack.gateway.enabled:
        taken.add(stack.gateway.port)
    ports: dict[str, int] = {}
    for tier in stack.tiers:
        if tier.spec.port is not None:
            ports[tier.spec.name] = tier.spec.port
    for tier in stack.tiers:
        name = tier.spec.name
        if name in ports:
            continue
        kept = previous.get(name)
        stolen = kept is not None and held_by_other is not None and held_by_other(name, kept)
        if kept is not None and kept not in taken and not stolen:
            ports[name] = kept
            taken.add(kept)
    for tier in stack.tiers:
        name = tier.spec.name
        if name in ports:
            continue
        port = FIRST_TIER_PORT
        while port in taken or (in_use is not None and in_use(port)):
            port += 1
        ports[name] = port
        taken.add(port)
    return ports
