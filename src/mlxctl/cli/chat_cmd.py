"""``mlxctl chat TIER [PROMPT]``: one answer, or an interactive chat, through the gateway."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlxctl.cli.common import err, files_option, load_selected, paths, targets
from mlxctl.cli.completion import complete_tiers
from mlxctl.errors import ExitCode, MlxctlError


def chat(
    tier: str,
    prompt: tuple[str, ...] = (),
    files: tuple[Path, ...] = (),
    max_tokens: int | None = None,
) -> int:
    """Chat with TIER through the gateway. With PROMPT: print one streamed answer.
    Without: an interactive chat (history kept; \"\"\" for multi-line messages;
    /model TIER switches tier; /bye, Ctrl-D or Ctrl-C leave; Ctrl-C during an answer
    stops that answer). Piped input without PROMPT is sent as one message.
    """
    from mlxctl.app import chat as use_case
    from mlxctl.app.gateway_client import check_model, client_settings

    stack = load_selected(targets(None, files))
    check_model(stack, tier)
    base_url, key = client_settings(paths(), stack)
    answers = use_case.GatewayAnswers(base_url, key, max_tokens)
    conversation = use_case.Conversation(tier)

    def out(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if not prompt and not sys.stdin.isatty():
        prompt = (sys.stdin.read(),)
    if prompt:
        conversation.messages.append({"role": "user", "content": " ".join(prompt)})
        try:
            _, stopped = use_case.answer(answers, conversation, out)
        except use_case.ChatError as exc:
            raise MlxctlError(str(exc)) from None
        out("\n")
        return int(ExitCode.INTERRUPTED if stopped else ExitCode.OK)
    return use_case.converse(
        use_case.terminal_lines(), answers, conversation, out, err,
        lambda name: check_model(stack, name),
    )  # fmt: skip


def register(app: click.Group) -> None:
    command = click.option(
        "--max-tokens",
        type=click.IntRange(min=1),
        default=None,
        help="Cap each answer's length (tokens).",
    )(chat)
    command = files_option("A stack file to read (repeatable; default: your stacks directory).")(
        command
    )
    command = click.argument("prompt", nargs=-1)(command)
    app.command("chat")(click.argument("tier", shell_complete=complete_tiers)(command))
