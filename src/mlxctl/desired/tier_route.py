"""What the gateway must know of a tier to respect it: its capacity, its context, its key.

- **Capacity** (``Route.max_concurrency``): the requests the tier's server takes at once.
  vllm-mlx without ``--continuous-batching`` runs its "simple engine", which serves ONE
  generation and answers any other at once with 503 ``text_generation_busy``: its
  capacity is 1, whatever ``concurrency`` says. With continuous batching it takes
  ``concurrency`` sequences (``--max-num-seqs``; its own default is 256, so an unwritten
  ``concurrency`` is taken as the 4 mlxctl always sent). mlx_lm.server queues what it
  cannot decode at once in its own generation thread, so it gets ``max(4,
  concurrency)``: enough to keep it batching, never a burst past its listen backlog of 5.
- **Context** (``Route.context``): the stack's ``context``, else the model config's
  ``max_position_embeddings`` (read bounded, as memory admission reads it).
- **Key** (``Route.key_file``, ``ProbeSpec.key_file``): the file of the tier's own
  secret (:mod:`mlxctl.runtimes.tier_guard`), under the state directory, mode 0600.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlxctl.runtimes.base import ArgValue
from mlxctl.spec.schema import TierSpec

# The capacity mlxctl gave every tier before capacities were derived.
BATCHING_FLOOR = 4
TIER_KEYS_DIR = "tier-keys"


def tier_capacity(spec: TierSpec, args: dict[str, ArgValue] | None = None) -> int:
    """Requests the gateway sends ``spec``'s server at once (see the module doc)."""
    args = dict(spec.args) if args is None else args
    if spec.runtime == "vllm-mlx":
        if not args.get("continuous-batching"):
            return 1
        seqs = args.get("max-num-seqs")
        if isinstance(seqs, int) and not isinstance(seqs, bool) and seqs > 0:
            return seqs
        return spec.concurrency if "concurrency" in spec.model_fields_set else BATCHING_FLOOR
    return max(BATCHING_FLOOR, spec.concurrency)


def tier_context(spec: TierSpec, model_dir: Path | None) -> int | None:
    """Tokens of context ``spec``'s tier serves, when the stack or its model says."""
    if spec.context is not None:
        return spec.context
    if model_dir is None:
        return None
    from mlxctl.capacity.model_dir import read_model_config
    from mlxctl.errors import MlxctlError

    try:
        config = read_model_config(model_dir)
    except (OSError, ValueError, MlxctlError):
        return None
    text = config.get("text_config")
    value = config.get("max_position_embeddings")
    if value is None and isinstance(text, dict):
        value = text.get("max_position_embeddings")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**40:
        return value
    return None


def tier_key_path(state_dir: Path, tier: str) -> Path:
    """Where tier ``tier``'s own secret is kept (mode 0600, created at its launch)."""
    return state_dir / TIER_KEYS_DIR / f"{tier}.key"


def launch_facts(capacity: int, context: int | None, key_file: str) -> dict[str, Any]:
    """What a tier's record keeps of its route (``launch``), for the gateway routes of a
    tier another stack owns (rebuilt from the inventory)."""
    facts: dict[str, Any] = {"capacity": capacity}
    if context is not None:
        facts["context"] = context
    if key_file:
        facts["keyFile"] = key_file  # a path, no secret: the probes send its key
    return facts


def recorded_route_facts(launch: Mapping[str, Any], runtime: str) -> dict[str, Any]:
    """``Route`` fields from a tier record's ``launch`` (see :func:`launch_facts`); a
    record written before they were kept gives what its server was launched with."""
    facts: dict[str, Any] = {"runtime": runtime}
    capacity = launch.get("capacity")
    if isinstance(capacity, int) and capacity > 0:
        facts["max_concurrency"] = capacity
    context = launch.get("context")
    if isinstance(context, int) and context > 0:
        facts["context"] = context
    key_file = launch.get("keyFile")
    if isinstance(key_file, str) and key_file:
        facts["key_file"] = key_file
    return facts
