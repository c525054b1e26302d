"""Regenerate the reference stacks: ``uv run python scripts/regenerate_stacks.py``.

Writes ``stacks/mac-<N>gb.yaml`` exactly as ``mlxctl init --memory N`` produces them;
``tests/unit/test_init_stack.py`` fails when the checked-in files differ.
"""

from __future__ import annotations

from pathlib import Path

from mlxctl.capacity.init_stack import reference_stacks
from mlxctl.catalog.entries import load_catalog

STACKS = Path(__file__).resolve().parents[1] / "stacks"

if __name__ == "__main__":
    for name, text in reference_stacks(load_catalog()).items():
        (STACKS / name).write_text(text, encoding="utf-8")
        print(f"wrote stacks/{name}")
