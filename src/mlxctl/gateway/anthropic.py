"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: the Anthropic Messages API.

What Claude Code and the ``anthropic`` SDKs send (``/v1/messages?beta=true``,
``anthropic-version`` and ``anthropic-beta`` headers, the key as ``x-api-key`` or
``Authorization: Bearer``). A vllm-mlx tier serves the route itself and gets the
request as is; for ``mlx_lm.server`` it is translated to a chat completion and back
(:mod:`mlxctl.gateway.families` says why the translation is ours).

Translated, supported: text, a system prompt (string or text blocks, and system
messages in the conversation, which Claude Code 2.1 sends), multi-turn,
``tool_use`` / ``tool_result`` blocks (a result's text or text blocks; ``is_error`` is
said in its text), custom tools (``input_schema``), ``tool_choice`` (auto, any, tool,
none, ``disable_parallel_tool_use``), images as base64 or URL blocks, ``max_tokens``,
``stop_sequences``, ``temperature``, ``top_p``, ``top_k``, streaming with Anthropic's
events (``message_start``, ``ping``, ``content_block_start`` / ``_delta`` / ``_stop``,
``message_delta`` with ``stop_reason`` and usage, ``message_stop``, ``error``), and a
tier's reasoning as ``thinking`` blocks. Dropped: ``thinking`` (the request's budget),
``metadata``, ``cache_control``, ``context_management``, ``service_tier``, thinking
blocks sent back. Refused with a 400: server tools (``web_search_...``, ``bash_...``,
``code_execution_...``: only custom tools run on a local model), documents,
``mcp_servers``, ``container``.

``count_tokens`` is answered by the gateway itself, never by a tier (it loads nothing
and takes no tier's turn): the request is translated as a Messages request is, and its
chat prompt counted as the context check counts it, with the tier's own tokenizer
(:func:`mlxctl.gateway.prompt_tokens.count_prompt`: the system prompt, the messages'
text, tool inputs and results, the tools' definitions when the model's template renders
them, plus 3 a message). A tier whose model has no ``tokenizer.json`` gets the
estimate the context check falls back to (UTF-8 bytes / 4). An agent uses the count to
decide when to compact its context, which a count by the model's own tokenizer serves.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mlxctl.gateway import errors, prompt_tokens
from mlxctl.gateway.bounds import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_STOP,
    MAX_TOKENS,
    MAX_TOOLS,
    RequestError,
    clip,
    refusal,
)
from mlxctl.gateway.errors import Body
from mlxctl.gateway.families import (
    Api,
    Parsed,
    arguments_object,
    request_head,
    sse,
    text_of,
    usage_numbers,
)
from mlxctl.gateway.intake import read_json
from mlxctl.gateway.requests import check_request

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Request fields that are passed to the chat translation (renamed where needed).
_SAMPLING = ("temperature", "top_p", "top_k")
# Request fields accepted and not used by a translated request (they change nothing a
# local model can do, or only the accounting of Anthropic's own service).
_IGNORED = frozenset(
    {
        "metadata", "thinking", "service_tier", "context_management", "cache_control",
        "betas", "output_format", "output_config", "inference_geo",
    }
)  # fmt: skip
_REFUSED = {
    "mcp_servers": "MCP connectors run on Anthropic's service, not on a local tier",
    "container": "code execution containers run on Anthropic's service, not on a local tier",
}
_KNOWN = frozenset({"model", "messages", "system", "max_tokens", "stop_sequences", "stream",
                    "tools", "tool_choice", *_SAMPLING})  # fmt: skip
_TEXT = frozenset({"text"})


