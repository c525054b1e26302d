"""``mlxctl init``: write a stack file for this machine, with every choice explained."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mlxctl.cli.catalog_cmd import _detect, _load_catalog
from mlxctl.cli.common import err
from mlxctl.errors import ExitCode, MlxctlError

if TYPE_CHECKING:
    from mlxctl.catalog import Catalog
    from mlxctl.hardware import HardwareProfile

    CatalogLoader = Callable[[], Catalog]
    Detector = Callable[[], HardwareProfile]


class IntentOpt(StrEnum):
    balanced = "balanced"
    agents = "agents"
    coding = "coding"


def parse_budget(text: str | None) -> float | str | None:
    """``0.6`` -> a share; ``18GB`` -> an absolute size (validated later)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text.strip()


def register(
    app: typer.Typer,
    *,
    load: CatalogLoader = _load_catalog,
    detect: Detector = _detect,
) -> None:
    """Add ``init`` to ``app`` (its modules load when it runs)."""

    @app.command("init")
    def init(
        intent: Annotated[
            IntentOpt, typer.Option(help="What the tiers are for.")
        ] = IntentOpt.balanced,
        budget: Annotated[
            str | None,
            typer.Option(
                help="Memory budget: a share of memory (0.6) or a size (18GB); "
                "default: all but max(4 GiB, 25%)."
            ),
        ] = None,
        memory: Annotated[
            float | None,
            typer.Option(
                "--memory",
                min=1,
                help="Plan for a Mac with this much memory in GB, as Apple counts "
                "(24 = 24 GiB), instead of this machine.",
            ),
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option("--output", "-o", help="Write the stack here (default: print it)."),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite --output if it exists.")
        ] = False,
    ) -> None:
        """Choose tiers for this machine (or --memory) and write a commented stack file."""
        from mlxctl.init_stack import generate_stack, render_stack_yaml

        try:
            if output is not None and output.exists() and not force:
                raise MlxctlError(
                    f"{output} exists; pass --force to overwrite it", exit_code=ExitCode.USAGE
                )
            machine: HardwareProfile | float = memory if memory is not None else detect()
            generated = generate_stack(machine, intent.value, parse_budget(budget), catalog=load())
            text = render_stack_yaml(generated)
        except MlxctlError as exc:
            err(f"error: {exc}")
            raise typer.Exit(code=int(exc.exit_code)) from None
        except OSError as exc:
            err(f"error: cannot detect the hardware: {exc}")
            raise typer.Exit(code=int(ExitCode.APPLY_FAILED)) from None
        if output is None:
            typer.echo(text, nl=False)
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        tiers = generated.stack["spec"]["tiers"]
        summary = ", ".join(f"{t['name']}={t['model']} {t['quant']}" for t in tiers)
        err(f"wrote {output}: {summary} ({generated.explanations.header[2]})")
