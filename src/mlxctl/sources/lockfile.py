"""The lock file: which commit (and which file digests) each hub reference resolved to.

``laptop.yaml`` gets ``laptop.lock.yaml`` beside it, meant to be committed with it
(like ``uv.lock`` or ``package-lock.json``). A reference (``org/repo@main``) is
resolved to a commit once, when it is first pulled, and from then on every machine
that reads the lock pulls exactly that commit and verifies exactly those digests;
``mlxctl models update`` re-resolves and rewrites it. The stack loader skips
``*.lock.yaml`` files, so a lock in a stack directory is never read as a stack.

Reading is cheap and offline (``status`` and ``diff`` read it); writing is atomic.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxctl.desired.state import ModelFile
from mlxctl.errors import MlxctlError, SpecError

LOCK_SUFFIX = ".lock.yaml"
KIND = "Lock"
HEADER = (
    "# Written by mlxctl: the hub commit and file digests each model reference resolved to.\n"
    "# Commit it with the stack file; `mlxctl models update` re-resolves and rewrites it.\n"
)
_write_lock = threading.Lock()


@dataclass(frozen=True)
class LockEntry:
    repo: str
    requested: str
    revision: str
    files: tuple[ModelFile, ...]


def lock_path(stack_file: Path) -> Path:
    """``stacks/laptop.yaml`` -> ``stacks/laptop.lock.yaml``."""
    return stack_file.with_name(stack_file.stem + LOCK_SUFFIX)


def is_lock_file(path: Path) -> bool:
    return path.name.endswith((LOCK_SUFFIX, ".lock.yml"))


def ref_key(repo: str, requested: str, include: tuple[str, ...] = ()) -> str:
    """How an entry is keyed: what the stack asked for, not what it resolved to
    (``org/repo@main``; a single GGUF file of a repo: ``org/repo@main#file.gguf``)."""
    return f"{repo}@{requested}" + ("#" + ",".join(include) if include else "")


def read_lock(path: Path) -> dict[str, LockEntry]:
    """The entries of ``path`` ({} when it does not exist); an invalid file is a SpecError."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    return dict(_read(str(path), stamp))


@functools.lru_cache(maxsize=32)
def _read(path: str, _stamp: int) -> tuple[tuple[str, LockEntry], ...]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        data = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8"))
    except (OSError, YAMLError) as exc:
        raise SpecError([f"{path}: cannot read the lock file: {exc}"]) from None
    if data is None:
        return ()
    try:
        if data.get("kind") != KIND:
            raise ValueError(f"kind is {data.get('kind')!r}, expected {KIND!r}")
        entries = []
        for key, raw in (data.get("models") or {}).items():
            files = tuple(
                ModelFile(
                    path=str(f["path"]),
                    size=int(f["size"]),
                    sha256=f.get("sha256"),
                    blob=str(f.get("blob", "")),
                )
                for f in raw["files"]
            )
            entry = LockEntry(str(raw["repo"]), str(raw["requested"]), str(raw["revision"]), files)
            entries.append((str(key), entry))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SpecError([f"{path}: invalid lock file: {exc}"]) from None
    return tuple(entries)


def _entry_data(entry: LockEntry) -> dict[str, Any]:
    files = []
    for f in entry.files:
        item: dict[str, Any] = {"path": f.path, "size": f.size}
        if f.sha256:
            item["sha256"] = f.sha256
        if f.blob:
            item["blob"] = f.blob
        files.append(item)
    return {
        "repo": entry.repo,
        "requested": entry.requested,
        "revision": entry.revision,
        "files": files,
    }


def write_lock(path: Path, entries: Mapping[str, LockEntry]) -> None:
    """Replace ``path`` with exactly ``entries`` (sorted, so diffs stay small)."""
    import io

    from ruamel.yaml import YAML

    from mlxctl.machine.inventory import write_atomic

    yaml = YAML()
    yaml.default_flow_style = None
    yaml.width = 200
    buffer = io.StringIO()
    doc = {
        "apiVersion": "mlxctl/v1",
        "kind": KIND,
        "models": {key: _entry_data(entries[key]) for key in sorted(entries)},
    }
    yaml.dump(doc, buffer)
    try:
        write_atomic(path, HEADER + buffer.getvalue())
    except OSError as exc:
        raise MlxctlError(f"cannot write the lock file {path}: {exc.strerror or exc}") from None


def record(path: Path, key: str, entry: LockEntry) -> None:
    """Add or replace one entry, keeping the others (several pulls may finish together)."""
    with _write_lock:
        entries = read_lock(path)
        if entries.get(key) == entry:
            return
        entries[key] = entry
        write_lock(path, entries)


def prune(path: Path, keep: Iterable[str]) -> list[str]:
    """Drop entries no reference uses any more; return their keys."""
    with _write_lock:
        entries = read_lock(path)
        wanted = set(keep)
        dropped = sorted(k for k in entries if k not in wanted)
        if dropped:
            write_lock(path, {k: v for k, v in entries.items() if k in wanted})
        return dropped
