"""Bounds on the Anthropic Messages and OpenAI Responses requests the gateway takes.

The same names and values as the shared request bounds of the chat and text routes
(``mlxctl.gateway.bounds``, landing separately): when that module is on main, these
names are imported from it instead and this module goes. Everything a request to the
two routes sends also passes the chat checks (:func:`mlxctl.gateway.requests.check_request`)
once translated, so the chat route's bounds apply to them as well.
"""

from __future__ import annotations

# Bytes of a request body; more is a 413. Agents' requests are ~40-50 KB.
MAX_BODY_BYTES = 16 << 20
MAX_MESSAGES = 10_000
MAX_CONTENT_PARTS = 1_000  # blocks or parts of one message's content
MAX_TOOLS = 256
MAX_STOP = 16  # stop sequences
MAX_TOKENS = (1 << 31) - 1
MAX_MODEL_NAME = 256
# Characters of client input an error message repeats.
MAX_ECHO = 64


def clip(value: object, limit: int = MAX_ECHO) -> str:
    """``value`` as text for an error message, at most ``limit`` characters of it."""
    text = value if isinstance(value, str) else repr(value)
    head = text[:limit].encode("unicode_escape").decode("ascii")
    return head if len(text) <= limit else f"{head}… ({len(text)} characters)"
