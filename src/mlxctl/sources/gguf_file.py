"""``model: {gguf: FILE}``: a GGUF file converted to MLX once, into mlxctl's model store.

``FILE`` is a local ``.gguf`` (``~`` expanded, relative to the stack file), or a file
inside a hub repo, ``org/repo/path/model.gguf`` (with an optional ``revision``), which
is pinned in the lock file and pulled (that one file only) like any hub model. A path
is local when it exists, is absolute, or starts with ``~`` or ``.``.

The converted directory carries a marker naming its source (the local file's size and
mtime, or the pinned sha256) and the converter version: a changed file or a newer
converter converts again; otherwise the conversion is never redone.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mlxctl.desired.state import ModelRef
from mlxctl.errors import MlxctlError
from mlxctl.machine.interfaces import JobProgress, ProgressFn
from mlxctl.paths import Paths
from mlxctl.sources import hub, hub_ref
from mlxctl.sources.base import Source
from mlxctl.sources.gguf_convert import CONVERTER_VERSION, convert_gguf, read_source_marker
from mlxctl.spec.schema import GgufSource
from mlxctl.spec.stack_set import SourcedTier

NAME = "gguf"
_HUB_FILE = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)/(?P<file>.+\.gguf)$", re.I
)


def _local_path(tier: SourcedTier, raw: str) -> Path | None:
    path = Path(raw).expanduser()
    candidate = path if path.is_absolute() else tier.file.parent / path
    if raw.startswith(("/", "~", ".")) or candidate.exists() or not _HUB_FILE.match(raw):
        return Path(str(candidate.resolve()))
    return None


def gguf_ref(tier: SourcedTier, paths: Paths, *, online: bool = False) -> ModelRef:
    spec = tier.spec.model
    assert isinstance(spec, GgufSource)
    store = paths.models / NAME
    local = _local_path(tier, spec.gguf)
    if local is not None:
        digest = hashlib.sha256(str(local).encode()).hexdigest()[:10]
        return ModelRef(
            source="gguf",
            identity=f"gguf:{local}",
            directory=store / f"{local.stem}-{digest}",
            display=str(local),
            prepare=NAME,
            requested=str(local),
        )
    match = _HUB_FILE.match(spec.gguf)
    assert match is not None
    repo, file = match["repo"], match["file"]
    revision = spec.revision or "main"
    pinned = hub_ref.hub_model_ref(
        repo,
        revision,
        stack_file=tier.file,
        paths=paths,
        display=f"{repo}@{revision}/{file}",
        online=online,
        include=(file,),
    )
    stem = Path(file).stem
    tag = hub.short(pinned.revision) if pinned.files else "unlocked"
    return ModelRef(
        source="gguf",
        identity=f"gguf:{repo}@{pinned.revision}/{file}",
        directory=store / f"{repo.replace('/', '--')}--{stem}-{tag}",
        display=pinned.display,
        prepare=NAME,
        repo=repo,
        revision=pinned.revision,
        requested=revision,
        files=pinned.files,
        lock_file=pinned.lock_file,
        ledger=pinned.ledger,
        lock_key=pinned.lock_key,
        include=(file,),
    )


def _expected_marker(model: ModelRef) -> dict[str, object] | None:
    """What the converted directory's marker must say for this source."""
    if model.repo:
        if not model.files:
            return None
        return {"sha256": model.files[0].sha256}
    try:
        st = Path(model.requested).stat()
    except OSError:
        return None
    return {
        "source_path": model.requested,
        "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns,
    }


def present(model: ModelRef) -> bool:
    expected = _expected_marker(model)
    marker = read_source_marker(model.directory)
    if expected is None or marker is None or marker.get("converter_version") != CONVERTER_VERSION:
        return False
    return (
        all(marker.get(k) == v for k, v in expected.items())
        and (model.directory / "model.safetensors").is_file()
    )


def prepare(model: ModelRef, progress: ProgressFn) -> Path:
    """Pull (hub) and convert; the directory appears atomically, complete or not at all."""
    if model.repo:
        if model.ledger is None:
            raise MlxctlError(f"{model.display} is not a hub model")
        pin = hub_ref.pin_of(model, progress)
        snapshot = hub.pull(pin, model.ledger.parents[2], progress=progress)
        [entry] = pin.files
        source = snapshot / entry.path
        progress(JobProgress(f"converting {entry.path} to MLX"))
        return convert_gguf(source, model.directory, source_sha256=entry.sha256)
    source = Path(model.requested)
    if not source.is_file():
        raise MlxctlError(f"GGUF file not found: {source}")
    expected = _expected_marker(model) or {}
    progress(JobProgress(f"converting {source.name} to MLX"))
    return convert_gguf(source, model.directory, marker_extra=expected)


SOURCE = Source(
    name=NAME,
    claims=lambda tier: isinstance(tier.spec.model, GgufSource),
    resolve=gguf_ref,
    present=present,
    prepare=prepare,
    resolve_online=lambda tier, paths: gguf_ref(tier, paths, online=True),
)
