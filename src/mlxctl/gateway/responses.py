"""``POST /v1/responses``: the OpenAI Responses API, what Codex CLI speaks.

A vllm-mlx tier serves the route itself and gets the request as is; for
``mlx_lm.server`` it is translated to a chat completion and back
(:mod:`mlxctl.gateway.families` says why the translation is ours).

Translated, supported: ``input`` as a string or a list of items (messages with
``input_text`` / ``output_text`` / ``input_image`` parts, roles user, assistant, system
and developer; ``function_call`` and ``function_call_output`` items), ``instructions``,
function tools and namespace tools (groups of function tools, as Codex sends: their
functions are offered to the model, and a call of one says its ``namespace``),
``tool_choice``, ``parallel_tool_calls``, ``max_output_tokens``,
``temperature``, ``top_p``, ``text.format`` (``json_schema``, ``json_object``), and
streaming with the Responses events (``response.created``, ``response.in_progress``,
``response.output_item.added`` / ``.done``, ``response.content_part.added`` / ``.done``,
``response.output_text.delta`` / ``.done``, ``response.function_call_arguments.delta``
/ ``.done``, ``response.reasoning_text.delta`` / ``.done`` for a tier's reasoning,
``response.completed``, ``response.incomplete`` at ``max_output_tokens``,
``response.failed`` then ``error`` when the tier fails mid-stream).

Nothing is stored: every answer says ``"store": false`` whatever the request asked
(Codex sends ``store: false`` and the whole conversation each turn). Ignored:
``reasoning`` (a local model reasons or not by its template), ``include``,
``metadata`` (echoed back), ``prompt_cache_key``, ``client_metadata``, ``user``,
``safety_identifier``, ``service_tier``, ``truncation``, ``reasoning`` items sent back.
Refused with a 400 naming the field: ``previous_response_id`` and ``conversation``
(nothing is stored to continue from), ``background``, ``prompt`` (stored prompts),
built-in tools (``web_search``, ``file_search``, ``code_interpreter``,
``computer_use_preview``, ``image_generation``, ``mcp``, ``local_shell``, ``custom``: they
run on OpenAI's service, not on a local model; Codex CLI sends ``web_search`` unless its
config says ``web_search = "disabled"``, which the 400 tells), ``input_file`` parts and
item types other than the above.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from mlxctl.gateway import errors
from mlxctl.gateway.bounds import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_TOKENS,
    MAX_TOOLS,
    clip,
    refusal,
)
from mlxctl.gateway.errors import Body, as_bytes
from mlxctl.gateway.families import Api, Parsed, request_head, sse, usage_numbers

_REFUSED = {
    "previous_response_id": "the gateway stores no responses: send the whole conversation "
    "in 'input' (as Codex does with store: false)",
    "conversation": "the gateway stores no conversations: send the whole conversation in 'input'",
    "background": "background responses are not supported",
    "prompt": "stored prompts are not supported",
}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "refusal"})
_SAMPLING = ("temperature", "top_p")


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


class Responses:
    """The OpenAI Responses family (see the module's docstring)."""

    api: Api = "responses"

    def parse(self, body: Any) -> Parsed:
        model = request_head(body, _REFUSED)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise refusal("stream", "must be a boolean")
        messages: list[dict[str, Any]] = []
        instructions = body.get("instructions")
        if instructions is not None:
            if not isinstance(instructions, str):
                raise refusal("instructions", "must be a string")
            if instructions:
                messages.append({"role": "system", "content": instructions})
        messages += _input(body.get("input"))
        chat: dict[str, Any] = {"messages": messages}
        limit = body.get("max_output_tokens")
        if limit is not None:
            if not _integer(limit) or not 1 <= limit <= MAX_TOKENS:
                raise refusal("max_output_tokens", "a positive integer is required")
            chat["max_tokens"] = limit
        for field in _SAMPLING:
            if body.get(field) is not None:
                chat[field] = body[field]
        namespaces: dict[str, str] = {}
        if body.get("tools"):
            chat["tools"] = _tools(body["tools"], namespaces)
        if body.get("tool_choice") is not None and chat.get("tools"):
            chat["tool_choice"] = _tool_choice(body["tool_choice"])
        if isinstance(body.get("parallel_tool_calls"), bool) and chat.get("tools"):
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
        if (fmt := _format(body.get("text"))) is not None:
            chat["response_format"] = fmt
        if stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        native = {k: v for k, v in body.items() if k != "model"}
        return Parsed(model=model, stream=stream, native=native, chat=chat, namespaces=namespaces)

    def error(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        retry_after: str | None = None,
    ) -> Response:
        type_ = "invalid_request_error" if status < 500 else "server_error"
        if status == 401:
            type_ = "authentication_error"
        response = errors.openai_error(status, message, code=code, type_=type_, param=param)
        if retry_after:
            response.headers["Retry-After"] = retry_after
        return response

    def fix_error(self, response: Response) -> Response:
        return errors.as_openai(response)

    async def native_stream(self, stream: Body) -> AsyncIterator[bytes]:
        # The gateway's in-band errors are OpenAI-style already: the SDK raises on them.
        async for piece in stream:
            yield as_bytes(piece)

    def from_chat(self, completion: dict[str, Any], parsed: Parsed) -> dict[str, Any]:
        choices = completion.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        output: list[dict[str, Any]] = []
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            output.append(_reasoning_item(_id("rs_"), reasoning))
        if isinstance(message.get("content"), str) and message["content"]:
            output.append(_message_item(_id("msg_"), message["content"], "completed"))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            arguments = function.get("arguments")
            output.append(
                _call_item(
                    _id("fc_"),
                    call.get("id") or _id("call_"),
                    function.get("name") or "",
                    arguments if isinstance(arguments, str) else json.dumps(arguments or {}),
                    "completed",
                    parsed.namespaces,
                )
            )
        prompt, completion_tokens, cached = usage_numbers(completion.get("usage"))
        length = choice.get("finish_reason") == "length"
        return _response(
            _id("resp_"), parsed, output, "incomplete" if length else "completed",
            _usage(prompt, completion_tokens, cached),
        )  # fmt: skip

    def translator(self, parsed: Parsed) -> ResponsesStream:
        return ResponsesStream(parsed)


class ResponsesStream:
    """Chat completion chunks in, Responses stream events out."""

    def __init__(self, parsed: Parsed) -> None:
        self.parsed = parsed
        self.id = _id("resp_")
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: str | None = None  # "text", "reasoning" or "tool:<chat index>"
        self.item: dict[str, Any] = {}
        self.stop: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, kind: str, **data: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return sse(kind, body)

    def start(self) -> bytes:
        response = _response(self.id, self.parsed, [], "in_progress", None)
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def _item_added(self, key: str, item: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.open, self.item = key, item
        self.output.append(item)
        index = len(self.output) - 1
        out.append(self._event("response.output_item.added", output_index=index,
                               item={**item, "status": "in_progress"}))  # fmt: skip
        return out

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        item, index, out = self.item, len(self.output) - 1, []
        item_id = item["id"]
        if item["type"] == "message":
            text = item["content"][0]["text"]
            part = item["content"][0]
            out.append(self._event("response.output_text.done", item_id=item_id,
                                   output_index=index, content_index=0, text=text,
                                   logprobs=[]))  # fmt: skip
            out.append(self._event("response.content_part.done", item_id=item_id,
                                   output_index=index, content_index=0, part=part))  # fmt: skip
        elif item["type"] == "reasoning":
            text = item["content"][0]["text"]
            out.append(self._event("response.reasoning_text.done", item_id=item_id,
                                   output_index=index, content_index=0, text=text))  # fmt: skip
        else:
            out.append(self._event("response.function_call_arguments.done", item_id=item_id,
                                   output_index=index, name=item["name"],
                                   arguments=item["arguments"]))  # fmt: skip
        item["status"] = "completed"
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        self.open = None
        return out

    def feed(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            index = len(self.output) - 1
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                if self.open != "reasoning":
                    item = _reasoning_item(_id("rs_"), "")
                    out += self._item_added("reasoning", item)
                    index = len(self.output) - 1
                self.item["content"][0]["text"] += reasoning
                out.append(self._event("response.reasoning_text.delta", item_id=self.item["id"],
                                       output_index=index, content_index=0,
                                       delta=reasoning))  # fmt: skip
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open != "text":
                    item = _message_item(_id("msg_"), "", "in_progress")
                    out += self._item_added("text", item)
                    index = len(self.output) - 1
                    part = {"type": "output_text", "text": "", "annotations": []}
                    out.append(self._event("response.content_part.added",
                                           item_id=item["id"], output_index=index,
                                           content_index=0, part=part))  # fmt: skip
                self.item["content"][0]["text"] += text
                out.append(self._event("response.output_text.delta", item_id=self.item["id"],
                                       output_index=index, content_index=0, delta=text,
                                       logprobs=[]))  # fmt: skip
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                key = f"tool:{call.get('index', 0)}"
                if self.open != key:
                    item = _call_item(_id("fc_"), call.get("id") or _id("call_"),
                                      function.get("name") or "", "", "in_progress",
                                      self.parsed.namespaces)  # fmt: skip
                    out += self._item_added(key, item)
                    index = len(self.output) - 1
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    self.item["arguments"] += arguments
                    out.append(self._event("response.function_call_arguments.delta",
                                           item_id=self.item["id"], output_index=index,
                                           delta=arguments))  # fmt: skip
            if choice.get("finish_reason"):
                self.stop = str(choice["finish_reason"])
        return b"".join(out)

    def finish(self) -> bytes:
        out = self._close()
        prompt, completion, cached = usage_numbers(self.usage)
        status = "incomplete" if self.stop == "length" else "completed"
        response = _response(self.id, self.parsed, self.output, status,
                             _usage(prompt, completion, cached))  # fmt: skip
        out.append(self._event(f"response.{status}", response=response))
        return b"".join(out)

    def fail(self, status: int, message: str) -> bytes:
        out = self._close()
        code = "server_error" if status >= 500 else "invalid_request"
        response = _response(self.id, self.parsed, self.output, "failed", None)
        response["error"] = {"code": code, "message": message}
        out.append(self._event("response.failed", response=response))
        # The openai SDK raises on an event whose data carries an "error" object.
        error = {"type": "server_error" if status >= 500 else "invalid_request_error",
                 "code": code, "message": message, "status": status}  # fmt: skip
        out.append(self._event("error", code=code, message=message, param=None, error=error))
        return b"".join(out)


# -- translation helpers ---------------------------------------------------------------


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _response(
    id_: str,
    parsed: Parsed,
    output: list[dict[str, Any]],
    status: str,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    body = parsed.native
    return {
        "id": id_,
        "object": "response",
        "created_at": parsed.created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": parsed.model,
        "output": [dict(item) for item in output],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "metadata": body.get("metadata") or {},
    }


def _message_item(id_: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {"type": "message", "id": id_, "status": status, "role": "assistant",
            "content": [part]}  # fmt: skip


def _reasoning_item(id_: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": id_, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}  # fmt: skip


def _call_item(
    id_: str, call_id: str, name: str, arguments: str, status: str, namespaces: dict[str, str]
) -> dict[str, Any]:
    item = {"type": "function_call", "id": id_, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip
    if name in namespaces:  # a function of a namespace tool: said as the client named it
        item["namespace"] = namespaces[name]
    return item


def _input(value: object) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise refusal("input", "a string or a non-empty list of items is required")
    if len(value) > MAX_MESSAGES:
        raise refusal("input", f"at most {MAX_MESSAGES} items")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        at = f"input.{i}"
        if not isinstance(item, dict):
            raise refusal(at, "an item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, at))
        elif kind == "function_call":
            name, call_id = item.get("name"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(call_id, str):
                raise refusal(at, "a function_call item needs a name and a call_id")
            arguments = item.get("arguments")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments or {})
            call = {"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments}}  # fmt: skip
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise refusal(f"{at}.call_id", "must be a string")
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _output_text(item.get("output"), at)})  # fmt: skip
        elif kind == "reasoning":
            continue  # a local tier's reasoning is not sent back to it
        else:
            raise refusal(f"{at}.type", f"item type {clip(kind)} is not supported")
    return messages


def _message(item: dict[str, Any], at: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise refusal(f"{at}.role", "must be user, assistant, system or developer")
    chat_role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    if not isinstance(content, list):
        raise refusal(f"{at}.content", "must be a string or a list of parts")
    if len(content) > MAX_CONTENT_PARTS:
        raise refusal(f"{at}.content", f"at most {MAX_CONTENT_PARTS} parts")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{at}.content.{j}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            assert isinstance(part, dict)
            text = part.get("text", part.get("refusal"))
            if not isinstance(text, str):
                raise refusal(f"{where}.text", "must be a string")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image" and role == "user":
            assert isinstance(part, dict)
            url = part.get("image_url")
            if not isinstance(url, str):
                raise refusal(f"{where}.image_url", "an image needs an image_url (file_id is not "
                              "supported)")  # fmt: skip
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise refusal(f"{where}.type", f"part type {clip(kind)} is not supported")
    if all(p["type"] == "text" for p in parts):
        return {"role": chat_role, "content": "\n".join(p["text"] for p in parts)}
    return {"role": chat_role, "content": parts}


def _output_text(output: object, at: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for part in output:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise refusal(f"{at}.output", "a function output holds text parts")
        return "\n".join(texts)
    raise refusal(f"{at}.output", "must be a string or a list of text parts")


def _tools(tools: object, namespaces: dict[str, str]) -> list[dict[str, Any]]:
    """Function tools as chat tools; a namespace's functions are listed among them (and
    ``namespaces`` learns whose they are)."""
    if not isinstance(tools, list):
        raise refusal("tools", "must be a list")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "namespace":
            if not isinstance(tool.get("name"), str) or not isinstance(tool.get("tools"), list):
                raise refusal(f"tools.{i}", "a namespace needs a name and a list of tools")
            for j, member in enumerate(tool["tools"]):
                out.append(_function(member, f"tools.{i}.tools.{j}"))
                namespaces[out[-1]["function"]["name"]] = tool["name"]
        else:
            out.append(_function(tool, f"tools.{i}"))
        if len(out) > MAX_TOOLS:
            raise refusal("tools", f"at most {MAX_TOOLS} tools")
    return out


def _function(tool: object, at: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise refusal(at, "a tool must be an object")
    kind = tool.get("type")
    if kind != "function":
        hint = ""
        if kind in ("web_search", "web_search_preview"):
            hint = ' (Codex CLI: set web_search = "disabled" in its config.toml)'
        raise refusal(
            f"{at}.type",
            f"built-in tool {clip(kind)} is not supported: only function tools run on a "
            f"local model{hint}",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise refusal(f"{at}.name", "must be a non-empty string")
    function: dict[str, Any] = {"name": name}
    parameters = tool.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise refusal(f"{at}.parameters", "must be a JSON schema object")
        function["parameters"] = parameters
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: object) -> object:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if isinstance(name, str):
            return {"type": "function", "function": {"name": name}}
    raise refusal("tool_choice", "must be auto, none, required or a function by name")


def _format(text: object) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise refusal("text", "must be an object")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):
        schema: dict[str, Any] = {"name": fmt.get("name") or "answer", "schema": fmt["schema"]}
        if isinstance(fmt.get("strict"), bool):
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise refusal("text.format", "must be text, json_object or json_schema with a schema")


RESPONSES = Responses()
