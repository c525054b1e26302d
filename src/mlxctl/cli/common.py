"""Options and helpers shared by the commands."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from mlxctl.paths import Paths, default_paths


class Output(StrEnum):
    text = "text"
    json = "json"


PathArg = Annotated[
    Path | None,
    typer.Argument(
        help="Stack file or directory (default: ~/.config/mlxctl/stacks, "
        "or $MLXCTL_HOME/config/stacks)."
    ),
]
FileOpt = Annotated[
    list[Path] | None,
    typer.Option("--file", "-f", help="A stack file to read (repeatable); replaces PATH."),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="text or json.")]


def paths() -> Paths:
    return default_paths()


def targets(path: Path | None, files: list[Path] | None) -> list[Path]:
    if files:
        return list(files)
    if path is not None:
        return [path]
    default = paths().stacks
    return [default] if default.exists() else []


def emit_json(record: dict[str, Any] | list[Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
