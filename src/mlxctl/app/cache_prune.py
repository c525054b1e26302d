"""Deleting from the shared Hugging Face cache: exactly the named repo and revision.

huggingface_hub's ``HFCacheInfo.delete_revisions`` looks a commit up across the whole
cache and takes the first repo holding it. Two repos at the same commit (a fork, a
copy, the same files committed twice) are common, so deleting ``org/b@C`` that way
can delete ``org/a@C`` instead, even while a server runs on it. Here the cache scan
is narrowed to the one repo first (its :class:`CachedRepoInfo`, matched by its
directory), and huggingface_hub's own strategy is computed on that: the snapshot,
its refs, and the blobs no other snapshot of *that* repo links to.

Interrupted downloads leave ``blobs/<etag>[.<tmp>].incomplete`` files that belong to
no snapshot. One is deleted only while holding the lock huggingface_hub holds for
the whole download of that blob (``.locks/<repo folder>/<etag>.lock``), so a pull in
progress, in this or another process, keeps its partial file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlxctl.errors import MlxctlError


@dataclass(frozen=True)
class Incomplete:
    """One partial download: its file and size."""

    path: Path
    size: int


def incomplete_blobs(repo_path: Path) -> list[Incomplete]:
    """The ``*.incomplete`` regular files in a cached repo's ``blobs/`` (what
    huggingface_hub's own scan reports, without importing it)."""
    out = []
    for path in sorted((repo_path / "blobs").glob("*.incomplete")):
        with contextlib.suppress(OSError):
            info = path.lstat()
            if stat.S_ISREG(info.st_mode):
                out.append(Incomplete(path, info.st_size))
    return out


# A ref holds a 40-hex commit; huggingface_hub's scan reads each one whole.
MAX_REF_BYTES = 1024


def check_refs(cache: Path) -> None:
    """Refuse, in one line, a cache whose ``refs/`` hold something other than small files.

    huggingface_hub's scan opens and reads every ref of every repo: a FIFO there would
    hang ``models rm``, a link to ``/dev/zero`` fill memory. Checked with ``lstat``
    (nothing is opened) before any scan.
    """
    for refs in sorted(cache.glob("*/refs")):
        for ref in sorted(refs.glob("**/*")):
            with contextlib.suppress(OSError):
                info = ref.lstat()
                if stat.S_ISDIR(info.st_mode):
                    continue
                if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_REF_BYTES:
                    raise MlxctlError(
                        f"{ref}: not a ref of the hub cache (a ref is a small regular file); "
                        "nothing deleted: remove it first"
                    )


def delete_revisions(cache: Path, repo_path: Path, commits: Iterable[str]) -> int:
    """Delete ``commits`` of the one cached repo at ``repo_path``; return the bytes freed.

    Raises :class:`MlxctlError` when the scan does not know the repo or a commit of it
    (nothing is deleted then): a deletion is never redirected to another repo.
    """
    from huggingface_hub import scan_cache_dir

    check_refs(cache)
    wanted = set(commits)
    info = scan_cache_dir(cache)
    target = os.path.realpath(repo_path)
    repos = [r for r in info.repos if os.path.realpath(r.repo_path) == target]
    if len(repos) != 1:
        raise MlxctlError(f"{repo_path}: not a readable repo of the hub cache; nothing deleted")
    [repo] = repos
    known = {r.commit_hash for r in repo.revisions}
    if not wanted <= known:
        missing = ", ".join(sorted(wanted - known))
        raise MlxctlError(f"{repo_path}: no snapshot {missing} in this repo; nothing deleted")
    scoped = dataclasses.replace(info, repos=frozenset({repo}))
    strategy = scoped.delete_revisions(*sorted(wanted))
    strategy.execute()
    return int(strategy.expected_freed_size)


def delete_incomplete(cache: Path, repo_path: Path, files: Iterable[Incomplete]) -> int:
    """Delete partial downloads no download holds; return the bytes freed.

    A file whose download lock is held (a pull in progress) is kept.
    """
    from filelock import FileLock, Timeout

    locks = cache / ".locks" / repo_path.name
    freed = 0
    for f in files:
        etag = f.path.name.split(".", 1)[0]
        if not etag or f.path.parent != repo_path / "blobs":
            continue
        lock = FileLock(str(locks / f"{etag}.lock"), timeout=0)
        try:
            with lock:
                f.path.unlink(missing_ok=True)
                freed += f.size
        except (Timeout, OSError):
            continue
    return freed
