"""A prompt's tokens, counted with the tier's own tokenizer: the context check (a prompt
longer than the tier's context is a 400 naming both numbers, not a backend 500) and
``POST /v1/messages/count_tokens`` both count here, the same way.

The prompt is counted with the tier's own tokenizer (``Route.tokenizer``: the model
directory's ``tokenizer.json``, read with the ``tokenizers`` package), loaded on the
first request that needs it and kept for the next ones (:data:`CACHED_TOKENIZERS`
files, the least recently used dropped). Loading, and encoding a long text, run in a
worker thread: the event loop serves the other requests meanwhile.

What is counted (:func:`count_prompt`) is a lower bound of what the tier's server
counts: the messages' text (their contents, tool calls' names and arguments), the
tools' definitions (each function's name, description and parameters as compact JSON)
when the model's chat template renders tools (its text names ``tools``; a template
that does not, SmolLM2's or the tests' tiny models', shows the model none of them),
plus :data:`PER_MESSAGE` tokens a message; not the chat template's own text. So a
refusal is certain; a prompt that passes may still fill the context once templated.
Images are not counted (the tier's image processor decides their tokens).

- prompt tokens >= the context (no room for one token to generate): 400
  ``context_length_exceeded``, naming the prompt's tokens, the request's ``max_tokens``
  and the context;
- prompt tokens + ``max_tokens`` > the context: ``max_tokens`` is lowered to what the
  context leaves (as :func:`mlxctl.gateway.tierfit.fit_request` caps it to the context:
  clients such as Claude Code send a fixed ``max_tokens`` whatever the model);
- no tokenizer file (a model without ``tokenizer.json``, an unreadable one): the prompt's
  UTF-8 bytes / 4 as an estimate (:func:`estimate`; the tools' definitions left out: the
  template is not known either), refused only when it is more than
  :data:`ESTIMATE_MARGIN` times the context (text that compresses well has fewer tokens
  than bytes / 4; twice the context is certainly too long).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
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

# A chat template that uses the request's tools names the variable (Hugging Face's
# ``apply_chat_template(tools=...)``, which mlx_lm.server and vllm-mlx both call).
_TOOLS = re.compile(r"\btools\b")
# Where a model directory keeps its chat templates (older transformers: in
# tokenizer_config.json; the 5.x here writes chat_template.jinja, and named ones in
# additional_chat_templates/; a processor's chat_template.json).
TEMPLATE_JSON = ("tokenizer_config.json", "chat_template.json")


@dataclasses.dataclass(frozen=True)
class Counter:
    """A tier's tokenizer, and whether its chat template renders the request's tools."""

    tokenizer: Any
    tools: bool


@dataclasses.dataclass(frozen=True)
class PromptCount:
    """The prompt's tokens (a batch of text prompts: its longest), and whether they were
    estimated at :data:`BYTES_PER_TOKEN` bytes a token (no tokenizer file)."""

    tokens: int
    estimated: bool


_cache: OrderedDict[tuple[str, int, int], Counter | None] = OrderedDict()
_lock = threading.Lock()


def _load(path: str) -> Counter | None:
    """The tokenizer in ``path`` and its model's template's use of tools, or None when
    ``path`` cannot be read as a tokenizer."""
    try:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(path)
    except Exception:  # a foreign or broken file: the tier is counted by the estimate
        return None
    return Counter(tokenizer, renders_tools(Path(path).parent))


def renders_tools(directory: Path) -> bool:
    """Whether a chat template of the model uses the request's tools: only then are their
    definitions part of the prompt the tier's server renders."""
    return any(_TOOLS.search(text) for text in templates(directory))


def templates(directory: Path) -> Iterator[str]:
    """The chat templates in a model directory (none when it has no readable one)."""
    files = [directory / "chat_template.jinja"]
    extra = directory / "additional_chat_templates"
    if extra.is_dir():
        files += sorted(extra.glob("*.jinja"))
    for file in files:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        yield text
    for name in TEMPLATE_JSON:
        try:
            data = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, str):
            yield template
        elif isinstance(template, list):  # named templates: [{"name", "template"}]
            named = (t.get("template") for t in template if isinstance(t, dict))
            yield from (t for t in named if isinstance(t, str))


async def counter_for(path: str | None) -> Counter | None:
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
    counter = await asyncio.to_thread(_load, path)
    with _lock:
        _cache[key] = counter
        while len(_cache) > CACHED_TOKENIZERS:
            _cache.popitem(last=False)
    return counter


def prompt_texts(
    params: Mapping[str, Any], endpoint: Endpoint, *, tools: bool = False
) -> tuple[list[str], int]:
    """The texts the tier encodes as separate prompts (one for chat; each of a batch of
    text prompts) and the tokens added to each (the per-message allowance). ``tools``:
    the tools' definitions are part of the prompt (the template renders them)."""
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
    for tool in (params.get("tools") or ()) if tools else ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            parts.append(json.dumps(function, separators=(",", ":"), ensure_ascii=False))
    return ["\n".join(parts)], PER_MESSAGE * len(messages)


def estimate(params: Mapping[str, Any], endpoint: Endpoint) -> int:
    """The prompt's tokens at :data:`BYTES_PER_TOKEN` bytes a token, without reading a
    tokenizer (the longest of a batch; the per-message allowance included)."""
    texts, added = prompt_texts(params, endpoint)
    return _estimated(texts) + added if texts else 0


def _estimated(texts: list[str]) -> int:
    return max(len(t.encode("utf-8", "replace")) for t in texts) // BYTES_PER_TOKEN


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


async def count_prompt(checked: Checked, route: Route, endpoint: Endpoint) -> PromptCount | None:
    """The prompt's tokens as ``route``'s tier reads them (see the module's docstring),
    or None when the request has no prompt to count. Reads only the tier's files: no
    tier is loaded or asked."""
    counter = await counter_for(route.tokenizer)
    tools = counter is not None and counter.tools
    texts, added = prompt_texts(checked.params, endpoint, tools=tools)
    if not texts:
        return None
    if counter is None:
        return PromptCount(_estimated(texts) + added, estimated=True)
    tokens = max([await count(counter.tokenizer, t) for t in texts])
    return PromptCount(tokens + added, estimated=False)


async def fit_context(checked: Checked, route: Route, endpoint: Endpoint) -> Checked:
    """``checked`` with its ``max_tokens`` within what the prompt leaves of ``route``'s
    context; raise :class:`RequestError` (400 ``context_length_exceeded``) for a prompt
    that leaves nothing."""
    context = route.context
    if context is None:
        return checked
    counted = await count_prompt(checked, route, endpoint)
    if counted is None:
        return checked
    param = "prompt" if endpoint == "text" else "messages"
    requested = _max_tokens(checked.params)
    asked = f" (+ max_tokens {requested[1]})" if requested else ""
    tokens = counted.tokens
    if counted.estimated:
        if tokens > ESTIMATE_MARGIN * context:
            raise RequestError(
                400,
                f"about {tokens} prompt tokens{asked} > the tier's context {context} "
                f"(tier '{route.name}'; estimated at {BYTES_PER_TOKEN} bytes a token: more than "
                f"{ESTIMATE_MARGIN}x the context): shorten the prompt",
                code="context_length_exceeded",
                param=param,
            )
        return checked
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
