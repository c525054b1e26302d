"""The names shell completion offers: read from files, never asked of the controller.

A completion runs on every Tab press, so it must be quick and never block: it reads
the stack files (each one alone, so one invalid file, say half-way through an edit,
hides only its own tiers) and the catalog shipped with mlxctl, and never connects to
the admin socket or the network. Whatever cannot be read completes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def tier_names(targets: Sequence[Path]) -> list[str]:
    """The tiers the stack files under ``targets`` declare, in file order (no duplicates);
    files that cannot be read or do not validate are skipped."""
    from mlxctl.errors import MlxctlError
    from mlxctl.spec.loader import load_stack_set, stack_files

    names: dict[str, None] = {}
    try:
        files = stack_files(targets)
    except MlxctlError:
        return []
    for file in files:
        try:
            stack = load_stack_set([file])
        except (MlxctlError, OSError, ValueError):
            continue
        names.update((t.spec.name, None) for t in stack.tiers)
    return list(names)


def catalog_ids() -> list[str]:
    """The ids of the catalog shipped with mlxctl (``catalog show``)."""
    from mlxctl.catalog.entries import load_catalog
    from mlxctl.errors import MlxctlError

    try:
        return list(load_catalog().ids)
    except (MlxctlError, OSError, ValueError):
        return []


def event_kinds() -> list[str]:
    """What ``events --kind`` takes, signal names aside."""
    from mlxctl.app.ops import EVENT_KINDS, EXIT_WORDS
    from mlxctl.machine.record import EXIT_KINDS

    return list(dict.fromkeys((*EVENT_KINDS, *EXIT_KINDS, *EXIT_WORDS)))
