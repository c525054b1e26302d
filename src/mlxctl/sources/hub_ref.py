"""A hub reference (repo + requested revision) as a :class:`ModelRef`, through the lock file.

Shared by the ``hf:`` source and the catalog (whose hub variants are the same thing
behind a catalog id). Resolution is offline: the lock file beside the tier's stack
file says which commit and files; the server is launched on that commit's snapshot
directory, so it never reaches the network and never loads another revision. A
reference the lock does not have yet is resolved online (once) when the resolver is
allowed to (``reconcile``, ``models pull``), else it stays unpinned and its prepare
resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mlxctl.desired.hub_names import CommitId, GitRef, RepoId, revision
from mlxctl.desired.state import ModelRef
from mlxctl.errors import MlxctlError, SpecError
from mlxctl.machine.interfaces import JobProgress, ProgressFn
from mlxctl.paths import Paths
from mlxctl.sources import hub, lockfile
from mlxctl.sources.hf_cache import hf_snapshot, hub_cache
from mlxctl.sources.pin import Pin

HF = "hf"


def hub_model_ref(
    repo: str,
    requested: str,
    *,
    stack_file: Path,
    paths: Paths,
    display: str,
    online: bool = False,
    environ: Mapping[str, str] | None = None,
    include: tuple[str, ...] = (),
) -> ModelRef:
    """The ModelRef of ``repo@requested`` for a tier declared in ``stack_file``.

    ``include``: the repo files to pin (default: what a runtime reads). The repo id and
    the revision become path parts (the cache's ``refs/``, the ledger): they are
    validated here, where they enter from the stack file (a :class:`SpecError`).
    """
    try:
        rid, rev = RepoId(repo), revision(requested)
    except ValueError as exc:
        raise SpecError([f"{stack_file}: {display}: {exc}"]) from None
    lock = lockfile.lock_path(stack_file)
    key = lockfile.ref_key(rid, rev, include)
    entry = lockfile.read_lock(lock).get(key)
    if entry is None and online:
        try:
            entry = lock_reference(rid, rev, lock, environ=environ, include=include)
        except MlxctlError:
            entry = None  # stays unpinned: its prepare fails with the reason, for this tier only
    cache = hub_cache(environ)
    if entry is None:
        return ModelRef(
            source="hf",
            identity=f"hf:{key}",
            directory=hf_snapshot(rid, rev, environ),
            display=f"{display} (not locked yet)",
            prepare=HF,
            repo=repo,
            revision=requested,
            requested=requested,
            lock_file=lock,
            # Where the ledgers live; the commit is not known yet.
            ledger=hub.ledger_dir(paths.models, rid) / "unresolved.json",
            lock_key=key,
            include=include,
        )
    return ModelRef(
        source="hf",
        identity=f"hf:{repo}@{entry.revision}",
        directory=hub.snapshot_dir(rid, entry.revision, cache),
        display=display,
        prepare=HF,
        repo=repo,
        revision=entry.revision,
        requested=requested,
        files=entry.files,
        lock_file=lock,
        ledger=hub.ledger_path(paths.models, rid, entry.revision),
        lock_key=key,
        include=include,
    )


def lock_reference(
    repo: RepoId,
    requested: CommitId | GitRef,
    lock: Path,
    *,
    environ: Mapping[str, str] | None = None,
    include: tuple[str, ...] = (),
) -> Pin:
    """Resolve ``repo@requested`` on the hub and record it in ``lock``."""
    pin = resolve(repo, requested, include, environ)
    lockfile.record(lock, lockfile.ref_key(repo, requested, include), pin)
    return pin


def resolve(
    repo: RepoId,
    requested: CommitId | GitRef,
    include: tuple[str, ...],
    environ: Mapping[str, str] | None = None,
) -> Pin:
    patterns = include or hub.RUNTIME_PATTERNS
    return hub.resolve_pin(repo, requested, patterns=patterns, environ=environ)


def pin_of(model: ModelRef, progress: ProgressFn) -> Pin:
    """The pin of a hub ModelRef: from the lock, or resolved now (and recorded)."""
    try:
        # Validated when the ModelRef was built (hub_model_ref); built again as types.
        repo, requested = RepoId(model.repo), revision(model.requested)
        if model.files:
            return Pin(repo, requested, CommitId(model.revision), model.files)
        wanted = revision(model.revision)
    except ValueError as exc:
        raise hub.HubError(f"{model.display}: {exc}") from None
    progress(JobProgress(f"resolving {model.repo}@{model.revision}"))
    pin = resolve(repo, wanted, model.include)
    if model.lock_file is not None:
        # Recorded under what the stack asked for (``pin`` holds what was resolved).
        entry = Pin(repo, requested, pin.revision, pin.files)
        lockfile.record(model.lock_file, model.lock_key, entry)
    return pin


def present(model: ModelRef) -> bool:
    """Pinned, every file in the snapshot and unchanged since mlxctl verified it."""
    if not model.files or model.ledger is None:
        return False
    return hub.verified(model.files, model.directory, model.ledger)


def prepare(model: ModelRef, progress: ProgressFn) -> Path:
    """Pin (when the lock lacks the reference), download and verify a hub model."""
    if not model.repo or model.ledger is None:
        raise MlxctlError(f"{model.display} is not a hub model")
    pin = pin_of(model, progress)
    # ledger = MODELS/hub/ORG--NAME/COMMIT.json
    return hub.pull(pin, model.ledger.parents[2], progress=progress)
