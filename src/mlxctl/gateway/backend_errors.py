"""Every error a tier answers, in OpenAI's shape with the right status, per runtime.

What the servers answer (read from their code and measured, mlx-lm 0.32.2, vllm-mlx 0.5):

- vllm-mlx 503 ``{"detail": {"error": "text_generation_busy", ...}}`` (its simple engine
  runs another generation): never relayed; the request waits its turn again
  (:mod:`mlxctl.gateway.capacity`).
- vllm-mlx 422 ``{"detail": [{"loc": [...], "msg": ...}]}`` (FastAPI validation): 400
  ``invalid_request_error`` naming the field.
- vllm-mlx 4xx ``{"detail": "..."}``: the same status, its message.
- vllm-mlx 500 ``{"detail": "..."}`` (generation failed on this request): 500, not
  retried (a bad ``min_p`` ran twice through the Router).
- mlx-lm 404 ``{"error": "generation thread died"}`` (it cannot generate any more): a
  failure: the Router's fallbacks; the controller's liveness check replaces the tier.
- mlx-lm 404 ``{"error": "<python exception>"}`` (raised while generating *this*
  request): 400 with its text (500 for an allocation failure).
- mlx-lm 400 ``{"error": "..."}``: 400, its message.
- any runtime, 5xx without a JSON error, or 401/403 (the tier refused the gateway's
  key): a failure: the Router retries and falls back.

A message is one line of at most :data:`MESSAGE_MAX` characters; request ids, token
counts and the state of other requests (vllm-mlx's busy text names the running
request, its prompt and completion tokens) never reach a client, nor LiteLLM's own
text (:func:`router_error`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

MESSAGE_MAX = 300
# The most of a tier's error body read (its errors are small; the rest is dropped).
BODY_MAX = 64 * 1024
THREAD_DIED = "generation thread died"
BUSY = "text_generation_busy"
# vllm-mlx's own words for "this server cannot serve now" (not the request's fault).
CANNOT_SERVE = ("model not loaded", "engine_stopped", "engine stopped")
MEMORY = ("malloc", "unable to allocate", "out of memory", "memory limit")
# Text that identifies requests or counts their tokens: cut from every message.
_PRIVATE = re.compile(
    r"(request_id|active|waiters|prompt|completion|elapsed_s)\s*[=:]\s*[^;,\s]*", re.IGNORECASE
)
Kind = Literal["busy", "failed", "error"]


@dataclass(frozen=True)
class BackendAnswer:
    """What a tier's non-200 answer means.

    ``busy``: ask again later (never relayed); ``failed``: the tier cannot serve, so
    the Router retries and walks the fallbacks; ``error``: answer the client with
    ``status``, ``message`` and ``code`` (OpenAI's ``type`` follows the status).
    """

    kind: Kind
    status: int = 500
    message: str = ""
    code: str = "backend_error"
    param: str | None = None
    # ``failed`` for good (it cannot generate any more): the request goes straight to
    # the tier's fallbacks, not to the tier again.
    dead: bool = False

    @property
    def type_(self) -> str:
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type_,
                "param": self.param,
                "code": self.code,
            }
        }


def clean(text: object) -> str:
    """``text`` on one line, without request ids or token counts, clipped."""
    line = " ".join(str(text).split())
    line = _PRIVATE.sub("", line)
    line = re.sub(r"(\s*;\s*)+", "; ", line).strip(" ;")
    if len(line) > MESSAGE_MAX:
        line = line[: MESSAGE_MAX - 3] + "..."
    return line


def _json(body: bytes) -> Any:
    try:
        return json.loads(body[:BODY_MAX])
    except (ValueError, RecursionError):
        return None


def _detail_text(detail: Any) -> str:
    if isinstance(detail, dict):
        return str(detail.get("message") or detail.get("error") or detail.get("msg") or "")
    return str(detail)


def _validation(detail: list[Any]) -> BackendAnswer:
    """FastAPI's 422 list: the first problem, as ``invalid request: stop: <msg>``."""
    first = detail[0] if detail and isinstance(detail[0], dict) else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    msg = clean(first.get("msg", "invalid value"))
    where = ".".join(loc)
    return BackendAnswer(
        "error",
        400,
        f"invalid request: {where}: {msg}" if where else f"invalid request: {msg}",
        "invalid_request",
        loc[0] if loc else None,
    )


def classify(runtime: str, status: int, body: bytes) -> BackendAnswer:
    """What the non-200 answer (``status``, ``body``) of a ``runtime`` tier means."""
    data = _json(body)
    text = body[:BODY_MAX].decode("utf-8", "replace")
    lowered = text.lower()
    if status in (429, 503) and BUSY in text:
        return BackendAnswer("busy", 503, "the tier is busy", "tier_busy")
    if THREAD_DIED in text:
        return BackendAnswer(
            "failed", 503, f"the tier cannot generate ({THREAD_DIED})", "tier_failed", dead=True
        )
    if status in (401, 403):  # the tier refused the gateway's own key
        return BackendAnswer("failed", 502, "the tier refused the gateway's key")
    if status >= 500 and any(word in lowered for word in CANNOT_SERVE):
        return BackendAnswer("failed", 503, "the tier cannot serve now", "tier_failed", dead=True)
    if not isinstance(data, dict) or not ({"error", "detail"} & data.keys()):
        if status >= 500:
            return BackendAnswer("failed", status, f"the tier answered {status}")
        return BackendAnswer("error", status, f"the tier answered {status}: {clean(text)}")
    raw = data.get("detail", data.get("error"))
    if isinstance(raw, list) and status in (400, 422):
        return _validation(raw)
    if isinstance(raw, dict) and isinstance(raw.get("error"), dict):  # OpenAI's own shape
        raw = raw["error"]
    message = clean(_detail_text(raw)) or f"the tier answered {status}"
    if runtime == "mlx-lm" and status == 404:
        # mlx_lm.server answers 404 for any exception raised while it generates.
        if any(word in message.lower() for word in MEMORY):
            return BackendAnswer("error", 500, f"the tier failed: {message}")
        return BackendAnswer(
            "error", 400, f"the tier could not process the request: {message}", "invalid_request"
        )
    if status == 422:
        return BackendAnswer("error", 400, f"invalid request: {message}", "invalid_request")
    if status >= 500:
        return BackendAnswer("error", 500, f"the tier failed on this request: {message}")
    return BackendAnswer("error", status, message, "backend_rejected")


def router_error(exc: Exception, tier: str) -> BackendAnswer:
    """A ``litellm.Router`` exception as the client should see it, with none of
    LiteLLM's own text (its messages name its internals, and its retries' other
    requests): the status, and the backend's own message when it gave one."""
    from litellm.exceptions import APIConnectionError, Timeout

    if isinstance(exc, Timeout):
        return BackendAnswer("error", 504, f"tier '{tier}' did not answer in time", "timeout")
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 408, 429):
        detail = _backend_message(exc)
        return BackendAnswer("error", status, detail or f"the tier answered {status}",
                             "backend_rejected")  # fmt: skip
    if status in (429, 503) and BUSY in str(exc):
        return BackendAnswer("busy", 503, f"tier '{tier}' and its fallbacks are busy", "tier_busy")
    if isinstance(exc, APIConnectionError):
        return BackendAnswer("error", 502, f"tier '{tier}' and its fallbacks are unreachable",
                             "backend_unreachable")  # fmt: skip
    said = f" (the last answered {status})" if isinstance(status, int) else ""
    return BackendAnswer("error", 502, f"tier '{tier}' and its fallbacks failed{said}")


def _backend_message(exc: Exception) -> str:
    """The backend's own error text inside a LiteLLM exception, if it is there."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        found = body.get("message") or body.get("detail") or body.get("error")
        if found:
            return clean(_detail_text(found))
    text = str(getattr(exc, "message", "") or exc)[:BODY_MAX]
    start = text.find("{")
    if start >= 0:
        try:
            data, _ = json.JSONDecoder().raw_decode(text, start)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict):
            found = data.get("error", data.get("detail"))
            if isinstance(found, list):
                return _validation(found).message
            if found:
                return clean(_detail_text(found))
    return ""
