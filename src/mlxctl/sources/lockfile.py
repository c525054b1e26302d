"""The lock file: which commit (and which file digests) each hub reference resolved to.

``laptop.yaml`` gets ``laptop.lock.yaml`` beside it, meant to be committed with it
(like ``uv.lock`` or ``package-lock.json``). A reference (``org/repo@main``) is
resolved to a commit once, when it is first pulled, and from then on every machine
that reads the lock pulls exactly that commit and verifies exactly those digests;
``mlxctl models update`` re-resolves and rewrites it. The stack loader skips
``*.lock.yaml`` files, so a lock in a stack directory is never read as a stack.

Reading is cheap and offline (``status`` and ``diff`` read it) and bounded, and every
name in it is validated on the way in (see :func:`read_lock`); writing is atomic and
leaves the stack directory's mode alone.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from mlxctl.desired.hub_names import CommitId, RepoId, RepoPath, digest, revision
from mlxctl.desired.state import MAX_FILE_SIZE, ModelFile
from mlxctl.errors import MlxctlError, SpecError, echo
from mlxctl.sources.pin import Pin

LOCK_SUFFIX = ".lock.yaml"
KIND = "Lock"
HEADER = (
    "# Written by mlxctl: the hub commit and file digests each model reference resolved to.\n"
    "# Commit it with the stack file; `mlxctl models update` re-resolves and rewrites it.\n"
)
# A thread mutex (not a lock file): one read-modify-write of a lock file at a time in
# this process, so several pulls finishing together all keep their entries.
_updates_mutex = threading.Lock()


def lock_path(stack_file: Path) -> Path:
    """``stacks/laptop.yaml`` -> ``stacks/laptop.lock.yaml``."""
    return stack_file.with_name(stack_file.stem + LOCK_SUFFIX)


def is_lock_file(path: Path) -> bool:
    return path.name.endswith((LOCK_SUFFIX, ".lock.yml"))


def ref_key(repo: str, requested: str, include: tuple[str, ...] = ()) -> str:
    """How an entry is keyed: what the stack asked for, not what it resolved to
    (``org/repo@main``; a single GGUF file of a repo: ``org/repo@main#file.gguf``)."""
    return f"{repo}@{requested}" + ("#" + ",".join(include) if include else "")


# A lock entry pins what a runtime reads; the largest MLX repos hold a few hundred
# shards, so this is far above any real one and keeps a lock (and every verification
# pass that walks it) small. ``hub.MAX_PINNED_FILES`` applies the same bound to the hub.
MAX_PINNED_FILES = 2000
# About 200 bytes per file: a lock of a few full-size entries stays well under this.
MAX_LOCK_BYTES = 4 * 1024 * 1024


def read_lock(path: Path) -> dict[str, Pin]:
    """The entries of ``path`` ({} when it does not exist); anything else that is not a
    valid lock file is a :class:`SpecError` of one line, ``file:line:col: where: why``.

    Read like a stack file (regular file only, at most ``MAX_LOCK_BYTES``, UTF-8, the
    stack loader's bounded YAML parser), because it is committed and pulled like one:
    every path, commit and digest in it is validated here, before anything uses it.
    """
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise SpecError([f"{path}: cannot read the lock file: {exc.strerror or exc}"]) from None
    except ValueError:  # NUL in the path
        raise SpecError([f"{echo(str(path))}: not a usable lock file path"]) from None
    return dict(_read(str(path), (st.st_mtime_ns, st.st_size, st.st_ino)))


@functools.lru_cache(maxsize=32)
def _read(path: str, _stamp: tuple[int, int, int]) -> tuple[tuple[str, Pin], ...]:
    problems: list[str] = []
    from mlxctl.spec.bounded_yaml import read_yaml_text

    text = read_yaml_text(Path(path), problems, max_bytes=MAX_LOCK_BYTES, what="the lock file")
    nodes = _parse(Path(path), text, problems) if text is not None else None
    if nodes is None:
        raise SpecError([_one_line(problems)])
    if not nodes:
        return ()
    if len(nodes) > 1:
        raise SpecError([f"{path}:1:1: a lock file is one YAML document"])
    node = nodes[0]
    try:
        doc = _LockDoc.model_validate(node)
    except ValidationError as exc:
        raise SpecError([_one_line(_validation_problems(Path(path), node, exc))]) from None
    return tuple((key, raw.entry()) for key, raw in (doc.models or {}).items())


def _parse(path: Path, text: str, problems: list[str]) -> list[Any] | None:
    """The YAML documents, parsed as stack files are: positions kept, depth and alias
    expansion bounded, every YAML error one ``file:line:col`` line."""
    from mlxctl.spec.bounded_yaml import parse_documents

    return parse_documents(path, text, problems)


def _one_line(problems: list[str]) -> str:
    first = problems[0].splitlines()[0] if problems and problems[0] else "invalid lock file"
    more = len(problems) - 1
    return first + (f" (and {more} more problem(s))" if more > 0 else "")


class _File(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    path: StrictStr
    size: StrictInt
    sha256: StrictStr | None = None
    blob: StrictStr = ""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return RepoPath(value)

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        return None if value is None else digest(value, "sha256")

    @field_validator("blob")
    @classmethod
    def _blob(cls, value: str) -> str:
        return digest(value, "blob") if value else value

    @field_validator("size")
    @classmethod
    def _size(cls, value: int) -> int:
        if not 0 <= value <= MAX_FILE_SIZE:
            raise ValueError(f"size {echo(value)} is not a number of bytes up to 2^40")
        return value

    @model_validator(mode="after")
    def _digested(self) -> _File:
        # A file with neither digest would be trusted on its size alone.
        if not self.sha256 and not self.blob:
            raise ValueError("a pinned file needs its sha256 or its git blob id")
        return self


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    repo: StrictStr
    requested: StrictStr
    revision: StrictStr
    files: list[_File] = Field(min_length=1, max_length=MAX_PINNED_FILES)

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        return RepoId(value)

    @field_validator("requested")
    @classmethod
    def _requested(cls, value: str) -> str:
        return revision(value)

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str) -> str:
        return CommitId(value)

    def entry(self) -> Pin:
        files = tuple(ModelFile(RepoPath(f.path), f.size, f.sha256, f.blob) for f in self.files)
        return Pin(RepoId(self.repo), revision(self.requested), CommitId(self.revision), files)


class _LockDoc(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["Lock"]
    models: dict[StrictStr, _Entry] | None = None

    @model_validator(mode="after")
    def _keys_match(self) -> _LockDoc:
        for key, raw in (self.models or {}).items():
            base, _, include = key.partition("#")
            if base != f"{raw.repo}@{raw.requested}" or (include == "" and "#" in key):
                raise ValueError(
                    f"key {echo(key)} does not name its entry ({raw.repo}@{raw.requested})"
                )
        return self


def _validation_problems(path: Path, node: Any, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line, col = _position(node, loc)
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "literal_error" and loc == ("kind",):
            message = f"is {echo(err.get('input'))}, expected {KIND!r}"
        out.append(f"{path}:{line}:{col}: {echo(where, 80).strip(chr(39)) or '<root>'}: {message}")
    return out


def _position(node: Any, loc: tuple[int | str, ...]) -> tuple[int, int]:
    """1-based line and column of the deepest node of ``loc`` present in the YAML."""
    line, col = 1, 1
    current = node
    for part in loc:
        data = getattr(getattr(current, "lc", None), "data", None)
        if isinstance(current, dict) and part in current and data and part in data:
            line, col = data[part][2] + 1, data[part][3] + 1
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and part < len(current) and data:
            line, col = data[part][0] + 1, data[part][1] + 1
            current = current[part]
        else:
            break
    return line, col


def _entry_data(entry: Pin) -> dict[str, Any]:
    files = []
    for f in entry.files:
        item: dict[str, Any] = {"path": str(f.path), "size": f.size}
        if f.sha256:
            item["sha256"] = f.sha256
        if f.blob:
            item["blob"] = f.blob
        files.append(item)
    return {
        "repo": str(entry.repo),
        "requested": str(entry.requested),
        "revision": str(entry.revision),
        "files": files,
    }


def write_lock(path: Path, entries: Mapping[str, Pin]) -> None:
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
        # The lock lives in the user's stack directory (often a dotfiles repo): an
        # ordinary 0644 file, and the directory's mode is the user's, not mlxctl's.
        write_atomic(path, HEADER + buffer.getvalue(), mode=0o644, foreign_dir=True)
    except OSError as exc:
        raise MlxctlError(f"cannot write the lock file {path}: {exc.strerror or exc}") from None


def record(path: Path, key: str, entry: Pin) -> None:
    """Add or replace one entry, keeping the others (several pulls may finish together)."""
    with _updates_mutex:
        entries = read_lock(path)
        if entries.get(key) == entry:
            return
        entries[key] = entry
        write_lock(path, entries)


def prune(path: Path, keep: Iterable[str]) -> list[str]:
    """Drop entries no reference uses any more; return their keys."""
    with _updates_mutex:
        entries = read_lock(path)
        wanted = set(keep)
        dropped = sorted(k for k in entries if k not in wanted)
        if dropped:
            write_lock(path, {k: v for k, v in entries.items() if k in wanted})
        return dropped
