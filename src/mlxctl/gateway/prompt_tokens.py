"""A prompt longer than the tier's context: a 400 naming both numbers, not a backend 500.

The prompt is counted with the tier's own tokenizer (``Route.tokenizer``: the model
directory's ``tokenizer.json``, read with the ``tokenizers`` package), loaded on the
first request that needs it and kept for the next ones (:data:`CACHED_TOKENIZERS`
files, the least recently used dropped). Loading, and encoding a long text, run in a
worker thread: the event loop serves the other requests meanwhile.

What is counted is a lower bound of what the tier's server counts: the messages' text
(their contents, tool calls' names and arguments) plus :data:`PER_MESSAGE` tokens a
message, not the chat template's own text nor the tools' definitions. So a refusal is
certain; a prompt that passes may still fill the context once templated.

- prompt tokens >= the context (no room for one token to generate): 400
  ``context_length_exceeded``, naming the prompt's tokens, the request's ``max_tokens``
  and the context;
- prompt tokens + ``max_tokens`` > the context: ``max_tokens`` is lowered to what the
  context leaves (as :func:`mlxctl.gateway.tierfit.fit_request` caps it to the context:
  clients such as Claude Code send a fixed ``max_tokens`` whatever the model);
- no tokenizer file (a model without ``tokenizer.json``, an unreadable one): the prompt's
  UTF-8 bytes / 4 as an estimate, refused only when it is more than
  :data:`ESTIMATE_MARGIN` times the context (text that compresses well has fewer tokens
  than bytes / 4; twice the context is certainly too long).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections import OrderedDict
from typing import Any

from mlxctl.gateway.bounds import RequestError
from mlxctl.gateway.requests import Checked, Endpoint
from mlxctl.runtimes.gateway import Route

# Tokens a chat template adds around each message at least (role markers).
PER_MESSAGE = 3
# Texts longer than this (characters) are encoded in a worker thread (~1 ms of encoding).
THREAD_CHARS = 8192
CACHED_TOKENIZERS = 8
ESTIMATE_MARGIN = 2
BYTES_PER_TOKEN = 4

_cache: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
_lock = threading.Lock()


def _load(path: str) -> Any:
    """The tokenizer in ``path``, or None when it cannot be read as one."""
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(path)
    except Exception:  # a foreign or broken file: the tier is counted by the estimate
        return None


async def tokenizer_for(path: str | None) -> Any:
    """The tokenizer in ``path`` (loaded in a thread the first time), or None."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (path, stat.st_mtime_ns, stat.st_size)  # a replaced file is read again
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    tokenizer = await asyncio.to_thread(_load, path)
    with _lock:
        _cache[key] = tokenizer
        while len(_cache) > CACHED_TOKENIZERS:
            _cache.popitem(last=False)
    return tokenizer


def prompt_texts(checked: Checked, endpoint: Endpoint) -> tuple[list[str], int]:
    """The texts the tier encodes as separate prompts (one for chat; each of a batch of
    text prompts) and the tokens added to each (the per-message allowance)."""
    params = checked.params
    if endpoint == "text":
        prompt = params.get("prompt")
        if isinstance(prompt, str):
            return [prompt], 0
        if isinstance(prompt, list):
            return [p for p in prompt if isinstance(p, str)], 0
        return [], 0
    messages = params.get("messages")
    if not isinstance(messages, list):
        return [], 0
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            texts = (p.get("text") for p in content if isinstance(p, dict))
            parts += [t for t in texts if isinstance(t, str)]
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                named = (function.get(k) for k in ("name", "arguments"))
                parts += [v for v in named if isinstance(v, str)]
    return ["\n".join(parts)], PER_MESSAGE * len(messages)


async def count(tokenizer: Any, text: str) -> int:
    """The tokens of ``text`` (special tokens aside), encoded in a thread when long."""

    def encode() -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return await asyncio.to_thread(encode) if len(text) > THREAD_CHARS else encode()


def _max_tokens(params: dict[str, Any]) -> tuple[str, int] | None:
    for name in ("max_completion_tokens", "max_tokens"):
        if isinstance(value := params.get(name), int) and not isinstance(value, bool):
            return name, value
    return None


async def fit_context(checked: Checked, route: Route, endpoint: Endpoint) -> Checked:
    """``checked`` with its ``max_tokens`` within what the prompt leaves of ``route``'s
    context; raise :class:`RequestError` (400 ``context_length_exceeded``) for a prompt
    that leaves nothing."""
    context = route.context
    if context is None:
        return checked
    texts, added = prompt_texts(checked, endpoint)
    if not texts:
        return checked
    param = "prompt" if endpoint == "text" else "messages"
    requested = _max_tokens(checked.params)
    asked = f" (+ max_tokens {requested[1]})" if requested else ""
    tokenizer = await tokenizer_for(route.tokenizer)
    if tokenizer is None:
        estimate = max(len(t.encode("utf-8", "replace")) for t in texts) // BYTES_PER_TOKEN
        if estimate + added > ESTIMATE_MARGIN * context:
            raise RequestError(
                400,
                f"about {estimate + added} prompt tokens{asked} > the tier's context {context} "
                f"(tier '{route.name}'; estimated at {BYTES_PER_TOKEN} bytes a token: more than "
                f"{ESTIMATE_MARGIN}x the context): shorten the prompt",
                code="context_length_exceeded",
                param=param,
            )
        return checked
    tokens = max([await count(tokenizer, t) for t in texts]) + added
    if tokens >= context:
        raise RequestError(
            400,
            f"{tokens} prompt tokens{asked} > the tier's context {context} (tier "
            f"'{route.name}'; no room left to generate): shorten the prompt",
            code="context_length_exceeded",
            param=param,
        )
    room = context - tokens
    lowered = {
        name: room
        for name in ("max_tokens", "max_completion_tokens")
        if isinstance(value := checked.params.get(name), int) and value > room
    }
    if lowered:
        checked = dataclasses.replace(checked, params={**checked.params, **lowered})
    return checked
