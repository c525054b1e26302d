"""Answers carry the model name the client asked for, whatever pieces a stream arrives in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlxctl.gateway.answers import StreamRenamer, renamed, renamed_event

# What mlx_lm.server writes (json.dumps with its default separators), one event per chunk.
CHUNKS = [
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "default_model",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": word}}],
    }
    for word in ("Hé", " there", ' "model": "default_model"')
]
ERROR = {"error": {"message": "the tier stopped mid-stream", "code": "backend_error"}}


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n"
        for e in events
    )


def parsed(stream: bytes) -> list[Any]:
    """The data of each event; every event must end with a blank line."""
    assert stream.endswith(b"\n\n")
    events = stream[:-2].split(b"\n\n")
    out: list[Any] = []
    for event in events:
        assert event.startswith(b"data: "), event
        data = event[len(b"data: ") :]
        out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def expected(model: str) -> list[Any]:
    return [{**c, "model": model} for c in CHUNKS] + [ERROR, "[DONE]"]


def test_a_json_answer_gets_the_clients_model_and_keeps_everything_else() -> None:
    answer = {
        "id": "x",
        "model": "default_model",
        "choices": [{"message": {"content": "ünïcode \"model\": 'x'", "tool_calls": []}}],
        "usage": {"prompt_tokens": 3},
    }
    out = json.loads(renamed(json.dumps(answer).encode(), "gpt-4o-mini"))
    assert out == {**answer, "model": "gpt-4o-mini"}
    assert list(out) == list(answer)  # the fields keep their order


@pytest.mark.parametrize(
    "body", [b"not json", b"[1, 2]", b'{"error": {"message": "no"}}', b"\xff\xfe", b""]
)
def test_what_is_not_an_answer_with_a_model_passes_unchanged(body: bytes) -> None:
    assert renamed(body, "fast") is body


def test_an_answer_already_named_so_is_not_rewritten() -> None:
    body = b'{"model": "fast",  "choices": []}'
    assert renamed(body, "fast") is body


def test_a_stream_read_in_one_piece_is_renamed_event_by_event() -> None:
    stream = sse(*CHUNKS, ERROR, "[DONE]")
    renamer = StreamRenamer("fast")
    assert parsed(renamer.feed(stream) + renamer.flush()) == expected("fast")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 50, 101])
def test_a_stream_split_anywhere_gives_the_same_events(size: int) -> None:
    stream = sse(*CHUNKS, ERROR, "[DONE]")
    renamer = StreamRenamer("gpt-4o-mini")
    out = b"".join(renamer.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    assert parsed(out + renamer.flush()) == expected("gpt-4o-mini")


def test_a_complete_event_goes_out_at_once_and_an_incomplete_one_waits() -> None:
    first, second = sse(CHUNKS[0]), sse(CHUNKS[1])
    renamer = StreamRenamer("fast")
    # The first event and half of the second arrive together: the first goes out now.
    out = renamer.feed(first + second[:20])
    assert parsed(out) == [{**CHUNKS[0], "model": "fast"}]
    # The blank line of the second arrives alone: the second goes out with it.
    assert renamer.feed(second[20:-1]) == b""
    assert parsed(renamer.feed(second[-1:])) == [{**CHUNKS[1], "model": "fast"}]
    assert renamer.flush() == b""


def test_done_and_error_events_pass_byte_for_byte() -> None:
    for event in (sse("[DONE]"), sse(ERROR), b": keep-alive comment\n\n"):
        renamer = StreamRenamer("fast")
        assert renamer.feed(event) == event


def test_crlf_events_and_event_fields_are_kept() -> None:
    event = b'event: message\r\nid: 7\r\ndata: {"model": "default_model", "x": 1}\r\n\r\n'
    renamer = StreamRenamer("fast")
    out = renamer.feed(event[:30]) + renamer.feed(event[30:])
    assert out == b'event: message\r\nid: 7\r\ndata: {"model":"fast","x":1}\r\n\r\n'


def test_an_event_without_its_blank_line_at_the_end_of_the_stream_is_still_renamed() -> None:
    renamer = StreamRenamer("fast")
    assert renamer.feed(b'data: {"model": "default_model"}\n') == b""
    assert renamer.flush() == b'data: {"model":"fast"}\n'


def test_an_event_of_several_data_lines_passes_unchanged() -> None:
    event = b'data: {"model":\ndata: "default_model"}'
    assert renamed_event(event, "fast") == event
