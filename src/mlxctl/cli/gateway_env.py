"""``mlxctl gateway env --client claude|codex|opencode|openai``: a client's settings."""

from __future__ import annotations

from pathlib import Path

import click

from mlxctl.cli.common import err, load_selected, paths, stack_selection, targets
from mlxctl.cli.completion import complete_tiers
from mlxctl.errors import ExitCode


def gateway_env(
    client: str,
    model: str | None = None,
    path: Path | None = None,
    files: tuple[Path, ...] = (),
) -> int:
    """Print what CLIENT needs to use the gateway (settings on stdout, where they go on
    stderr): environment variables for openai and claude, a config snippet for codex
    (config.toml) and opencode (opencode.json). The key is referenced, never printed."""
    from mlxctl.app.client_env import render

    stack = load_selected(targets(path, files))
    settings = render(client, stack, paths().state, model)
    print(settings.text, end="")
    err(settings.hint)
    return int(ExitCode.OK)


# The clients ``mlxctl.app.client_env`` renders settings for (a test keeps the two in
# step): named here so that registering the command imports none of the core.
CLIENTS = ("openai", "claude", "codex", "opencode")


def register(group: click.Group) -> None:
    command = click.option(
        "--client", required=True, type=click.Choice(CLIENTS), help="The client to configure."
    )(
        click.option(
            "--model",
            default=None,
            help="A tier or alias (default: the first tier).",
            shell_complete=complete_tiers,
        )(gateway_env)
    )
    group.command("env")(stack_selection(command))
