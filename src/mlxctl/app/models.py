"""The model store as use cases: list, pull, remove, collect garbage, update the locks.

Functions here return values and never print, so the CLI (``mlxctl models ...``) and
an admin API can share them. Hub models live in the shared Hugging Face cache (read
and pruned through huggingface_hub's own cache manager); converted models live in
mlxctl's state directory. What a stack *references* is read offline through the same
resolver ``status`` uses: a tier's ModelRef names its repo and pinned commit, or its
directory.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlxctl.desired.hub_names import CommitId, GitRef, RepoId, revision
from mlxctl.desired.state import ModelRef
from mlxctl.errors import ExitCode, MlxctlError, NotFoundError, SpecError
from mlxctl.machine.interfaces import ProgressFn, no_progress
from mlxctl.paths import Paths
from mlxctl.sources import hub, hub_ref, lockfile
from mlxctl.sources.hf_cache import hub_cache, read_ref, repo_dir
from mlxctl.sources.pin import Pin
from mlxctl.spec.stack_set import StackSet

_REF = re.compile(
    r"^(?:hf:)?(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[^@\s]+))?$"
)


@dataclass(frozen=True)
class Reference:
    """A hub model as a user names it on the command line (validated names)."""

    repo: RepoId
    requested: CommitId | GitRef
    display: str


@dataclass(frozen=True)
class TierModel:
    """Which model a tier of the stack uses (offline resolution)."""

    tier: str
    stack_file: Path
    model: ModelRef


@dataclass(frozen=True)
class StoredModel:
    """One model on disk: a hub snapshot in the cache, or a converted directory."""

    kind: str  # "hub" or "converted"
    name: str  # repo id, or the converted model's directory name
    revision: str  # commit, or "" for a converted model
    path: Path
    size: int
    pulled_by_mlxctl: bool
    verified: bool
    tiers: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    refs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "revision": self.revision,
            "path": str(self.path),
            "size": self.size,
            "pulled_by_mlxctl": self.pulled_by_mlxctl,
            "verified": self.verified,
            "tiers": list(self.tiers),
            "running": list(self.running),
            "refs": list(self.refs),
            "unused": not self.tiers,
        }


@dataclass(frozen=True)
class PullResult:
    repo: str
    requested: str
    revision: str
    path: Path
    size: int
    lock_file: Path | None


@dataclass(frozen=True)
class RevisionChange:
    tier: str
    repo: str
    requested: str
    old: str | None
    new: str
    lock_file: Path


@dataclass(frozen=True)
class GcResult:
    candidates: tuple[StoredModel, ...]
    deleted: bool
    freed: int
    skipped_foreign: tuple[StoredModel, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------- references


def parse_reference(text: str, quant: str | None = None) -> Reference:
    """``hf:org/repo[@rev]``, ``org/repo[@rev]`` or a catalog id (with ``quant``).

    The repo id and revision become path parts (the cache's ``refs/``, the ledger):
    a revision that is not a branch, tag or commit is a usage error (exit 2) here.
    """
    match = _REF.match(text)
    if match:
        try:
            repo, rev = RepoId(match["repo"]), revision(match["rev"] or "main")
        except ValueError as exc:
            raise MlxctlError(str(exc), exit_code=ExitCode.USAGE) from None
        return Reference(repo, rev, f"{repo}@{rev}")
    from mlxctl.catalog.entries import load_entry, resolve_variant

    resolved = resolve_variant(load_entry(text), quant)
    if resolved.repo is None:
        raise MlxctlError(
            f"{text} ({resolved.quant}) is not a hub model; `mlxctl reconcile` converts it"
        )
    try:
        repo = RepoId(resolved.repo)
    except ValueError as exc:
        raise MlxctlError(f"{text}: {exc}") from None
    return Reference(repo, GitRef("main"), f"{text} ({resolved.quant}) {resolved.repo}")


def tier_models(stack: StackSet, paths: Paths, *, strict: bool = False) -> list[TierModel]:
    """Every tier's ModelRef, resolved offline (tiers whose model cannot be resolved skipped;
    with ``strict``, an invalid reference or lock is raised: ``models update`` must not
    report "current" for a tier it could not read)."""
    from mlxctl.sources.registry import make_resolver

    resolve = make_resolver(paths)
    out = []
    for tier in stack.tiers:
        try:
            out.append(TierModel(tier.spec.name, tier.file, resolve(tier)))
        except SpecError:
            if strict:
                raise
        except MlxctlError:
            continue
    return out


def running_tiers(paths: Paths) -> dict[str, tuple[str, ...]]:
    """Live tiers of this state directory -> their command lines (identity-checked)."""
    from mlxctl.machine.inventory import Inventory
    from mlxctl.machine.processes import RealProcessControl

    procs = RealProcessControl(str(paths.state))
    out = {}
    for name, record in Inventory(paths.inventory).load().items():
        if record.role == "tier" and procs.status(record.identity()).alive:
            out[name] = record.cmdline
    return out


# --------------------------------------------------------------------------- pull


def pull(
    ref: Reference,
    paths: Paths,
    *,
    stack: StackSet | None = None,
    progress: ProgressFn = no_progress,
    environ: Mapping[str, str] | None = None,
    free: hub.FreeSpace = hub.free_space,
) -> PullResult:
    """Download and verify ``ref``; the lock of a stack that references it pins the commit.

    When a tier of ``stack`` names the same repo and revision, its lock file decides
    the commit (pinning it first when absent). Otherwise the revision is resolved now
    and nothing is recorded in any lock. Every lock file of ``stack`` is read first: an
    invalid one refuses the pull (exit 3) before anything is touched.
    """
    lock: Path | None = None
    if stack is not None:
        read_locks(stack)
        for tier in tier_models(stack, paths):
            model = tier.model
            if (model.repo, model.requested, model.include) == (ref.repo, ref.requested, ()):
                lock = lockfile.lock_path(tier.stack_file)
                break
    key = lockfile.ref_key(ref.repo, ref.requested)
    entry = lockfile.read_lock(lock).get(key) if lock is not None else None
    if entry is None and lock is not None:
        entry = hub_ref.lock_reference(ref.repo, ref.requested, lock, environ=environ)
    if entry is not None:
        pin = Pin(ref.repo, ref.requested, entry.revision, entry.files)
    else:
        pin = hub.resolve_pin(ref.repo, ref.requested, environ=environ)
    path = hub.pull(pin, paths.models, progress=progress, environ=environ, free=free)
    return PullResult(ref.repo, ref.requested, pin.revision, path, pin.size, lock)


@dataclass(frozen=True)
class TierPull:
    tier: str
    model: ModelRef
    path: Path
    already_present: bool


def read_locks(stack: StackSet) -> None:
    """Read (and so validate) the lock file beside each stack file: a :class:`SpecError`
    (exit 3, ``file:line:col``) for the first invalid one. ``tier_models`` skips tiers
    it cannot resolve; a command that acts on the locks must not skip a bad lock."""
    for file in dict.fromkeys(tier.file for tier in stack.tiers):
        lockfile.read_lock(lockfile.lock_path(file))


def pull_stack(
    stack: StackSet,
    paths: Paths,
    *,
    progress: ProgressFn = no_progress,
    environ: Mapping[str, str] | None = None,
) -> list[TierPull]:
    """Produce every tier's model as ``reconcile`` would (pin, pull, verify, convert), without
    starting anything; models shared by tiers are produced once. In a stack of several
    machines, only this machine's tiers (another machine pulls its own)."""
    from mlxctl.app.hosts import this_machines
    from mlxctl.sources.registry import DiskModelStore, make_resolver

    read_locks(stack)
    stack = this_machines(stack, environ)
    resolve = make_resolver(paths, online=True)
    store = DiskModelStore(paths.models)
    done: dict[str, Path] = {}
    out = []
    for tier in stack.tiers:
        model = resolve(tier)
        if model.identity in done or store.present(model):
            path = done.get(model.identity, model.directory)
            out.append(TierPull(tier.spec.name, model, path, True))
            continue
        path = store.prepare(model, progress)
        done[model.identity] = path
        out.append(TierPull(tier.spec.name, model, path, False))
    return out


