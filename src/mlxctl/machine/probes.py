"""HTTP readiness and liveness probes over loopback.

Written on the standard library's ``http.client`` rather than httpx: probes are a
handful of tiny requests on 127.0.0.1, and httpx costs about half a second of import
time on the ``status`` path, which must stay fast.
"""

from __future__ import annotations

import http.client
import json
from typing import Any, Literal

from mlxctl.machine.interfaces import ProbeResult
from mlxctl.runtimes.base import ProbeSpec

READY_PROMPT = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


def _request(
    spec: ProbeSpec, method: str, path: str, timeout: float, body: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(spec.host, spec.port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class HttpProber:
    """Checks that a server really serves its model (``ready``) or still answers (``live``)."""

    def probe(self, spec: ProbeSpec, mode: Literal["ready", "live"], timeout: float) -> ProbeResult:
        try:
            return self._probe(spec, mode, timeout)
        except (OSError, http.client.HTTPException) as exc:
            return ProbeResult(False, _short(exc))

    def _probe(self, spec: ProbeSpec, mode: str, timeout: float) -> ProbeResult:
        if spec.kind == "litellm":
            status, _ = _request(spec, "GET", "/health/liveliness", timeout)
            return ProbeResult(status == 200, f"/health/liveliness answered {status}")
        if spec.kind == "vllm-mlx":
            status, body = _request(spec, "GET", "/health", timeout)
            try:
                data = json.loads(body)
            except ValueError:
                return ProbeResult(False, f"/health answered {status} without JSON")
            loaded = status == 200 and data.get("model_loaded") is True
            return ProbeResult(
                loaded,
                f"/health: status={data.get('status')} model_loaded={data.get('model_loaded')}",
            )
        # mlx-lm: /health is 200 even while loading; only a completion proves readiness.
        if mode == "live":
            status, _ = _request(spec, "GET", "/health", timeout)
            return ProbeResult(status == 200, f"/health answered {status}")
        request = {"model": spec.model, **READY_PROMPT}
        status, raw = _request(spec, "POST", "/v1/chat/completions", timeout, request)
        if status == 200:
            return ProbeResult(True, "1-token completion answered")
        text = raw[:300].decode(errors="replace")
        # mlx_lm.server keeps running when its model fails to load ("generation thread
        # died") and answers every completion 404 {"error": ...}: that never recovers.
        fatal = status == 404 and text.startswith("{")
        return ProbeResult(False, f"completion answered {status}: {text}", fatal=fatal)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
