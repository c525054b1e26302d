"""``mlxctl chat``: a conversation with a tier through the gateway, like ``ollama run``.

The loop (:func:`converse`) knows nothing of terminals or HTTP: it reads lines from a
:class:`Lines` and streams answers from an :class:`Answers`, so tests drive it with
lists. The terminal side (prompt_toolkit) and the gateway side (the ``openai`` SDK)
are the two adapters below it.

- The conversation is kept: each question is sent with every earlier turn.
- ``\"\"\"`` opens a multi-line message, closed by a line ending in ``\"\"\"`` (as in Ollama).
- ``/model TIER`` switches tier and keeps the conversation; ``/clear`` forgets it;
  ``/bye`` ends; ``/?`` lists the commands.
- Ctrl-D or Ctrl-C at the prompt ends the chat (exit 0); Ctrl-C while an answer
  streams stops that answer only (what was received stays in the conversation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

PROMPT = ">>> "
CONTINUATION = "... "
FENCE = '"""'
HELP = (
    "commands:\n"
    "  /model TIER   switch to another tier (the conversation is kept)\n"
    "  /clear        forget the conversation\n"
    "  /bye          leave (so do Ctrl-D and Ctrl-C at the prompt)\n"
    '  """           start a multi-line message; end it with a line ending in """\n'
    "  Ctrl-C while an answer streams stops that answer"
)


class ChatError(Exception):
    """A request that failed (the gateway's message, in one line)."""


class Lines(Protocol):
    def read(self, prompt: str) -> str:
        """One line; EOFError on Ctrl-D, KeyboardInterrupt on Ctrl-C."""


class Answers(Protocol):
    def stream(self, model: str, messages: list[dict[str, str]]) -> Iterator[str]:
        """The answer's text, piece by piece; ChatError when the request fails."""


@dataclass
class Conversation:
    model: str
    messages: list[dict[str, str]] = field(default_factory=list)


def read_message(lines: Lines) -> str:
    """One message: a line, or a ``\"\"\"`` block over several lines (without the fences)."""
    first = lines.read(PROMPT)
    if not first.lstrip().startswith(FENCE):
        return first.strip()
    body = first.lstrip()[len(FENCE) :]
    if body.rstrip().endswith(FENCE):
        return body.rstrip()[: -len(FENCE)].strip()
    parts = [body]
    while True:
        line = lines.read(CONTINUATION)
        if line.rstrip().endswith(FENCE):
            parts.append(line.rstrip()[: -len(FENCE)])
            return "\n".join(parts).strip()
        parts.append(line)


def answer(answers: Answers, chat: Conversation, out: Callable[[str], None]) -> tuple[str, bool]:
    """Stream one answer to ``out``; (its text, whether it was stopped by Ctrl-C)."""
    pieces: list[str] = []
    try:
        for piece in answers.stream(chat.model, chat.messages):
            pieces.append(piece)
            out(piece)
    except KeyboardInterrupt:
        return "".join(pieces), True
    return "".join(pieces), False


def converse(
    lines: Lines,
    answers: Answers,
    chat: Conversation,
    out: Callable[[str], None],
    note: Callable[[str], None],
    check_model: Callable[[str], str],
) -> int:
    """The interactive loop; returns the exit code (0: the user left)."""
    note(f"chatting with '{chat.model}' through the gateway; /? for help, /bye to leave")
    while True:
        try:
            text = read_message(lines)
        except (EOFError, KeyboardInterrupt):
            out("\n")
            return 0
        if not text:
            continue
        if text.startswith("/"):
            word, _, rest = text.partition(" ")
            if word in ("/bye", "/exit", "/quit"):
                return 0
            if word in ("/?", "/help"):
                note(HELP)
            elif word == "/clear":
                chat.messages.clear()
                note("conversation cleared")
            elif word == "/model":
                _switch(chat, rest.strip(), note, check_model)
            else:
                note(f"unknown command {word}; /? lists them")
            continue
        chat.messages.append({"role": "user", "content": text})
        try:
            reply, stopped = answer(answers, chat, out)
        except ChatError as exc:
            chat.messages.pop()
            out("\n")
            note(f"error: {exc}")
            continue
        out("\n")
        if stopped:
            note("(answer stopped)")
        if reply:
            chat.messages.append({"role": "assistant", "content": reply})
        else:
            chat.messages.pop()  # nothing came back: the question is not part of it


def _switch(
    chat: Conversation, name: str, note: Callable[[str], None], check: Callable[[str], str]
) -> None:
    if not name:
        note(f"current tier: '{chat.model}'; /model TIER switches")
        return
    try:
        chat.model = check(name)
    except Exception as exc:
        note(f"error: {exc}")
        return
    note(f"now chatting with '{chat.model}'")


# --- adapters ----------------------------------------------------------------------


class GatewayAnswers:
    """Answers from the gateway, with the ``openai`` SDK (streamed)."""

    def __init__(self, base_url: str, key: str, max_tokens: int | None = None) -> None:
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
        self.max_tokens = max_tokens

    def stream(self, model: str, messages: list[dict[str, str]]) -> Iterator[str]:
        import openai

        try:
            response = self.client.chat.completions.create(
                model=model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
                max_tokens=self.max_tokens if self.max_tokens else openai.omit,
            )
        except openai.APIError as exc:
            raise ChatError(_message(exc)) from None
        try:
            for chunk in response:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content
        except openai.APIError as exc:
            raise ChatError(_message(exc)) from None
        finally:
            response.close()  # Ctrl-C: the gateway sees the client leave, the tier stops


def _message(exc: Exception) -> str:
    import openai

    if isinstance(exc, openai.APIConnectionError):
        url = getattr(getattr(exc, "request", None), "url", "")
        return f"cannot reach the gateway at {url}: is it running? (mlxctl status)"
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return " ".join(str(exc).split())[:300]


class TerminalLines:
    """Lines from the terminal with prompt_toolkit: editing, history (up arrow) and a hint."""

    def __init__(self) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import InMemoryHistory

        self.session: PromptSession[str] = PromptSession(history=InMemoryHistory())

    def read(self, prompt: str) -> str:
        hint = "Send a message (/? for help)" if prompt == PROMPT else ""
        return self.session.prompt(prompt, placeholder=hint)


class ReadlineLines:
    """Lines from the terminal with the standard library's ``readline`` (editing and
    history through ``input()``), where prompt_toolkit is not installed."""

    def __init__(self) -> None:
        import contextlib

        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - importing it gives input() line editing

    def read(self, prompt: str) -> str:
        return input(prompt)


def terminal_lines() -> Lines:
    """prompt_toolkit's line editor when it is installed, else ``readline``."""
    try:
        return TerminalLines()
    except ImportError:
        return ReadlineLines()
