"""``model: {path: DIR}``: a local MLX directory, used where it is (never copied)."""

from __future__ import annotations

from pathlib import Path

from mlxctl.desired.state import ModelRef
from mlxctl.paths import Paths
from mlxctl.sources.base import Source, has_config
from mlxctl.spec.loader import SourcedTier
from mlxctl.spec.schema import PathSource


def path_ref(tier: SourcedTier) -> ModelRef:
    assert isinstance(tier.spec.model, PathSource)
    raw = Path(tier.spec.model.path).expanduser()
    directory = raw if raw.is_absolute() else (tier.file.parent / raw)
    directory = Path(str(directory.resolve()))
    return ModelRef(
        source="path", identity=f"path:{directory}", directory=directory, display=str(directory)
    )


def _resolve(tier: SourcedTier, _paths: Paths) -> ModelRef:
    return path_ref(tier)


SOURCE = Source(
    name="path",
    claims=lambda tier: isinstance(tier.spec.model, PathSource),
    resolve=_resolve,
    present=has_config,
)
