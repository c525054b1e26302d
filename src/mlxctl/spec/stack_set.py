"""A selection's stack documents assembled into one :class:`StackSet`, checked across files.

Each file is valid on its own by now (:mod:`mlxctl.spec.validation`); what only the
whole set can get wrong is checked here: a tier defined twice, a port used twice (by
two tiers, or a tier and the gateway), ``spec.gateway`` or ``spec.memory`` set
differently in two files, ``dependsOn`` naming no tier or making a cycle, and
fallbacks and aliases that reach no tier or more than one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxctl.errors import SpecError
from mlxctl.spec.schema import (
    GatewaySpec,
    HostSpec,
    LoadPolicy,
    MemorySpec,
    StackDocument,
    TierSpec,
)


@dataclass(frozen=True)
class SourcedTier:
    """A tier with the file and line it was declared at."""

    spec: TierSpec
    file: Path
    line: int
    # The stack (``metadata.name``) that declares it: the owner recorded in the inventory.
    stack: str = ""
    # The tier or its whole stack says ``suspend: true``.
    suspended: bool = False
    # 1-based (line, column) of each key written in the tier, for messages.
    keys: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # ``load`` and ``idleTimeout``, the tier's own or its file's ``spec.defaults``.
    load: LoadPolicy = "always"
    idle_timeout: float | str = "auto"
    # The machine that serves it (``spec.hosts``); None when the stack has no hosts
    # (this machine). A distributed tier's is rank 0's, ``distributed.hosts[0]``.
    host: str | None = None

    @property
    def members(self) -> tuple[str, ...]:
        """Every machine that runs a process of this tier (its ranks, or its host)."""
        if self.spec.distributed is not None:
            return tuple(self.spec.distributed.hosts)
        return (self.host,) if self.host is not None else ()


@dataclass(frozen=True)
class StackSet:
    """Every stack document read from one selection of files, merged and checked."""

    files: tuple[Path, ...]
    tiers: tuple[SourcedTier, ...]
    gateway: GatewaySpec
    memory: MemorySpec | None
    empty_files: tuple[Path, ...]
    names: tuple[str, ...]
    # The stacks this selection speaks for (see :func:`scope_of`): None for a directory,
    # which is the whole desired state; else only the stacks named in the chosen files.
    scope: frozenset[str] | None = None
    # Files that are invalid now, with their problems; the last valid version of each
    # (if there is one) is what the tiers above come from (see :mod:`mlxctl.spec.last_good`).
    invalid: Mapping[Path, tuple[str, ...]] = field(default_factory=dict)
    # Files invalid with no last valid version: what they declared is unknown, so
    # nothing may be pruned while they stay so.
    unknown_files: tuple[Path, ...] = ()
    # Stacks whose ``spec.suspend`` is true.
    suspended_stacks: frozenset[str] = frozenset()
    # Some file read sets ``spec.gateway`` (else ``gateway`` holds the defaults).
    gateway_set: bool = False
    # The machines of the stack (``spec.hosts``); empty: one machine, this one.
    hosts: tuple[HostSpec, ...] = ()

    def host(self, name: str) -> HostSpec | None:
        return next((h for h in self.hosts if h.name == name), None)


def merge_documents(
    files: Sequence[Path], docs: Sequence[tuple[Path, StackDocument, Any]], empty: Sequence[Path]
) -> StackSet:
    """The documents of ``files`` (each with its YAML node, for lines) as one set; every
    cross-file problem raises one :class:`SpecError` listing them all."""
    problems: list[str] = []
    tiers: list[SourcedTier] = []
    by_name: dict[str, SourcedTier] = {}
    by_port: dict[tuple[str | None, int], str] = {}
    gateway: tuple[Path, GatewaySpec] | None = None
    memory: tuple[Path, MemorySpec] | None = None
    hosts: tuple[Path, list[HostSpec]] | None = None
    for path, doc, _ in docs:
        if doc.spec.hosts:
            if hosts is not None and hosts[1] != doc.spec.hosts:
                problems.append(
                    f"{path}: spec.hosts differs from the one in {hosts[0]}; set it in one file"
                )
            hosts = (path, doc.spec.hosts)
    host_names = [h.name for h in hosts[1]] if hosts else []
    depends: list[tuple[SourcedTier, int]] = []
    for path, doc, node in docs:
        seq: Any = node["spec"].get("tiers")
        for index, tier in enumerate(doc.spec.tiers):
            line = seq.lc.data[index][0] + 1 if seq is not None and index < len(seq) else 1
            suspended = tier.suspend or doc.spec.suspend
            item = seq[index] if seq is not None and index < len(seq) else None
            keys = {
                str(k): (int(v[0]) + 1, int(v[1]) + 1)
                for k, v in getattr(getattr(item, "lc", None), "data", {}).items()
            }
            defaults = doc.spec.defaults
            idle = tier.idle_timeout if tier.idle_timeout is not None else defaults.idle_timeout
            placed = tier.host or (tier.distributed.hosts[0] if tier.distributed else None)
            problems += _placement_problems(tier, f"{path}:{line}:1", host_names)
            problems += _distributed_problems(tier, f"{path}:{line}:1", hosts[1] if hosts else [])
            sourced = SourcedTier(
                tier,
                path,
                line,
                doc.metadata.name,
                suspended,
                keys,
                # A distributed tier runs always: its members load and stop as one group.
                load="always" if tier.distributed else tier.load or defaults.load or "always",
                idle_timeout="auto" if idle is None else idle,
                host=placed if host_names else None,
            )
            if tier.depends_on:
                depends.append((sourced, _key_line(seq[index], "dependsOn", line)))
            if tier.name in by_name:
                other = by_name[tier.name]
                where = f"{other.file}:{other.line}"
                problems.append(f"{path}:{line}:1: tier '{tier.name}' is also defined at {where}")
                continue
            by_name[tier.name] = sourced
            tiers.append(sourced)
            if tier.port is not None:
                for member in sourced.members or (None,):
                    if (member, tier.port) in by_port:
                        on = f" on host '{member}'" if member else ""
                        problems.append(
                            f"{path}:{line}:1: tier '{tier.name}' port {tier.port}{on} is also "
                            f"used by {by_port[(member, tier.port)]}"
                        )
                    by_port[(member, tier.port)] = f"tier '{tier.name}' ({path}:{line})"
        if "gateway" in doc.spec.model_fields_set:
            if gateway is not None and gateway[1] != doc.spec.gateway:
                problems.append(
                    f"{path}: spec.gateway differs from the one in {gateway[0]}; set it in one file"
                )
            gateway = (path, doc.spec.gateway)
        if doc.spec.memory is not None:
            if memory is not None and memory[1] != doc.spec.memory:
                problems.append(
                    f"{path}: spec.memory differs from the one in {memory[0]}; set it in one file"
                )
            memory = (path, doc.spec.memory)
    problems += dependency_problems(depends, by_name)
    gw = gateway[1] if gateway else GatewaySpec()
    problems += _route_problems(tiers, gw)
    machines: list[HostSpec | None] = list(hosts[1]) if hosts else [None]
    for machine in machines:
        port = (machine.gateway_port if machine else None) or gw.port
        member = machine.name if machine else None
        if gw.enabled and (member, port) in by_port:
            on = f" on host '{member}'" if member else ""
            problems.append(
                f"{gateway[0] if gateway else files[0]}: gateway port {port}{on} is also used "
                f"by {by_port[(member, port)]}"
            )
    if hosts and len(hosts[1]) > 1:
        problems += _reachable_gateway_problems(gw, gateway[0] if gateway else hosts[0])
    if problems:
        raise SpecError(problems)
    return StackSet(
        files=tuple(files),
        tiers=tuple(tiers),
        gateway=gw,
        memory=memory[1] if memory else None,
        empty_files=tuple(empty),
        names=tuple(doc.metadata.name for _, doc, _ in docs),
        suspended_stacks=frozenset(doc.metadata.name for _, doc, _ in docs if doc.spec.suspend),
        gateway_set=gateway is not None,
        hosts=tuple(hosts[1]) if hosts else (),
    )


def _placement_problems(tier: TierSpec, where: str, hosts: Sequence[str]) -> list[str]:
    """A tier names a declared host (every tier does once ``spec.hosts`` is set), and a
    distributed tier's members are declared hosts."""
    named = ([tier.host] if tier.host else []) + (
        list(tier.distributed.hosts) if tier.distributed else []
    )
    if not hosts:
        if named:
            return [
                f"{where}: tier '{tier.name}' names host '{named[0]}' but the stack declares "
                "no spec.hosts"
            ]
        return []
    if not named:
        return [
            f"{where}: tier '{tier.name}' names no host; the stack declares hosts "
            f"({', '.join(hosts)}): add host: <name>"
        ]
    problems = []
    for name in dict.fromkeys(named):
        if name not in hosts:
            close = difflib.get_close_matches(name, list(hosts), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(
                f"{where}: tier '{tier.name}': host '{name}' is not in spec.hosts{hint}"
            )
    return problems


def _distributed_problems(tier: TierSpec, where: str, hosts: Sequence[HostSpec]) -> list[str]:
    """A ring lists its members by IP address (``mlx.launch`` refuses host names for the
    ring backend, and each rank binds its own entry of the hostfile)."""
    import ipaddress

    group = tier.distributed
    if group is None or group.backend != "ring":
        return []
    problems = []
    for host in hosts:
        if host.name not in group.hosts:
            continue
        try:
            ipaddress.ip_address(host.address)
        except ValueError:
            problems.append(
                f"{where}: tier '{tier.name}': the ring needs each member's address as an IP "
                f"address; host '{host.name}' has '{host.address}'"
            )
    return problems


def _reachable_gateway_problems(gw: GatewaySpec, where: Path) -> list[str]:
    """With several hosts, each gateway is reached by the others: it listens beyond
    loopback, which already requires a ``masterKey`` (the key the gateways send)."""
    import ipaddress

    if not gw.enabled:
        return [f"{where}: spec.hosts names several machines: the gateway routes between "
                "them and cannot be disabled"]  # fmt: skip
    if ipaddress.ip_address(gw.host).is_loopback:
        return [
            f"{where}: spec.hosts names several machines, which reach each other's gateway: "
            "set spec.gateway.host (0.0.0.0, or this LAN's address) and masterKey"
        ]
    return []


def _key_line(node: Any, key: str, default: int) -> int:
    try:
        return int(node.lc.data[key][0]) + 1
    except (AttributeError, KeyError, TypeError):
        return default


def dependency_problems(
    depends: Sequence[tuple[SourcedTier, int]], by_name: Mapping[str, SourcedTier]
) -> list[str]:
    """``dependsOn`` names tiers of the stack set, never itself, and never in a cycle."""
    problems: list[str] = []
    for sourced, line in depends:
        where = f"{sourced.file}:{line}:1: tier '{sourced.spec.name}': dependsOn"
        for dep in sourced.spec.depends_on:
            if dep == sourced.spec.name:
                problems.append(f"{where}: a tier cannot depend on itself")
            elif dep not in by_name:
                close = difflib.get_close_matches(dep, list(by_name), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"{where}: no tier named '{dep}'{hint}")
    if problems:
        return problems
    graph = {t.spec.name: list(t.spec.depends_on) for t, _ in depends}
    lines = {t.spec.name: (t, line) for t, line in depends}
    reported: set[frozenset[str]] = set()
    for start in graph:
        cycle = _cycle_from(start, graph)
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            tier, line = lines[cycle[0]]
            path = " -> ".join([*cycle, cycle[0]])
            problems.append(f"{tier.file}:{line}:1: tier '{cycle[0]}': dependsOn: a cycle: {path}")
    return problems


def _cycle_from(start: str, graph: Mapping[str, list[str]]) -> list[str] | None:
    """The first cycle reachable from ``start`` that passes through it, as a path."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, []):
            if nxt == start:
                return path
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def _route_problems(tiers: Sequence[SourcedTier], gw: GatewaySpec) -> list[str]:
    """Fallbacks name a tier or remote; every name a client may send reaches one tier."""
    problems: list[str] = []
    targets = {t.spec.name for t in tiers} | {r.name for r in gw.remotes}
    owner: dict[str, str] = {t.spec.name: f"tier '{t.spec.name}'" for t in tiers}
    for remote in gw.remotes:
        if remote.name in owner:
            problems.append(f"gateway remote '{remote.name}' has the name of a tier")
        owner[remote.name] = f"remote '{remote.name}'"
    for t in tiers:
        where = f"{t.file}:{t.line}:1: tier '{t.spec.name}'"
        for name in t.spec.fallbacks:
            if name not in targets:
                known = ", ".join(sorted(targets - {t.spec.name})) or "none"
                problems.append(f"{where}: fallback '{name}' is no tier or remote (known: {known})")
        for alias in t.spec.aliases:
            if alias in owner:
                problems.append(f"{where}: alias '{alias}' is already the name of {owner[alias]}")
            else:
                owner[alias] = f"an alias of tier '{t.spec.name}'"
    return problems
