"""``mlxctl init``: write a stack file for this machine, with every choice explained."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlxctl.cli.catalog_cmd import _detect, _load_catalog
from mlxctl.cli.common import err
from mlxctl.errors import ExitCode, MlxctlError

if TYPE_CHECKING:
    from mlxctl.capacity.hardware import HardwareProfile
    from mlxctl.catalog.entries import Catalog

    CatalogLoader = Callable[[], Catalog]
    Detector = Callable[[], HardwareProfile]

# The choices of ``--intent``; ``mlxctl.capacity.init_stack.INTENTS`` (not imported at start-up).
INTENTS = ("balanced", "agents", "coding")


def parse_budget(text: str | None) -> float | str | None:
    """``0.6`` -> a share; ``18GB`` -> an absolute size (validated later)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text.strip()


def register(
    app: click.Group,
    *,
    load: CatalogLoader = _load_catalog,
    detect: Detector = _detect,
) -> None:
    """Add ``init`` to ``app`` (its modules load when it runs)."""

    @app.command("init")
    @click.option(
        "--intent",
        type=click.Choice(INTENTS),
        default="balanced",
        show_default=True,
        help="What the tiers are for.",
    )
    @click.option(
        "--budget",
        default=None,
        help="Memory budget: a share of memory (0.6) or a size (18GB); "
        "default: all but max(4 GiB, 25%).",
    )
    @click.option(
        "--memory",
        type=click.FloatRange(min=1),
        default=None,
        help="Plan for a Mac with this much memory in GB, as Apple counts "
        "(24 = 24 GiB), instead of this machine.",
    )
    @click.option(
        "--output",
        "-o",
        type=click.Path(path_type=Path),
        default=None,
        help="Write the stack here (default: print it).",
    )
    @click.option("--force", is_flag=True, default=False, help="Overwrite --output if it exists.")
    def init(
        intent: str, budget: str | None, memory: float | None, output: Path | None, force: bool
    ) -> None:
        """Choose tiers for this machine (or --memory) and write a commented stack file."""
        from mlxctl.capacity.init_stack import generate_stack, render_stack_yaml

        if output is not None and output.exists() and not force:
            raise MlxctlError(
                f"{output} exists; pass --force to overwrite it", exit_code=ExitCode.USAGE
            )
        machine: HardwareProfile | float
        if memory is not None:
            machine = memory
        else:
            try:
                machine = detect()
            except OSError as exc:
                raise MlxctlError(
                    f"cannot detect the hardware: {exc}", exit_code=ExitCode.APPLY_FAILED
                ) from exc
        catalog = load()
        measured = None
        if not isinstance(machine, float | int):
            from mlxctl.app.bench import speeds_here
            from mlxctl.cli.common import paths

            measured, skipped = speeds_here(paths(), catalog, machine.profile_id)
            for line in skipped:
                err(f"warning: bench result skipped: {line}")
        generated = generate_stack(
            machine, intent, parse_budget(budget), catalog=catalog, measured_here=measured
        )
        text = render_stack_yaml(generated)
        if output is None:
            click.echo(text, nl=False)
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        tiers = generated.stack["spec"]["tiers"]
        summary = ", ".join(f"{t['name']}={t['model']} {t['quant']}" for t in tiers)
        err(f"wrote {output}: {summary} ({generated.explanations.header[2]})")
