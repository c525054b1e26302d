"""A hub repo pinned to one commit: the value the lock file records and a pull fetches.

One value, whichever side made it: :mod:`~mlxctl.sources.lockfile` reads it from a
``NAME.lock.yaml`` entry, :mod:`~mlxctl.sources.hub` resolves it on the hub, and a pull
downloads and verifies exactly its files. Its names come through the types of
:mod:`mlxctl.desired.hub_names`, so whoever builds one has validated them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxctl.desired.hub_names import CommitId, GitRef, RepoId
from mlxctl.desired.state import ModelFile


@dataclass(frozen=True)
class Pin:
    """``repo`` at ``revision`` (the commit ``requested`` resolved to; the lock file's
    ``revision``), with the files a runtime needs and their digests."""

    repo: RepoId
    requested: CommitId | GitRef
    revision: CommitId
    files: tuple[ModelFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)
