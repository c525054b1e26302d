"""Shell completion: ``mlxctl completion bash|zsh|fish`` prints the script, and the
callbacks that complete tier names, catalog ids and event kinds.

The script is click's own (``click.shell_completion``): the shell calls the ``mlxctl``
console script back with ``_MLXCTL_COMPLETE=<shell>_complete`` and the words typed so
far, and click answers from the command tree (commands, options, choices, files) and
from the ``shell_complete`` callbacks here. Those read stack files only (the command's
own PATH and ``-f`` files when typed, else the stack directory), never the controller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem, get_completion_class

from mlxctl.cli.common import paths
from mlxctl.errors import ExitCode

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_MLXCTL_COMPLETE"


def _targets(ctx: click.Context) -> list[Path]:
    """The stack files the command line names so far, else the stack directory."""
    files = [Path(f) for f in ctx.params.get("files") or ()]
    path = ctx.params.get("path")
    if files:
        return files
    if path is not None:
        return [Path(path)]
    return [paths().stacks]


def _items(names: list[str], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_tiers(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Tier names from the stack files."""
    from mlxctl.app.completion import tier_names

    return _items(tier_names(_targets(ctx)), incomplete)


def complete_services(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Tier names and ``gateway`` (``logs``)."""
    from mlxctl.app.completion import tier_names

    return _items([*tier_names(_targets(ctx)), "gateway"], incomplete)


def complete_catalog_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from mlxctl.app.completion import catalog_ids

    return _items(catalog_ids(), incomplete)


def complete_event_kinds(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from mlxctl.app.completion import event_kinds

    return _items(event_kinds(), incomplete)


def script(shell: str) -> str:
    """The completion script for ``shell``, as click writes it for ``mlxctl``."""
    from mlxctl.cli.root import app

    cls = get_completion_class(shell)
    assert cls is not None, shell
    return cls(app, {}, "mlxctl", COMPLETE_VAR).source()


def completion(shell: str) -> int:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    Completes commands, options, choices and files, and reads tier names (and catalog
    ids) from your stack files; it never asks the controller.

    \b
    Install it once:
      bash  echo 'eval "$(mlxctl completion bash)"' >> ~/.bashrc
      zsh   echo 'eval "$(mlxctl completion zsh)"' >> ~/.zshrc
      fish  mlxctl completion fish > ~/.config/fish/completions/mlxctl.fish
    """
    text = script(shell)
    click.echo(text, nl=not text.endswith("\n"))
    return int(ExitCode.OK)


def register(app: click.Group) -> None:
    app.command("completion")(click.argument("shell", type=click.Choice(SHELLS))(completion))
