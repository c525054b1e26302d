"""The shared Hugging Face hub cache, located as huggingface_hub locates it.

Written out (a few environment variables) rather than imported, because importing
huggingface_hub costs ~0.45 s (measured here) on the ``status`` path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mlxctl.desired.hub_names import CommitId, GitRef, RepoId
from mlxctl.files import read_text_bounded

# A ref file holds 40 hex digits (and maybe a newline).
MAX_REF_BYTES = 256
MAIN = GitRef("main")


def hub_cache(environ: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache directory, resolved as huggingface_hub does."""
    env = os.environ if environ is None else environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    cache = Path(env.get("XDG_CACHE_HOME") or Path(env.get("HOME", "~")) / ".cache").expanduser()
    return cache / "huggingface" / "hub"


def repo_dir(repo: RepoId, cache: Path) -> Path:
    """``models--ORG--NAME`` in ``cache`` (a :class:`RepoId` has no ``/`` left after the fold)."""
    return cache / f"models--{RepoId(repo).replace('/', '--')}"


def read_ref(path: Path) -> CommitId | None:
    """The commit a cache ``refs/`` file names, or None: missing, not a regular file, over
    a few bytes, not UTF-8 or not a commit id (the cache is shared: any tool writes it)."""
    try:
        return CommitId(read_text_bounded(path, MAX_REF_BYTES).strip())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def hf_snapshot(
    repo: RepoId,
    revision: CommitId | GitRef = MAIN,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """The snapshot directory of ``repo`` at ``revision`` in the shared cache.

    The cache keeps ``models--ORG--NAME/refs/REVISION`` (a commit hash) and
    ``snapshots/COMMIT/``; when the ref is not there yet (or is not a commit), the
    repo's directory is returned, which holds no ``config.json``, so the model counts
    as absent.
    """
    base = repo_dir(repo, hub_cache(environ))
    if isinstance(revision, CommitId):
        return base / "snapshots" / revision
    commit = read_ref(base / "refs" / GitRef(revision))
    return base if commit is None else base / "snapshots" / commit
