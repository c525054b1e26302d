"""The ``mlxctl`` click group every command module registers on."""

from __future__ import annotations

import click

from mlxctl import __version__


@click.group(
    name="mlxctl",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="mlxctl")
@click.option(
    "--host",
    metavar="NAME",
    default=None,
    help="This machine's name among the stack's spec.hosts (default: $MLXCTL_HOST, "
    "else the short hostname). See docs/multi-host.md.",
)
def app(host: str | None) -> None:
    """Declarative controller for local LLM model servers (mlx-lm, vllm-mlx) behind a
    LiteLLM gateway."""
    if host:
        from mlxctl.app.hosts import name_this_machine

        name_this_machine(host)