class Messages:
    """The Anthropic Messages family (see the module's docstring)."""

    api: Api = "messages"

    # -- the request ------------------------------------------------------------------

    def parse(self, body: Any) -> Parsed:
        model = request_head(body, _REFUSED)
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise refusal("max_tokens", "a positive integer is required")
        if not 1 <= max_tokens <= MAX_TOKENS:
            raise refusal("max_tokens", "a positive integer is required")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise refusal("stream", "must be a boolean")
        messages = _system(body.get("system"))
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise refusal("messages", "a non-empty list of messages is required")
        if len(raw) > MAX_MESSAGES:
            raise refusal("messages", f"at most {MAX_MESSAGES} messages")
        for i, message in enumerate(raw):
            messages += _message(message, f"messages.{i}")
        chat: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens}
        if (stops := body.get("stop_sequences")) is not None:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise refusal("stop_sequences", "must be a list of strings")
            if len(stops) > MAX_STOP:
                raise refusal("stop_sequences", f"at most {MAX_STOP}")
            if stops:
                chat["stop"] = stops
        for field in _SAMPLING:
            if body.get(field) is not None:
                chat[field] = body[field]
        if body.get("tools"):
            chat["tools"] = _tools(body["tools"])
        if body.get("tool_choice") is not None:
            chat.update(_tool_choice(body["tool_choice"]))
        if stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        native = {k: v for k, v in body.items() if k != "model"}
        return Parsed(model=model, stream=stream, native=native, chat=chat)

    # -- errors -----------------------------------------------------------------------

    def error(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        retry_after: str | None = None,
    ) -> Response:
        return errors.anthropic_error(status, message, retry_after=retry_after)

    def fix_error(self, response: Response) -> Response:
        return errors.as_anthropic(response)

    def native_stream(self, stream: Body) -> AsyncIterator[bytes]:
        return errors.anthropic_events(stream)

    # -- the answer -------------------------------------------------------------------

    def from_chat(self, completion: dict[str, Any], parsed: Parsed) -> dict[str, Any]:
        choices = completion.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message: dict[str, Any] = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        if isinstance(message.get("content"), str) and message["content"]:
            content.append({"type": "text", "text": message["content"]})
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or _id("toolu_"),
                    "name": function.get("name") or "",
                    "input": arguments_object(function.get("arguments")),
                }
            )
        reason = choice.get("finish_reason")
        if message.get("tool_calls"):
            reason = "tool_calls"
        prompt, completion_tokens, cached = usage_numbers(completion.get("usage"))
        return {
            "id": _id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": parsed.model,
            "content": content,
            "stop_reason": STOP_REASONS.get(reason or "stop", "end_turn"),
            "stop_sequence": None,
            "usage": _usage(prompt, completion_tokens, cached),
        }

    def translator(self, parsed: Parsed) -> MessagesStream:
        return MessagesStream(parsed.model, prompt_tokens.estimate(parsed.chat, "chat"))


