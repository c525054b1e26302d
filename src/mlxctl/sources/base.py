"""What every model source provides.

A source (one file per source in this folder, listed in
:mod:`mlxctl.sources.registry`) turns what a tier's ``model:`` says into a
:class:`~mlxctl.desired.state.ModelRef` (where the server will read the model and
the identity the launch hash sees), tells whether that model is on disk, and, when
mlxctl can produce it itself (a conversion, a download), produces it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlxctl.desired.state import ModelRef
from mlxctl.machine.interfaces import ProgressFn
from mlxctl.paths import Paths
from mlxctl.spec.stack_set import SourcedTier


@dataclass(frozen=True)
class Source:
    """One model source."""

    # The ``ModelRef.source`` value this source produces.
    name: str
    # Whether this source reads the tier's ``model:`` (the first match in the registry wins).
    claims: Callable[[SourcedTier], bool]
    resolve: Callable[[SourcedTier, Paths], ModelRef]
    present: Callable[[ModelRef], bool]
    # Produce the model; None when mlxctl cannot (the ref's hint says how to get it).
    prepare: Callable[[ModelRef, ProgressFn], Path] | None = None
    # ``resolve`` allowed to ask the network once (to pin a hub reference in the lock
    # file); used by ``reconcile`` and ``models pull``, never by ``status`` or ``diff``.
    resolve_online: Callable[[SourcedTier, Paths], ModelRef] | None = None


def has_config(model: ModelRef) -> bool:
    """An MLX model directory is there when its ``config.json`` is."""
    return (model.directory / "config.json").is_file()


# Conversions (GGUF to MLX, local quantization) run one at a time in a process: prepares
# run as background jobs, and MLX compute plus the lazy transformers/mlx_lm imports they
# need are not safe from two threads at once (seen here: an ImportError from a half-done
# ``transformers`` import, and an abort inside MLX). Downloads still run concurrently.
CONVERSIONS = threading.Lock()
