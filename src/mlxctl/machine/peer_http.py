"""One GET to another machine's gateway, with the stack's key.

The standard library's ``http.client``, as the probes use: a small JSON answer every
half second per member does not need a client library, and this stays off the import
path of ``status``.
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit


def get(base_url: str, path: str, key: str, timeout: float, limit: int) -> tuple[int, bytes]:
    """``(status, body)`` of ``GET base_url + path`` (at most ``limit + 1`` bytes read);
    ``OSError`` (a timeout, a refusal) or ``http.client.HTTPException`` when it fails."""
    url = urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        raise OSError(f"not an http:// URL: {base_url}")
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(limit + 1)
    finally:
        conn.close()