# --------------------------------------------------------------------------- update


def update_locks(
    stack: StackSet,
    paths: Paths,
    tiers: Sequence[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
) -> list[RevisionChange]:
    """Re-resolve the hub references of ``tiers`` (all when empty) and rewrite the locks.

    Returns one change per tier whose pinned commit moved (or was not pinned before).
    Updating every tier also drops lock entries no tier references any more. An
    invalid lock file is refused (exit 3) rather than read as "nothing locked".
    """
    known = {t.spec.name for t in stack.tiers}
    unknown = [t for t in tiers if t not in known]
    if unknown:
        raise NotFoundError(f"no tier named {', '.join(unknown)} in the stack")
    read_locks(stack)
    models = tier_models(stack, paths, strict=True)
    chosen = [m for m in models if m.model.repo and (not tiers or m.tier in tiers)]
    changes: list[RevisionChange] = []
    resolved: dict[tuple[Path, str], str] = {}
    for tm in chosen:
        lock = lockfile.lock_path(tm.stack_file)
        key = tm.model.lock_key
        old = lockfile.read_lock(lock).get(key)
        if (lock, key) not in resolved:
            entry = hub_ref.lock_reference(
                RepoId(tm.model.repo),
                revision(tm.model.requested),
                lock,
                environ=environ,
                include=tm.model.include,
            )
            resolved[(lock, key)] = entry.revision
        new = resolved[(lock, key)]
        if old is None or old.revision != new:
            changes.append(
                RevisionChange(
                    tm.tier,
                    tm.model.repo,
                    tm.model.requested,
                    old.revision if old else None,
                    new,
                    lock,
                )
            )
    if not tiers:
        keep: dict[Path, set[str]] = {}
        for tm in models:
            if tm.model.repo:
                keep.setdefault(lockfile.lock_path(tm.stack_file), set()).add(tm.model.lock_key)
        for lock, keys in keep.items():
            lockfile.prune(lock, keys)
    return changes


# --------------------------------------------------------------------------- list


def _tree_size(directory: Path) -> int:
    """Bytes of a directory's files (links followed, each blob counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in directory.rglob("*"):
        try:
            st = path.stat()
        except OSError:
            continue
        if path.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def _ref_names(refs_dir: Path) -> dict[str, list[str]]:
    """commit -> the refs naming it; a ref that is not a small regular file holding a
    commit id is skipped (:func:`~mlxctl.sources.hf_cache.read_ref`)."""
    out: dict[str, list[str]] = {}
    for ref in sorted(refs_dir.rglob("*")) if refs_dir.is_dir() else []:
        commit = read_ref(ref)
        if commit is not None:
            out.setdefault(commit, []).append(str(ref.relative_to(refs_dir)))
    return out


def list_models(
    paths: Paths,
    stack: StackSet | None,
    *,
    environ: Mapping[str, str] | None = None,
    running: Mapping[str, tuple[str, ...]] | None = None,
) -> list[StoredModel]:
    """Every model on disk: hub cache snapshots, partial downloads left by interrupted
    pulls (kind ``incomplete``), and converted models, with their users."""
    from mlxctl.app.cache_prune import incomplete_blobs
    from mlxctl.app.hosts import this_machines

    cache = hub_cache(environ)
    # The tiers that use a model here: this machine's (another machine's tier keeps
    # nothing on this one: a model it alone names is unused here, and collected by gc).
    users = tier_models(this_machines(stack, environ), paths) if stack is not None else []
    live = running_tiers(paths) if running is None else running
    out: list[StoredModel] = []
    for repo, repo_path in hub.cached_repos(cache):
        ref_names = _ref_names(repo_path / "refs")
        snapshots = repo_path / "snapshots"
        for snap in sorted(snapshots.iterdir()) if snapshots.is_dir() else []:
            if not hub.COMMIT.match(snap.name):
                continue  # not a snapshot huggingface_hub names: not one mlxctl can name
            ledger = hub.ledger_path(paths.models, repo, CommitId(snap.name))
            files = [u.model.files for u in users if u.model.directory == snap and u.model.files]
            out.append(
                _stored(
                    "hub",
                    repo,
                    snap.name,
                    snap,
                    users,
                    live,
                    pulled=ledger.is_file(),
                    verified=bool(files) and hub.verified(files[0], snap, ledger),
                    refs=tuple(sorted(ref_names.get(snap.name, []))),
                )
            )
        partial = incomplete_blobs(repo_path)
        if partial:
            # No snapshot links them and huggingface_hub never resumes another process's
            # partial file: garbage once no download holds its lock (see cache_prune).
            ledgers = hub.ledger_dir(paths.models, repo)
            out.append(
                StoredModel(
                    "incomplete",
                    repo,
                    "",
                    repo_path / "blobs",
                    sum(f.size for f in partial),
                    pulled_by_mlxctl=ledgers.is_dir(),
                    verified=False,
                )
            )
    # Converted models: the store's top level (the demo model) and gguf/ (GGUF imports).
    converted = [
        d
        for parent in (paths.models, paths.models / "gguf")
        if parent.is_dir()
        for d in sorted(parent.iterdir())
        if d.is_dir() and d.name not in ("hub", "gguf") and not d.name.startswith(".")
    ]
    for directory in converted:
        out.append(
            _stored(
                "converted",
                directory.name,
                "",
                directory,
                users,
                live,
                pulled=True,
                verified=(directory / "config.json").is_file(),
            )
        )
    return out


def _same_dir(a: Path, b: Path) -> bool:
    """Whether two paths name the same directory (links resolved), never raising."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def uses(argv: Sequence[str], path: Path) -> bool:
    """Whether a command line names the directory ``path`` (as itself or via links).

    Only absolute arguments are compared, and by the directory they resolve to: a
    server started on ``models--org--a/snapshots/C`` does not use ``models--org--b``'s
    snapshot of the same commit, and one started through a symlinked cache does.
    """
    return any(arg.startswith("/") and _same_dir(Path(arg), path) for arg in argv)


def _stored(
    kind: str,
    name: str,
    revision: str,
    path: Path,
    users: Iterable[TierModel],
    live: Mapping[str, tuple[str, ...]],
    *,
    pulled: bool,
    verified: bool,
    refs: tuple[str, ...] = (),
) -> StoredModel:
    tiers = tuple(sorted(u.tier for u in users if u.model.directory == path))
    running = tuple(sorted(name for name, argv in live.items() if uses(argv, path)))
    return StoredModel(
        kind, name, revision, path, _tree_size(path), pulled, verified, tiers, running, refs
    )


# --------------------------------------------------------------------------- rm / gc


def find_stored(
    text: str, models: Sequence[StoredModel], quant: str | None = None
) -> list[StoredModel]:
    """The stored models ``text`` names: ``org/repo[@rev|@commit]``, a catalog id, a
    converted model's name."""
    named = [m for m in models if m.kind == "converted" and m.name == text]
    if named:
        return named
    match = _REF.match(text)
    if match is None:
        ref = parse_reference(text, quant)
        repo, rev = str(ref.repo), None
    else:
        repo, rev = match["repo"], match["rev"]
    found = [m for m in models if m.kind in ("hub", "incomplete") and m.name == repo]
    if rev is not None:  # a revision names a snapshot, never a partial download
        found = [
            m for m in found if m.kind == "hub" and (m.revision.startswith(rev) or rev in m.refs)
        ]
    if not found:
        raise NotFoundError(f"{text} is not in the hub cache or the converted store")
    return found


def remove(
    models: Sequence[StoredModel], paths: Paths, *, environ: Mapping[str, str] | None = None
) -> int:
    """Delete exactly ``models`` (refusing if a running tier uses one); return the bytes freed.

    A hub snapshot is deleted within its own repo only (see :mod:`mlxctl.app.cache_prune`),
    so another repo holding the same commit is never touched.
    """
    from mlxctl.app.cache_prune import delete_incomplete, delete_revisions, incomplete_blobs

    busy = [m for m in models if m.running]
    if busy:
        m = busy[0]
        raise MlxctlError(
            f"{m.name}{'@' + hub.short(m.revision) if m.revision else ''} is used by running "
            f"tier(s) {', '.join(m.running)}: remove them from the stack (or `mlxctl down`) first"
        )
    cache = hub_cache(environ)
    freed = 0
    # Partial downloads first, each under its download lock (a repo deleted whole below
    # would take them without asking).
    for m in models:
        if m.kind == "incomplete":
            repo_path = repo_dir(RepoId(m.name), cache)
            freed += delete_incomplete(cache, repo_path, incomplete_blobs(repo_path))
    by_repo: dict[str, list[StoredModel]] = {}
    for m in models:
        if m.kind == "hub":
            by_repo.setdefault(m.name, []).append(m)
    for repo, snaps in by_repo.items():
        freed += delete_revisions(cache, repo_dir(RepoId(repo), cache), [m.revision for m in snaps])
        for m in snaps:
            ledger = hub.ledger_path(paths.models, RepoId(m.name), CommitId(m.revision))
            ledger.unlink(missing_ok=True)
    for m in models:
        if m.kind == "converted":
            freed += m.size
            shutil.rmtree(m.path, ignore_errors=True)
    return freed


def gc(
    paths: Paths,
    stack: StackSet,
    *,
    delete: bool = False,
    include_foreign: bool = False,
    environ: Mapping[str, str] | None = None,
    running: Mapping[str, tuple[str, ...]] | None = None,
) -> GcResult:
    """What no tier of ``stack`` this machine runs references (and no running tier uses);
    deleted with ``delete``.

    Cache entries mlxctl did not download are left alone unless ``include_foreign``.
    """
    models = list_models(paths, stack, environ=environ, running=running)
    unused = [m for m in models if not m.tiers and not m.running]
    candidates = [m for m in unused if m.pulled_by_mlxctl or include_foreign]
    foreign = [m for m in unused if m not in candidates]
    freed = sum(m.size for m in candidates)
    if delete and candidates:
        freed = remove(candidates, paths, environ=environ)
    return GcResult(tuple(candidates), delete, freed, tuple(foreign))


def ensure_stack_valid(stack: StackSet | None) -> None:
    """A refused stack must not drive a deletion (its references would be missed)."""
    if stack is None or not stack.files:
        raise SpecError(["no stack files: gc would consider every model unused (give PATH)"])