class MessagesStream:
    """Chat completion chunks in, Anthropic Messages stream events out."""

    def __init__(self, model: str, input_estimate: int) -> None:
        self.model = model
        self.input_estimate = input_estimate
        self.id = _id("msg_")
        self.index = -1
        self.open: str | None = None  # "text", "thinking" or "tool:<chat index>"
        self.stop: str | None = None
        self.tool_used = False
        self.usage: dict[str, Any] | None = None

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
        }
        return sse("message_start", {"type": "message_start", "message": message}) + sse(
            "ping", {"type": "ping"}
        )

    def _block(self, key: str, block: dict[str, Any]) -> list[bytes]:
        if self.open == key:
            return []
        out = self._close()
        self.index += 1
        self.open = key
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        out.append(sse("content_block_start", start))
        return out

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        body = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return sse("content_block_delta", body)

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta: dict[str, Any] = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                out += self._block("thinking", {"type": "thinking", "thinking": "",
                                                "signature": ""})  # fmt: skip
                out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._block("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                key = f"tool:{call.get('index', 0)}"
                if self.open != key:
                    block: dict[str, Any] = {
                        "type": "tool_use",
                        "id": call.get("id") or _id("toolu_"),
                        "name": function.get("name") or "",
                        "input": {},
                    }
                    out += self._block(key, block)
                    self.tool_used = True
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    out.append(self._delta({"type": "input_json_delta",
                                            "partial_json": arguments}))  # fmt: skip
            if choice.get("finish_reason"):
                self.stop = str(choice["finish_reason"])
        return b"".join(out)

    def finish(self) -> bytes:
        out = self._close()
        reason = "tool_calls" if self.tool_used else (self.stop or "stop")
        prompt, completion, cached = usage_numbers(self.usage)
        usage = _usage(prompt or self.input_estimate, completion, cached)
        delta = {"stop_reason": STOP_REASONS.get(reason, "end_turn"), "stop_sequence": None}
        out.append(sse("message_delta", {"type": "message_delta", "delta": delta,
                                         "usage": usage}))  # fmt: skip
        out.append(sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def fail(self, status: int, message: str) -> bytes:
        return b"".join(self._close()) + errors.anthropic_error_event(status, message)


# -- translation helpers ---------------------------------------------------------------


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _usage(prompt: int, completion: int, cached: int) -> dict[str, int]:
    # Anthropic's input_tokens leaves out the tokens read from the cache.
    return {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": completion,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _system(system: object) -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        text = text_of(system, _TEXT)
        if text is not None:
            return [{"role": "system", "content": text}]
    raise refusal("system", "must be a string or a list of text blocks")


def _message(message: object, where: str) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages (a user turn's tool results come first,
    each its own ``tool`` message, then its text)."""
    if not isinstance(message, dict):
        raise refusal(where, "a message must be an object")
    role = message.get("role")
    content = message.get("content")
    if role == "system":  # Claude Code's mid-conversation system messages (a beta)
        return _system(content) if content else []
    if role not in ("user", "assistant"):
        raise refusal(f"{where}.role", "must be 'user', 'assistant' or 'system'")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise refusal(f"{where}.content", "must be a string or a list of blocks")
    if len(content) > MAX_CONTENT_PARTS:
        raise refusal(f"{where}.content", f"at most {MAX_CONTENT_PARTS} blocks")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise refusal(f"{at}.text", "must be a string")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append(_image(block.get("source"), at))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("id"), str):
                raise refusal(at, "a tool_use block needs an id and a name")
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"],
                                 "arguments": json.dumps(block.get("input") or {})},
                }
            )  # fmt: skip
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise refusal(f"{at}.tool_use_id", "must be a string")
            results.append(
                {"role": "tool", "tool_call_id": block["tool_use_id"],
                 "content": _result_text(block, at)}
            )  # fmt: skip
        elif kind in ("thinking", "redacted_thinking"):
            continue  # a local tier's reasoning is not sent back to it
        else:
            raise refusal(f"{at}.type", f"block type {clip(kind)} is not supported here")
    out = list(results)
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        if calls or text or not results:
            turn: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                turn["tool_calls"] = calls
            elif not text:
                turn["content"] = ""
            out.append(turn)
    elif parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    elif not results:
        out.append({"role": "user", "content": ""})
    return out


def _image(source: object, at: str) -> dict[str, Any]:
    if isinstance(source, dict):
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            media = source.get("media_type") or "image/png"
            return {"type": "image_url",
                    "image_url": {"url": f"data:{media};base64,{source['data']}"}}  # fmt: skip
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise refusal(f"{at}.source", "an image needs a base64 or url source")


def _result_text(block: dict[str, Any], at: str) -> str:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif isinstance(part, dict) and part.get("type") == "image":
                texts.append("[image]")
            else:
                raise refusal(f"{at}.content", "a tool result holds text or image blocks")
        text = "\n".join(texts)
    else:
        raise refusal(f"{at}.content", "must be a string or a list of blocks")
    return f"Error: {text}" if block.get("is_error") else text


def _tools(tools: object) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise refusal("tools", "must be a list")
    if len(tools) > MAX_TOOLS:
        raise refusal("tools", f"at most {MAX_TOOLS} tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise refusal(f"tools.{i}", "a tool must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise refusal(
                f"tools.{i}.type",
                f"server tool {clip(kind)} is not supported: only custom tools (name, "
                "input_schema) run on a local model",
            )
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise refusal(f"tools.{i}.name", "must be a non-empty string")
        if not isinstance(schema, dict):
            raise refusal(f"tools.{i}.input_schema", "must be a JSON schema object")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: object) -> dict[str, Any]:
    if not isinstance(choice, dict):
        raise refusal("tool_choice", "must be an object")
    kind = choice.get("type")
    out: dict[str, Any] = {}
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise refusal("tool_choice.type", "must be auto, any, tool (with a name) or none")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


# -- count_tokens ----------------------------------------------------------------------


async def count_tokens(gateway: Any, request: Request) -> Response:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, the prompt the
    request becomes counted with its tier's tokenizer, as the context check counts it;
    estimated at 4 bytes a token only when the tier's model has no ``tokenizer.json``.
    Reads the tier's files only: no tier is asked or loaded (an agent counts often)."""
    family = MESSAGES
    if not gateway.authorized(request):
        return family.error(401, "missing or wrong API key", code="invalid_api_key")
    table = gateway.table
    try:
        body = await read_json(request)
        parsed = family.parse({"max_tokens": 1, **body} if isinstance(body, dict) else body)
        chat = check_request({**parsed.chat, "model": parsed.model}, "chat")
    except RequestError as exc:
        return family.error(exc.status, str(exc), code=exc.code)
    name = table.resolve(parsed.model)
    route = table.config.route(name) if name is not None else None
    if route is None:
        models = ", ".join(table.models()) or "(none)"
        return family.error(404, f"model '{clip(parsed.model)}' does not exist; models: "
                            f"{models}", code="model_not_found")  # fmt: skip
    counted = await prompt_tokens.count_prompt(chat, route, "chat")
    return JSONResponse({"input_tokens": counted.tokens if counted is not None else 0})


MESSAGES = Messages()
