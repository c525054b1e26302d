"""The chat loop with fake I/O: lines in (or Ctrl-D / Ctrl-C), streamed answers out."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mlxctl.app.chat import (
    CONTINUATION,
    PROMPT,
    ChatError,
    Conversation,
    answer,
    converse,
    read_message,
)
from mlxctl.errors import NotFoundError

Item = str | type[BaseException]


class FakeLines:
    def __init__(self, items: list[Item]) -> None:
        self.items = list(items)
        self.prompts: list[str] = []

    def read(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.items:
            raise EOFError
        item = self.items.pop(0)
        if isinstance(item, type):
            raise item()
        return item


class FakeAnswers:
    """Answers ``reply`` piece by piece; ``interrupt_after`` pieces then Ctrl-C; ``fail``."""

    def __init__(
        self, reply: str = "Paris.", interrupt_after: int | None = None, fail: str = ""
    ) -> None:
        self.reply, self.interrupt_after, self.fail = reply, interrupt_after, fail
        self.calls: list[tuple[str, list[dict[str, str]]]] = []

    def stream(self, model: str, messages: list[dict[str, str]]) -> Iterator[str]:
        self.calls.append((model, [dict(m) for m in messages]))
        if self.fail:
            raise ChatError(self.fail)
        for i, piece in enumerate(self.reply.split(" ")):
            if self.interrupt_after is not None and i == self.interrupt_after:
                raise KeyboardInterrupt
            yield piece + " "


@dataclass
class Run:
    code: int
    chat: Conversation
    out: list[str]
    notes: list[str]
    fake: FakeAnswers
    lines: FakeLines


def run(items: list[Item], answers: FakeAnswers | None = None, model: str = "fast") -> Run:
    lines, fake = FakeLines(items), answers or FakeAnswers()
    out: list[str] = []
    notes: list[str] = []
    chat = Conversation(model)

    def check(name: str) -> str:
        if name not in ("fast", "other"):
            raise NotFoundError(f"'{name}' is not a tier or alias here; tiers: fast, other")
        return name

    code = converse(lines, fake, chat, out.append, notes.append, check)
    return Run(code, chat, out, notes, fake, lines)


def test_each_question_is_sent_with_the_whole_conversation() -> None:
    r = run(["What is the capital of France?", "And Italy?"])
    assert r.code == 0
    assert [len(messages) for _, messages in r.fake.calls] == [1, 3]
    assert r.fake.calls[1][1][1] == {"role": "assistant", "content": "Paris. "}
    assert r.chat.messages[-1]["role"] == "assistant" and len(r.chat.messages) == 4
    assert "Paris. " in r.out and r.lines.prompts[0] == PROMPT


@pytest.mark.parametrize("leave", [EOFError, KeyboardInterrupt, "/bye"])
def test_ctrl_d_ctrl_c_and_bye_at_the_prompt_leave_with_0(leave: Item) -> None:
    r = run(["Hi", leave, "never read"])
    assert r.code == 0 and len(r.fake.calls) == 1


def test_ctrl_c_during_an_answer_stops_that_answer_only() -> None:
    answers = FakeAnswers("one two three four", interrupt_after=2)
    r = run(["Count", "Again"], answers)
    assert r.code == 0 and len(r.fake.calls) == 2  # the chat went on
    assert "(answer stopped)" in r.notes
    # What came before the stop stays in the conversation.
    assert r.fake.calls[1][1][1] == {"role": "assistant", "content": "one two "}


def test_a_multi_line_message_between_triple_quotes() -> None:
    r = run(['"""first line', "second line", 'third"""'])
    assert r.fake.calls[0][1][0]["content"] == "first line\nsecond line\nthird"
    assert r.lines.prompts[:3] == [PROMPT, CONTINUATION, CONTINUATION]


@pytest.mark.parametrize(
    ("first", "expected"),
    [('"""one line"""', "one line"), ("  plain  ", "plain"), ('"""\n', None)],
)
def test_read_message_forms(first: str, expected: str | None) -> None:
    lines = FakeLines([first, 'end"""'])
    assert read_message(lines) == (expected if expected is not None else "end")


def test_model_switches_tier_and_keeps_the_conversation() -> None:
    r = run(["Hi", "/model other", "Still there?"])
    assert [model for model, _ in r.fake.calls] == ["fast", "other"]
    assert len(r.fake.calls[1][1]) == 3 and r.chat.model == "other"
    assert "now chatting with 'other'" in r.notes


def test_an_unknown_tier_keeps_the_current_one() -> None:
    r = run(["/model nope", "/model"])
    assert r.chat.model == "fast"
    assert any("'nope' is not a tier" in n for n in r.notes)
    assert any("current tier: 'fast'" in n for n in r.notes)


def test_clear_help_unknown_commands_and_empty_lines_send_nothing() -> None:
    r = run(["Hi", "/clear", "/?", "/nope", "", "Again"])
    assert [len(m) for _, m in r.fake.calls] == [1, 1]  # cleared before the second question
    assert "conversation cleared" in r.notes
    assert any("/model TIER" in n for n in r.notes) and any(
        "unknown command /nope" in n for n in r.notes
    )
    assert len(r.chat.messages) == 2


def test_a_failed_request_is_reported_and_left_out_of_the_conversation() -> None:
    r = run(["Hi"], FakeAnswers(fail="tier 'fast' is loading"))
    assert r.code == 0 and r.chat.messages == []
    assert "error: tier 'fast' is loading" in r.notes


def test_answer_alone_reports_a_stop() -> None:
    chat = Conversation("fast", [{"role": "user", "content": "x"}])
    out: list[str] = []
    text, stopped = answer(FakeAnswers("a b c", interrupt_after=1), chat, out.append)
    assert (text, stopped, out) == ("a ", True, ["a "])


def test_without_prompt_toolkit_the_chat_falls_back_to_readline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlxctl.app import chat

    monkeypatch.setitem(sys.modules, "prompt_toolkit", None)  # import fails
    lines = chat.terminal_lines()
    assert isinstance(lines, chat.ReadlineLines)
    monkeypatch.setattr("builtins.input", lambda prompt: f"typed at {prompt!r}")
    assert lines.read(PROMPT) == "typed at '>>> '"
