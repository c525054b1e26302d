"""Error bodies in the style of each API family the gateway speaks.

The gateway's own refusals are OpenAI-style (``{"error": {"message", "type", "param",
"code"}}``: :func:`mlxctl.gateway.app.error`), which is also what the OpenAI
Responses API answers. A client of the Anthropic Messages API reads
``{"type": "error", "error": {"type": "...", "message": "..."}}`` instead, with
Anthropic's error types (``invalid_request_error``, ``authentication_error``,
``not_found_error``, ``request_too_large``, ``rate_limit_error``, ``api_error``,
``overloaded_error``); its SDKs raise on a stream's ``event: error``.

:func:`as_anthropic` rewrites any error answer the shared request path produced (the
gateway's own, a backend's FastAPI ``{"detail": ...}``, plain text) into that shape,
keeping its status and ``Retry-After``; :func:`anthropic_events` does the same for the
in-band error events of a stream whose headers already went out. Unknown paths and
methods get a body of the family their path belongs to (:func:`not_found`,
:func:`method_not_allowed`): under ``/v1/messages`` Anthropic's, elsewhere OpenAI's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from mlxctl.gateway.answers import _EVENT_END

# A response body as Starlette iterates it.
Body = AsyncIterable[str | bytes | memoryview]


def as_bytes(piece: str | bytes | memoryview) -> bytes:
    return (
        piece
        if isinstance(piece, bytes)
        else piece.encode()
        if isinstance(piece, str)
        else bytes(piece)
    )


# Anthropic's error type for each status it documents (others: api_error).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    499: "invalid_request_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_type(status: int) -> str:
    return ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def anthropic_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_type(status), "message": message}}


def anthropic_error(status: int, message: str, *, retry_after: str | None = None) -> JSONResponse:
    """An Anthropic-style error response."""
    response = JSONResponse(anthropic_body(status, message), status_code=status)
    if retry_after:
        response.headers["Retry-After"] = retry_after
    return response


def openai_error(
    status: int,
    message: str,
    *,
    code: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
) -> JSONResponse:
    """An OpenAI-style error response (the Responses API's too)."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def message_of(body: bytes) -> str:
    """The human message of an error body in any of the shapes behind the gateway:
    OpenAI's ``error.message``, Anthropic's ``error.message``, FastAPI's ``detail``
    (a string, a list of validation errors, or vllm-mlx's ``{"error": ..., "message": ...}``),
    else the text itself (clipped)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:500] or "error"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        detail = data.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, dict):
            text = detail.get("message") or detail.get("error")
            if isinstance(text, str):
                return text
        if detail is not None:
            return json.dumps(detail)[:500]
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return json.dumps(data)[:500]


def as_anthropic(response: Response) -> Response:
    """An error answer of the shared path as Anthropic would write it (status and
    ``Retry-After`` kept); a success passes unchanged."""
    if response.status_code < 400 or isinstance(response, StreamingResponse):
        return response
    return anthropic_error(
        response.status_code,
        message_of(bytes(response.body)),
        retry_after=response.headers.get("retry-after"),
    )


def as_openai(response: Response) -> Response:
    """An error answer as an OpenAI-style body (a backend's ``{"detail": ...}`` too)."""
    if response.status_code < 400 or isinstance(response, StreamingResponse):
        return response
    body = bytes(response.body)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return response
    status = response.status_code
    fixed = openai_error(
        status,
        message_of(body),
        code="backend_rejected" if status < 500 else "backend_error",
        type_="invalid_request_error" if status < 500 else "server_error",
    )
    if retry := response.headers.get("retry-after"):
        fixed.headers["Retry-After"] = retry
    return fixed


def anthropic_error_event(status: int, message: str) -> bytes:
    return b"event: error\ndata: " + json.dumps(anthropic_body(status, message)).encode() + b"\n\n"


def openai_error_fields(data: dict[str, Any]) -> tuple[int, str]:
    """The status and message of an OpenAI-style in-band error event's data."""
    err = data.get("error")
    if not isinstance(err, dict):
        return 502, str(err)
    status = err.get("status")
    code = str(err.get("code") or "")
    if not isinstance(status, int):
        status = 504 if code == "timeout" else 502
    return status, str(err.get("message") or code or "error")


async def anthropic_events(stream: Body) -> AsyncIterator[bytes]:
    """A native Messages stream with the gateway's in-band OpenAI-style error events
    (``data: {"error": ...}``, written when a tier breaks mid-stream or a held request
    cannot be served) rewritten as Anthropic's ``event: error``; everything else passes."""
    tail = b""
    async for piece in stream:
        chunk = as_bytes(piece)
        if b'"error"' not in chunk and not tail:
            yield chunk
            continue
        buffer = tail + chunk
        out: list[bytes] = []
        start = 0
        for end in _EVENT_END.finditer(buffer):
            out.append(_anthropic_event(buffer[start : end.start()]) + end.group())
            start = end.end()
        tail = buffer[start:]
        if out:
            yield b"".join(out)
    if tail:
        yield _anthropic_event(tail)


def _anthropic_event(event: bytes) -> bytes:
    if not event.startswith(b"data: {"):
        return event
    try:
        data = json.loads(event[len(b"data: ") :])
    except ValueError:
        return event
    if not isinstance(data, dict) or "error" not in data or "type" in data:
        return event
    status, message = openai_error_fields(data)
    return anthropic_error_event(status, message).rstrip(b"\n")


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


async def not_found(request: Request, _exc: Exception) -> Response:
    """Any path the gateway does not serve, in the style of its API family."""
    path = request.url.path
    message = f"no route {request.method} {path} on this gateway"
    if is_anthropic_path(path):
        return anthropic_error(404, message)
    return openai_error(404, message, code="unknown_url")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """A path the gateway serves, asked with a method it does not take: 405 with
    ``Allow``, in the style of the path's API family."""
    path = request.url.path
    allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
    message = f"method {request.method} is not allowed on {path}" + (
        f" (allowed: {allow})" if allow else ""
    )
    if is_anthropic_path(path):
        response: Response = anthropic_error(405, message)
    else:
        response = openai_error(405, message, code="method_not_allowed")
    if allow:
        response.headers["Allow"] = allow
    return response
