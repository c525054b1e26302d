"""The checks beyond the schema that every command shares: ``validate`` runs them, and
``diff``/``reconcile`` reach the same messages, so a stack ``validate`` accepts is one
``diff`` accepts (one validation path).

The schema (:mod:`mlxctl.spec.schema`) cannot know the catalog; this module can: a
catalog id or a quant that does not exist is an error at its ``file:line:column``
with a "did you mean". An empty file is an error too (``reconcile`` refuses one
unless ``--allow-empty``: a save in progress looks exactly like it).
"""

from __future__ import annotations

from mlxctl.errors import NotFoundError
from mlxctl.spec.stack_set import SourcedTier, StackSet


def _where(tier: SourcedTier, key: str) -> str:
    line, col = tier.keys.get(key, (tier.line, 1))
    return f"{tier.file}:{line}:{col}"


def catalog_problem(tier: SourcedTier) -> str | None:
    """Why a ``model: CATALOG-ID`` (with its ``quant``) does not resolve, or None."""
    from mlxctl.catalog.entries import load_entry, resolve_variant

    if not isinstance(tier.spec.model, str):
        return None
    name = tier.spec.name
    try:
        entry = load_entry(tier.spec.model)
    except NotFoundError as exc:
        return f"{_where(tier, 'model')}: tier '{name}': model: {exc}"
    try:
        resolve_variant(entry, tier.spec.quant)
    except NotFoundError as exc:
        return f"{_where(tier, 'quant')}: tier '{name}': quant: {exc}"
    return None


def stack_problems(stack: StackSet, *, allow_empty: bool = False) -> list[str]:
    """Every problem the schema cannot see, as ``file:line:column: ...`` lines."""
    problems = [p for p in (catalog_problem(t) for t in stack.tiers) if p]
    if not allow_empty:
        problems += [
            f"{path}:1:1: the file is empty: not applied (a save in progress?); delete it to "
            "remove its tiers, or pass --allow-empty"
            for path in stack.empty_files
        ]
    return problems
