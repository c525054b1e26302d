"""Memory admission: every tier's estimate and the budget, attached to the desired state.

Estimating reads model files and the catalog (I/O), so it happens here, when the
stack is resolved (with ``idleTimeout: auto``, which depends on the machine's memory);
the check itself, the ``always`` tiers plus the largest on-demand tier against the
budget, is the pure :func:`mlxctl.capacity.memory.check_budget`, called by the planner,
which refuses the whole plan, before anything starts, when the stack cannot fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from mlxctl.capacity.memory import (
    MemoryEstimate,
    auto_idle_timeout,
    budget_bytes,
    estimate_catalog_variant,
    gib,
    rank_share,
    smaller_variants,
)
from mlxctl.capacity.model_dir import estimate_from_model_dir
from mlxctl.desired.state import DesiredService, DesiredState
from mlxctl.errors import MlxctlError
from mlxctl.machine.observed_memory import Raised
from mlxctl.spec.stack_set import SourcedTier, StackSet

Alternatives = tuple[tuple[str, MemoryEstimate], ...]


def system_memory() -> int:
    """Total unified (or system) memory in bytes."""
    import psutil

    return int(psutil.virtual_memory().total)


def with_budget(
    desired: DesiredState,
    stack: StackSet,
    memory_bytes: Callable[[], int] = system_memory,
    raised: Mapping[str, Raised] | None = None,
) -> DesiredState:
    """Attach each tier's memory estimate, the budget and smaller alternatives.

    ``raised``: estimates raised after an out-of-memory death (see
    :mod:`mlxctl.machine.observed_memory`), used for the launch that died only."""
    if not desired.tiers:
        return desired
    sourced = {t.spec.name: t for t in stack.tiers}
    tiers: list[DesiredService] = []
    alternatives: dict[str, Alternatives] = {}
    unresolved = dict(desired.unresolved)
    notes: dict[str, str] = {}
    for service in desired.tiers:
        try:
            estimate, options = _estimate(service, sourced[service.name])
        except MlxctlError as exc:
            # Its model's files cannot be read (a broken config.json): this tier is
            # blocked, named with why; the others are admitted and converge.
            unresolved[service.name] = f"{service.source}: model: {str(exc).splitlines()[0]}"
            continue
        if estimate is not None and service.group is not None:
            # A distributed tier's rank holds its share (each member admits its own).
            estimate = rank_share(estimate, service.group.size)
            options = ()
        entry = (raised or {}).get(service.name)
        if estimate is not None and entry is not None and entry.spec_hash == service.spec_hash:
            estimate, notes[service.name] = raise_estimate(estimate, entry)
        tiers.append(dataclasses.replace(service, memory=estimate))
        if options:
            alternatives[service.name] = options
    total = memory_bytes()
    budget = budget_bytes(total, stack.memory.budget if stack.memory else None)
    # ``idleTimeout: auto`` (the default of an on-demand tier) by the machine's memory.
    auto = {t.spec.name for t in stack.tiers if t.idle_timeout == "auto"}
    tiers = [
        dataclasses.replace(t, idle_timeout=auto_idle_timeout(total))
        if t.on_demand and t.name in auto
        else t
        for t in tiers
    ]
    residency = stack.memory.min_residency if stack.memory else None
    return dataclasses.replace(
        desired,
        min_residency=desired.min_residency if residency is None else residency,
        tiers=tuple(tiers),
        budget_bytes=budget,
        memory_alternatives=alternatives,
        unresolved=unresolved,
        memory_raised=notes,
    )


def raise_estimate(estimate: MemoryEstimate, entry: Raised) -> tuple[MemoryEstimate, str]:
    """``estimate`` raised to what an out-of-memory death showed (the overhead grows:
    the weights and KV cache are what they are), and the line that says so."""
    what = "an OOM kill" if entry.why == "oom-killed" else "running out of memory"
    note = f"estimate raised after {what}: {gib(entry.before, unit=False)} -> {gib(entry.bytes)}"
    if entry.bytes <= estimate.total:
        return estimate, f"{note} (the estimate is {gib(estimate.total)} now)"
    extra = entry.bytes - estimate.total
    basis = f"{estimate.basis}; {note}" if estimate.basis else note
    overhead = estimate.overhead + extra
    return MemoryEstimate.of(estimate.weights, estimate.kv_cache, overhead, basis), note


def _estimate(
    service: DesiredService, tier: SourcedTier
) -> tuple[MemoryEstimate | None, Alternatives]:
    spec = tier.spec
    if not isinstance(spec.model, str) or service.model is None:
        # A directory (local, a hub snapshot, a converted GGUF): estimated from its config.
        directory = service.model.directory if service.model else None
        if directory is None or not (directory / "config.json").is_file():
            return None, ()  # not there: the planner blocks the tier anyway
        try:
            estimate = estimate_from_model_dir(
                directory, context=spec.context, concurrency=spec.concurrency
            )
        except (OSError, ValueError, KeyError):
            return None, ()
        return estimate, ()
    from mlxctl.catalog.entries import load_entry

    model = load_entry(spec.model)
    estimate = estimate_catalog_variant(
        model, spec.quant, context=spec.context, concurrency=spec.concurrency
    )
    options = smaller_variants(
        model, spec.quant, context=spec.context, concurrency=spec.concurrency
    )
    return estimate, options
