"""Answers name the model the client asked for.

The fast path sends a tier its own served name (``default_model`` for mlx-lm) and
relays the answer, so without this a client that asked for ``fast`` or for an alias
such as ``gpt-4o-mini`` would read ``"model": "default_model"`` back. A client may
check that name, log it or key a cache on it: it gets the name it sent.

Only the top-level ``model`` of a JSON object is replaced (or, when it has none, that
of its ``message`` or ``response`` object: Anthropic's ``message_start`` and the
Responses API's ``response.*`` events); everything else of the
answer (tool calls, reasoning fields, usage) is kept. A body that is not such an
object (an error, ``[DONE]``, anything unexpected) passes unchanged. A stream is
rewritten event by event: a read may end anywhere in an event, so the incomplete
tail waits for the rest of its event, and every complete event goes out at once.
"""

from __future__ import annotations

import json
import re

# An SSE event ends with a blank line; the backends here write "\n\n", the spec also
# allows CRLF line ends.
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_DATA = b"data:"


def renamed(body: bytes, model: str) -> bytes:
    """``body`` with its ``"model"`` set to ``model``, if it is a JSON object with one
    (at its top, else in its ``message`` or ``response`` object)."""
    try:
        data = json.loads(body)
    except ValueError:  # also UnicodeDecodeError
        return body
    if not isinstance(data, dict):
        return body
    target = data
    if "model" not in data:
        # Anthropic's message_start and the Responses API's response.* events carry it
        # one level down.
        inner = data.get("message") or data.get("response")
        if not isinstance(inner, dict) or "model" not in inner:
            return body
        target = inner
    if target["model"] == model:
        return body
    target["model"] = model
    return json.dumps(data, separators=(",", ":")).encode()


def renamed_event(event: bytes, model: str) -> bytes:
    """One SSE event (without its blank line) with the model of its JSON ``data`` renamed.

    Events of several ``data:`` lines (one value spread over lines) are not what the
    OpenAI-compatible servers send; they pass unchanged, like comments and ``[DONE]``.
    """
    lines = event.splitlines(keepends=True)
    data = [i for i, line in enumerate(lines) if line.startswith(_DATA)]
    if len(data) != 1:
        return event
    i = data[0]
    line = lines[i]
    body = line[len(_DATA) :]
    end = len(body.rstrip(b"\r\n"))
    payload, eol = body[:end], body[end:]
    space = b" " if payload.startswith(b" ") else b""
    payload = payload[len(space) :]
    if not payload.startswith(b"{"):
        return event
    lines[i] = _DATA + space + renamed(payload, model) + eol
    return b"".join(lines)


class StreamRenamer:
    """Renames the model in each event of a server-sent-event stream, read in any pieces."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events ``chunk`` finishes, renamed; an incomplete tail is kept."""
        buffer = self._tail + chunk if self._tail else chunk
        out: list[bytes] = []
        start = 0
        for end in _EVENT_END.finditer(buffer):
            out.append(renamed_event(buffer[start : end.start()], self.model))
            out.append(end.group())
            start = end.end()
        self._tail = buffer[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left when the stream ends: an event without its blank line, renamed."""
        tail, self._tail = self._tail, b""
        return renamed_event(tail, self.model) if tail.strip() else tail
