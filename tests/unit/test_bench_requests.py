"""One benchmark request over a fake transport: SSE parsing, usage, timing, failures."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from mlxctl.app.bench import Endpoint, one_request, prompt_text

EP = Endpoint("direct", "http://tier", "tier-key", "default_model")


class TickClock:
    """Each reading is 10 ms after the last."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.01
        return self.now

    def time(self) -> float:
        return 1_790_000_000.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def client(status: int, body: bytes, seen: list[httpx.Request]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_a_stream_is_timed_chunk_by_chunk_and_counted_by_its_usage() -> None:
    body = sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},  # no content: not a token
        delta("Par"), delta("is"), delta("."),
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}},
    )  # fmt: skip
    seen: list[httpx.Request] = []
    sample = one_request(client(200, body, seen), EP, "hi", 8, TickClock())
    assert sample.ok and sample.prompt_tokens == 12 and sample.output_tokens == 3
    assert sample.ttft == pytest.approx(0.01) and sample.itl == pytest.approx((0.01, 0.01))
    assert sample.e2e == pytest.approx(0.04)
    sent = json.loads(seen[0].content)
    assert sent["stream"] and sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "default_model" and sent["max_tokens"] == 8
    assert seen[0].headers["Authorization"] == "Bearer tier-key"


def test_without_usage_the_content_chunks_are_counted() -> None:
    sample = one_request(client(200, sse(delta("a"), delta("b")), []), EP, "hi", 8, TickClock())
    assert sample.ok and sample.output_tokens == 2 and sample.prompt_tokens == 0


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (503, b'{"error": {"message": "busy"}}', 'HTTP 503: {"error": {"message": "busy"}}'),
        (200, sse({"error": {"message": "tier crashed"}}), "{'message': 'tier crashed'}"),
        (200, b"data: {not json\n\n", "JSONDecodeError"),
    ],
)
def test_a_failure_is_a_failed_sample_with_its_reason(status: int, body: bytes, error: str) -> None:
    sample = one_request(client(status, body, []), EP, "hi", 8, TickClock())
    assert not sample.ok and error in sample.error


def test_a_refused_connection_is_a_failed_sample() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with httpx.Client(transport=httpx.MockTransport(refuse)) as refusing:
        sample = one_request(refusing, EP, "hi", 8, TickClock())
    assert not sample.ok and sample.error.startswith("ConnectError: Connection refused")


def test_prompts_differ_from_the_first_word_and_have_about_the_asked_length() -> None:
    a, b = prompt_text(100, 0), prompt_text(100, 1)
    assert a.split()[:2] != b.split()[:2]
    assert 95 <= len(a.split()) <= 105
