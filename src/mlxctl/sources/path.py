"""``model: {path: DIR}``: a local MLX directory, used where it is (never copied)."""

from __future__ import annotations

from pathlib import Path

from mlxctl.desired.state import ModelRef
from mlxctl.errors import SpecError
from mlxctl.paths import Paths
from mlxctl.sources.base import Source, has_config
from mlxctl.spec.schema import PathSource
from mlxctl.spec.stack_set import SourcedTier


def path_ref(tier: SourcedTier) -> ModelRef:
    """The tier's model directory, absolute and with symlinks resolved.

    A path that cannot be resolved (``~nosuchuser``, a symlink loop, a name too long)
    is a validation error at the tier's line, never a traceback.
    """
    assert isinstance(tier.spec.model, PathSource)
    try:
        raw = Path(tier.spec.model.path).expanduser()
        directory = raw if raw.is_absolute() else (tier.file.parent / raw)
        directory = Path(str(directory.resolve()))
    except (RuntimeError, OSError, ValueError) as exc:
        # RuntimeError: an unknown user or (Python < 3.13) a symlink loop.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if tier.spec.model.path.startswith("~") and "home directory" in reason:
            reason = f"{tier.spec.model.path.split('/')[0]}: no such user"
        raise SpecError(
            [f"{tier.file}:{tier.line}: tier '{tier.spec.name}': model.path: {reason[:160]}"]
        ) from None
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
