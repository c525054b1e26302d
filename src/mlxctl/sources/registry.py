"""Every model source, in the order they claim a tier: adding a source is one file and
one line here."""

from __future__ import annotations

from pathlib import Path

from mlxctl.desired.resolve import ModelResolver
from mlxctl.desired.state import ModelRef
from mlxctl.errors import MlxctlError
from mlxctl.machine.interfaces import ProgressFn, no_progress
from mlxctl.paths import Paths
from mlxctl.sources import catalog, gguf_file, hf, path
from mlxctl.sources.base import Source
from mlxctl.spec.stack_set import SourcedTier

SOURCES: tuple[Source, ...] = (path.SOURCE, hf.SOURCE, gguf_file.SOURCE, catalog.SOURCE)


def source_for(tier: SourcedTier) -> Source:
    for source in SOURCES:
        if source.claims(tier):
            return source
    raise MlxctlError(f"tier '{tier.spec.name}': no model source reads {tier.spec.model!r}")


def make_resolver(paths: Paths, *, online: bool = False) -> ModelResolver:
    """The resolver used for real runs: the first source that claims the tier resolves it.

    ``online``: a source may ask the network once to pin a reference (the lock file);
    ``status`` and ``diff`` resolve offline.
    """

    def resolve(tier: SourcedTier) -> ModelRef:
        source = source_for(tier)
        if online and source.resolve_online is not None:
            return source.resolve_online(tier, paths)
        return source.resolve(tier, paths)

    return resolve


# Which source produces a ModelRef of each ``ModelRef.source`` kind.
_PRODUCER = {"pypi-gguf": "catalog", "quantized": "catalog"}


def _by_ref(model: ModelRef) -> Source:
    name = _PRODUCER.get(model.source, model.source)
    return next(s for s in SOURCES if s.name == name)


class DiskModelStore:
    """Looks for models on disk and produces the ones mlxctl can, through their source."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    def present(self, model: ModelRef) -> bool:
        return _by_ref(model).present(model)

    def prepare(self, model: ModelRef, progress: ProgressFn = no_progress) -> Path:
        source = _by_ref(model)
        if source.prepare is None:
            raise MlxctlError(f"mlxctl cannot produce {model.display}; put it at {model.directory}")
        return source.prepare(model, progress)
