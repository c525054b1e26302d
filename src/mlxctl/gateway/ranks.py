"""``GET /mlxctl/ranks``: this machine's ranks of distributed tiers, for the other members.

The members of a distributed tier learn each other's rank states over HTTP with the
stack's key, through their gateways (the only thing that listens on the LAN): this
relays the local controller's answer (``GET /v1/ranks`` on its admin socket) as it
is. The gateway reports; it decides nothing (every member's controller decides from
the answers: docs/multi-host.md, "One model across machines").
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from starlette.responses import Response

from mlxctl.gateway.errors import openai_error as error

URL = "http://mlxctl/v1/ranks"
# The controller's answer: a line or two per distributed tier.
MAX_ANSWER_BYTES = 256 * 1024
TIMEOUT = 2.0


async def relay(socket: Path | None) -> Response:
    """The controller's answer, or 503 with why there is none (no controller here)."""
    if socket is None:
        return error(503, "no controller: the gateway was started without its admin socket",
                     code="no_controller")  # fmt: skip
    connector = aiohttp.UnixConnector(path=str(socket))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(URL) as resp,
        ):
            body = await resp.content.read(MAX_ANSWER_BYTES + 1)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        why = str(exc) or type(exc).__name__
        return error(503, f"the controller does not answer: {why[:200]}", code="no_controller")
    if status != 200 or len(body) > MAX_ANSWER_BYTES:
        return error(502, f"the controller answered {status}", code="controller_error")
    return Response(body, media_type="application/json")
