"""HTTP readiness and liveness probes over loopback.

Written on the standard library's ``http.client`` rather than httpx: probes are a
handful of tiny requests on 127.0.0.1, and httpx costs about half a second of import
time on the ``status`` path, which must stay fast.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any

from mlxctl.runtimes.base import ProbeMode, ProbeResult, ProbeSpec
from mlxctl.runtimes.registry import runtime
from mlxctl.runtimes.tier_guard import bearer


def _request(
    spec: ProbeSpec, method: str, path: str, timeout: float, body: Mapping[str, Any] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(spec.host, spec.port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        headers |= bearer(spec.key_file)
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class HttpProber:
    """Runs a runtime adapter's check (``ready``: really serves; ``live``: still answers)."""

    def probe(self, spec: ProbeSpec, mode: ProbeMode, timeout: float) -> ProbeResult:
        overall = timeout

        def call(
            method: str,
            path: str,
            body: Mapping[str, Any] | None = None,
            *,
            timeout: float | None = None,
        ) -> tuple[int, bytes]:
            limit = overall if timeout is None else min(timeout, overall)
            return _request(spec, method, path, limit, body)

        try:
            result = runtime(spec.kind).check(call, mode, spec.model)
        except (OSError, http.client.HTTPException) as exc:
            return ProbeResult(False, _short(exc))
        if result.ok and spec.pid and result.pid is not None and result.pid != spec.pid:
            # Its port is shared (a gateway replacing another): the other one answered.
            return ProbeResult(False, f"answered by pid {result.pid}, not by pid {spec.pid}")
        return result


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
