"""Which tiers this machine runs, and where the others are (docs/multi-host.md).

Every machine runs its own controller on the same stack files (GitOps, no cluster
protocol): each keeps the tiers placed on it (``host``, or a ``distributed`` tier it
is a member of) and routes to the others through their machines' gateways. Ports,
the memory budget and admission are per machine, so what a controller resolves is
the stack as this machine sees it: its own tiers, its own gateway port and its own
``memory`` (a host's, else the stack's). A stack without ``spec.hosts`` is placed
entirely on this machine, exactly as before hosts existed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from mlxctl.errors import SpecError
from mlxctl.spec.schema import HostSpec
from mlxctl.spec.stack_set import SourcedTier, StackSet


@dataclass(frozen=True)
class Elsewhere:
    """A tier another machine serves: what this machine's gateway routes by."""

    tier: SourcedTier
    host: HostSpec
    # The base URL of the serving machine's gateway.
    peer: str


@dataclass(frozen=True)
class Placement:
    """The stack as machine ``host`` sees it."""

    host: str | None
    local: StackSet
    elsewhere: tuple[Elsewhere, ...] = ()
    # Every host's gateway base URL, by host name (a distributed tier's members reach
    # each other's rank state there, and its ranks above 0 route to rank 0's).
    peers: Mapping[str, str] = field(default_factory=dict)


def peer_url(host: HostSpec, default_port: int) -> str:
    """``http://address:port`` of ``host``'s gateway (brackets around an IPv6 address)."""
    address = f"[{host.address}]" if ":" in host.address else host.address
    return f"http://{address}:{host.gateway_port or default_port}"


def place(stack: StackSet, here: str, how_named: str = "the hostname") -> Placement:
    """The tiers machine ``here`` runs and those it routes elsewhere.

    Raises :class:`SpecError` when the stack declares hosts and ``here`` is none of them
    (a controller that reconciled nothing would silently prune this machine's tiers).
    """
    if not stack.hosts:
        return Placement(None, stack)
    me = stack.host(here)
    if me is None:
        names = ", ".join(h.name for h in stack.hosts)
        raise SpecError(
            [
                f"this machine is '{here}' (from {how_named}) and the stack's hosts are "
                f"{names}: run with --host <name> or set MLXCTL_HOST"
            ]
        )
    local = tuple(t for t in stack.tiers if here in t.members)
    elsewhere = tuple(
        Elsewhere(t, host, peer_url(host, stack.gateway.port))
        for t in stack.tiers
        if here not in t.members and t.host is not None and (host := stack.host(t.host))
    )
    gateway = stack.gateway
    if me.gateway_port is not None:
        gateway = gateway.model_copy(update={"port": me.gateway_port})
    memory = me.memory if me.memory is not None else stack.memory
    view = dataclasses.replace(stack, tiers=local, gateway=gateway, memory=memory)
    peers = {h.name: peer_url(h, stack.gateway.port) for h in stack.hosts}
    return Placement(here, view, elsewhere, peers)
