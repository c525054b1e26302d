"""Reading a model directory for its memory estimate: ``config.json`` and weight sizes.

The only I/O of the estimate, kept out of :mod:`mlxctl.capacity.memory` so the
planner's closure stays pure. ``config.json`` comes from a download or a conversion,
so it is read like every file mlxctl reads (:func:`mlxctl.files.read_text_bounded`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlxctl.capacity.memory import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_INT,
    MemoryEstimate,
    ModelDir,
    estimate_from_config,
)
from mlxctl.errors import SpecError
from mlxctl.files import read_text_bounded


def read_model_config(path: Path) -> dict[str, Any]:
    """The ``config.json`` of the model directory ``path``, as a JSON object.

    Read like every file mlxctl reads (:func:`mlxctl.files.read_bounded`: a regular file
    of at most :data:`MAX_CONFIG_BYTES`, never blocking on a FIFO); a file that is not
    UTF-8 JSON, not an object, or holds a size no model has is a :class:`SpecError`
    whose one line names the file.
    """
    config_path = path / "config.json"
    try:
        config = json.loads(read_text_bounded(config_path, MAX_CONFIG_BYTES))
    except (OSError, ValueError, RecursionError) as exc:
        reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        reason = " ".join(reason.split())
        raise SpecError([f"{config_path}: cannot read the model config: {reason[:160]}"]) from None
    if not isinstance(config, dict):
        raise SpecError([f"{config_path}: not a JSON object"])
    for scope in (config, config.get("text_config")):
        for key, value in scope.items() if isinstance(scope, dict) else ():
            if isinstance(value, int) and abs(value) > MAX_CONFIG_INT:
                raise SpecError(
                    [
                        f"{config_path}: {key} is a {len(str(abs(value)))}-digit number; "
                        "not a model's"
                    ]
                )
    return config


def read_model_dir(path: Path) -> ModelDir:
    """Read ``config.json`` and add up the ``*.safetensors`` sizes (the only I/O here)."""
    config = read_model_config(path)
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    if weights == 0:
        weights = sum(p.stat().st_size for p in path.glob("*.gguf"))
    return ModelDir(config=config, weights_bytes=weights)


def estimate_from_model_dir(
    path: Path, *, context: int | None = None, concurrency: int = 1
) -> MemoryEstimate:
    """Estimate a local MLX model directory from its config.json and weight files."""
    return estimate_from_config(
        read_model_dir(path), context=context, concurrency=concurrency, basis=path.name
    )
