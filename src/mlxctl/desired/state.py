"""The desired state's values: the exact services to run, as the planner reads them.

Produced by :mod:`mlxctl.desired.resolve`; pure data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mlxctl.capacity.memory import MemoryEstimate
from mlxctl.desired.hub_names import RepoPath, digest
from mlxctl.runtimes.base import ProbeSpec

HASH_VERSION = "v1"
# See docs/on-demand.md, "Thrash": measured by benchmarks/on_demand.py.
DEFAULT_MIN_RESIDENCY = 15.0
GATEWAY = "gateway"

Role = Literal["tier", "gateway"]
# ``always``: runs whenever it is declared. ``on-demand``: runs while requests want it
# (the gateway holds the first one while it loads) and stops after ``idle_timeout``.
Load = Literal["always", "on-demand"]


# The largest file a pin may name: far above any model shard (the hub's own HTTP limit is
# 50 GB), far below what an int from a hostile lock or hub could claim.
MAX_FILE_SIZE = 1 << 40


@dataclass(frozen=True)
class ModelFile:
    """One file of a pinned hub model, as the hub (and the lock file) describe it.

    Validated when built (``ValueError``): whoever builds one from a lock file or a hub
    answer turns that into its own one-line error, and every ModelFile that exists has
    a :class:`RepoPath` (it stays inside the snapshot), a size and digests of the right
    form.
    """

    path: RepoPath
    size: int
    # sha256 for LFS files (the hub gives one); None for small git files.
    sha256: str | None = None
    # The git blob id (sha1 of ``blob <size>\0<bytes>``), which the hub gives for every file.
    blob: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", RepoPath(self.path))
        if (
            not isinstance(self.size, int)
            or isinstance(self.size, bool)
            or not 0 <= self.size <= MAX_FILE_SIZE
        ):
            raise ValueError(f"{self.path}: size is not a number of bytes up to 2^40")
        if self.sha256 is not None:
            digest(self.sha256, "sha256")
        if self.blob:
            digest(self.blob, "blob")


@dataclass(frozen=True)
class ModelRef:
    """Where a tier's model comes from and where its server reads it.

    ``identity`` is what the hash sees: the source, not the bytes, so re-reading
    the same directory never restarts a server.
    """

    source: Literal["path", "pypi-gguf", "hf", "gguf", "quantized"]
    identity: str
    directory: Path
    display: str
    # Set when mlxctl can produce the model itself (e.g. converting the demo GGUF).
    prepare: str | None = None
    # How the user can get the model when it is missing and mlxctl cannot produce it.
    hint: str = ""
    # Hub models: the repo, the commit it is pinned to (or, before the lock file has
    # it, the requested branch/tag), the files with their digests, the lock file that
    # records the pin and the ledger of verified files (mlxctl's state directory).
    repo: str = ""
    revision: str = ""
    requested: str = ""
    files: tuple[ModelFile, ...] = ()
    lock_file: Path | None = None
    ledger: Path | None = None
    # The key of the pin in the lock file, and which repo files it covers (empty: what
    # a runtime reads; a GGUF source names its one file).
    lock_key: str = ""
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group:
    """This machine's rank of a ``distributed`` tier (docs/multi-host.md, "One model
    across machines"): each member's controller runs its own rank, and the members learn
    each other's rank state through their gateways (``peers``)."""

    # The member hosts in rank order (rank 0 serves HTTP), and this machine's rank.
    hosts: tuple[str, ...]
    rank: int
    backend: str
    # Each other member's gateway base URL (``http://address:port``), by host name.
    peers: Mapping[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.hosts)

    def rank_of(self, host: str) -> int:
        return self.hosts.index(host)

    @property
    def others(self) -> tuple[str, ...]:
        return tuple(h for i, h in enumerate(self.hosts) if i != self.rank)


@dataclass(frozen=True)
class DesiredService:
    """One process mlxctl should run: a tier's model server or the gateway."""

    name: str
    role: Role
    runtime: str
    port: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]
    model: ModelRef | None
    launch: Mapping[str, Any]
    spec_hash: str
    probe: ProbeSpec
    startup_timeout: float
    source: str
    # Estimated memory (see mlxctl.desired.admission); None when it cannot be estimated.
    memory: MemoryEstimate | None = None
    # The stack that declares it (recorded as the owner); "" for the shared gateway.
    stack: str = ""
    # Left alone (no start, stop or heal) while true: ``suspend`` on the tier or its stack.
    suspended: bool = False
    # Tiers that must be ready before this one starts (``dependsOn``).
    depends_on: tuple[str, ...] = ()
    # Launch settings the memory estimate assumes but the server is not told (no flag).
    unenforced: tuple[str, ...] = ()
    # When it runs (neither enters the launch: changing them restarts nothing), and for
    # an on-demand tier the seconds idle before it stops (None: never).
    load: Load = "always"
    idle_timeout: float | None = None
    # A distributed tier: this machine's rank of it (None: an ordinary tier).
    group: Group | None = None

    @property
    def on_demand(self) -> bool:
        return self.load == "on-demand"

    @property
    def serves_http(self) -> bool:
        """Whether its process answers HTTP: every service but a distributed tier's ranks
        above 0 (mlx_lm.server runs its HTTP server on rank 0 only)."""
        return self.group is None or self.group.rank == 0


@dataclass(frozen=True)
class DesiredState:
    """Everything the stack files ask for, ready to plan against."""

    tiers: tuple[DesiredService, ...]
    gateway: DesiredService | None
    files: tuple[Path, ...] = ()
    empty_files: tuple[Path, ...] = ()
    ports: Mapping[str, int] = field(default_factory=dict)
    # The memory budget every tier's estimate must fit into, together.
    budget_bytes: int | None = None
    # Smaller variants per tier, for the refusal message (label, estimate).
    memory_alternatives: Mapping[str, tuple[tuple[str, MemoryEstimate], ...]] = field(
        default_factory=dict
    )
    # The stacks this state speaks for: None, every stack (a directory was read); else a
    # record owned by another stack is never pruned.
    scope: frozenset[str] | None = None
    # Stacks with ``suspend: true``: their removed tiers are not pruned either.
    suspended_stacks: frozenset[str] = frozenset()
    # Tiers declared but not resolvable (their model cannot be read), with why: blocked
    # alone, left as they run, while the other tiers converge.
    unresolved: Mapping[str, str] = field(default_factory=dict)
    # Why nothing may be pruned now ("" when pruning is allowed): a file is invalid and
    # has no last valid version, so what it declares is unknown.
    hold_prune: str = ""
    # Invalid stack files and their problems (their last valid version is applied).
    invalid_files: Mapping[Path, tuple[str, ...]] = field(default_factory=dict)
    # Seconds a loaded on-demand tier stays before another tier's requests may drain it
    # while it is busy (``spec.memory.minResidency``; an idle one may go at once).
    min_residency: float = DEFAULT_MIN_RESIDENCY
    # Tiers whose estimate was raised after they ran out of memory, with the line
    # ``diff`` shows ("estimate raised after an OOM kill: 1.0 -> 1.5 GiB").
    memory_raised: Mapping[str, str] = field(default_factory=dict)
    # This machine's name among ``spec.hosts`` (None: the stack declares no hosts), and
    # the tiers other machines serve, with their host: left alone here, routed to.
    host: str | None = None
    elsewhere: Mapping[str, str] = field(default_factory=dict)

    @property
    def services(self) -> tuple[DesiredService, ...]:
        return self.tiers + ((self.gateway,) if self.gateway else ())

    def get(self, name: str) -> DesiredService | None:
        return next((s for s in self.services if s.name == name), None)
