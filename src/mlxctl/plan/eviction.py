"""Which loaded on-demand tiers make room for a tier that must start. Pure; must not log.

The rule, in the order it is applied (llama-swap's "never evict a model with requests
in flight", plus a memory budget and a thrash guard of our own):

- Only on-demand tiers are ever evicted; an ``always`` tier never is.
- A tier with requests in flight is never stopped: it is *drained* (the gateway holds
  its new requests; the ones in flight finish) and stopped once none is left.
- A tier loaded less than ``min_residency`` ago stays: two tiers of which only one fits,
  asked alternately, would otherwise swap on every request. Its requests run, the
  other tier's wait (batched by the gateway) until the residency ends.
- Among the rest, idle ones go first, least recently used first; busy ones (drained)
  only when the idle ones do not free enough.
- Nothing is evicted unless the evictions together make the start fit: stopping a
  model that frees too little would only cost its next request a load.

Memory held by a process that is stopping counts until it is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """A tier whose process holds memory now."""

    name: str
    bytes: int
    on_demand: bool
    # Requests in flight (being answered): it may be drained, never stopped.
    in_flight: int
    # When it last served (a request's end, its load) and when it became ready.
    last_used: float
    loaded_at: float
    # Its stop has begun: its memory is on its way out (and counts until then).
    stopping: bool = False


@dataclass(frozen=True)
class Eviction:
    """What to do so that ``need`` bytes fit."""

    fits_now: bool
    # Idle tiers to stop now, least recently used first.
    evict: tuple[str, ...] = ()
    # Busy tiers to drain (hold their new requests; stop each once idle).
    drain: tuple[str, ...] = ()
    # The evictions and drains planned free enough (the start waits for them).
    enough: bool = False
    # When a tier still protected by its residency may go (None: none would help).
    retry_at: float | None = None
    # Who holds the memory, for the message: (name, bytes, why it stays or goes).
    held_by: tuple[tuple[str, int, str], ...] = ()


def make_room(
    need: int,
    budget: int,
    residents: Sequence[Resident],
    *,
    now: float,
    min_residency: float,
) -> Eviction:
    """The evictions that let ``need`` more bytes fit into ``budget``."""
    held = sum(r.bytes for r in residents)
    free = budget - held
    if need <= free:
        return Eviction(fits_now=True)
    short = need - free
    coming = sum(r.bytes for r in residents if r.stopping)  # freed without any decision
    eligible = [
        r
        for r in residents
        if r.on_demand and not r.stopping and now - r.loaded_at >= min_residency
    ]
    # Idle first (least recently used first), then busy ones (fewest requests, oldest load).
    eligible.sort(key=lambda r: (r.in_flight > 0, r.last_used if not r.in_flight else r.loaded_at))
    chosen: list[Resident] = []
    freed = coming
    for resident in eligible:
        if freed >= short:
            break
        chosen.append(resident)
        freed += resident.bytes
    held_by = tuple(_why(r, now, min_residency, chosen) for r in residents)
    if freed >= short:
        return Eviction(
            fits_now=False,
            evict=tuple(r.name for r in chosen if not r.in_flight),
            drain=tuple(r.name for r in chosen if r.in_flight),
            enough=True,
            held_by=held_by,
        )
    # Not enough now: would the tiers still inside their residency be enough later?
    young = [
        r for r in residents if r.on_demand and not r.stopping and now - r.loaded_at < min_residency
    ]
    later = freed + sum(r.bytes for r in young)
    retry_at = min((r.loaded_at + min_residency for r in young), default=None)
    return Eviction(
        fits_now=False,
        enough=False,
        retry_at=retry_at if later >= short else None,
        held_by=held_by,
    )


def _why(
    r: Resident, now: float, min_residency: float, chosen: Sequence[Resident]
) -> tuple[str, int, str]:
    if r.stopping:
        reason = "stopping"
    elif not r.on_demand:
        reason = "always"
    elif any(c.name == r.name for c in chosen):
        reason = f"draining, {r.in_flight} in flight" if r.in_flight else "evicted"
    elif now - r.loaded_at < min_residency:
        left = r.loaded_at + min_residency - now
        reason = f"loaded {now - r.loaded_at:.0f}s ago, stays {left:.0f}s more (minResidency)"
    elif r.in_flight:
        reason = f"{r.in_flight} in flight"
    else:
        reason = "idle"
    return (r.name, r.bytes, reason)
