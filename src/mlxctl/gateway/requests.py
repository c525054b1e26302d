"""Checking a client's request before any backend sees it: the OpenAI chat and text
completions request model.

The schema is the OpenAI SDK's own request types (``openai.types``), validated with
pydantic: a request ``mlx_lm.server`` would choke on (``"stop": 123`` kills its
generation thread) gets a 400 here instead. On top of the schema, every size, count
and number is bounded (:mod:`mlxctl.gateway.bounds`): NaN or a temperature of 5, a
``logit_bias`` of 100 000 entries, a 5000-property schema, a 2**70 ``max_tokens``,
``max_tokens: true``, a remote image URL are each a 400 naming the field. Fields that
would make a backend load something the stack does not name (``draft_model``,
adapters) or run a template of the client's (``chat_template``) are refused;
``chat_template_kwargs`` takes a short list of plain values. Any other field outside
the schema and the known sampling extensions is a 400 naming it; which extensions each
runtime takes, and the checks that need the tier (its vocabulary, context, vision), are
:mod:`mlxctl.gateway.tierfit`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from mlxctl.gateway.bounds import (
    MAX_CONTENT_PARTS,
    MAX_IMAGES,
    MAX_MESSAGE,
    MAX_MESSAGES,
    MAX_MODEL_NAME,
    MAX_N,
    MAX_PROMPTS,
    MAX_RESPONSE_SCHEMA_PROPERTIES,
    MAX_STOP,
    MAX_STOP_CHARS,
    MAX_TOKENS,
    MAX_TOOLS,
    MAX_TOOLS_SCHEMA_BYTES,
    MAX_TOP_LOGPROBS,
    RequestError,
    check_bool,
    check_count,
    check_data_url,
    check_logit_bias,
    check_number,
    check_schema,
    check_text,
    clip,
    refuse,
)

__all__ = ["Checked", "Endpoint", "RequestError", "check_request", "request_adapters"]

Endpoint = Literal["chat", "text"]

# A request naming one of these could make the backend load weights of its choosing.
LOADER_FIELDS = frozenset(
    {"draft_model", "adapters", "adapter_path", "adapter", "lora", "lora_path", "model_path"}
)
# A client never supplies a template (mlx-lm runs it in its generation thread: 150 bytes
# of template took a tier from 272 to 1034 MB, nested loops blocked it for hours).
TEMPLATE_FIELDS = frozenset({"chat_template", "role_mapping", "mm_processor_kwargs"})
# Sampling parameters outside the OpenAI schema that mlx_lm.server and vllm-mlx accept
# (which runtime takes which: :data:`mlxctl.gateway.tierfit.RUNTIME_EXTENSIONS`).
EXTENSIONS = frozenset(
    {
        "top_k", "min_p", "repetition_penalty", "repetition_context_size",
        "xtc_probability", "xtc_threshold", "num_draft_tokens", "chat_template_kwargs",
    }
)  # fmt: skip
API_NAMES: dict[Endpoint, str] = {"chat": "chat completions", "text": "completions"}
# The chat template's keyword arguments a client may set, and what each may be.
TEMPLATE_KWARGS: dict[str, tuple[type, frozenset[str] | None]] = {
    "enable_thinking": (bool, None),
    "thinking": (bool, None),
    "reasoning_effort": (str, frozenset({"none", "minimal", "low", "medium", "high"})),
}

# name: (low, high, integer); every bound inclusive, NaN and Infinity never in range.
NUMBERS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
    "n": (1, MAX_N, True),
    "best_of": (1, MAX_N, True),
    "max_tokens": (1, MAX_TOKENS, True),
    "max_completion_tokens": (1, MAX_TOKENS, True),
    "top_logprobs": (0, MAX_TOP_LOGPROBS, True),
    "seed": (-(1 << 63), (1 << 63) - 1, True),
    "top_k": (-1, 1 << 20, True),
    "min_p": (0, 1, False),
    "repetition_penalty": (0, 10, False),
    "repetition_context_size": (0, 1 << 16, True),
    "xtc_probability": (0, 1, False),
    "xtc_threshold": (0, 1, False),
    "num_draft_tokens": (0, 64, True),
}
BOOLS = frozenset({"stream", "echo", "parallel_tool_calls", "store"})

PromptKind = Literal["none", "text", "texts", "tokens"]


@dataclass(frozen=True)
class Checked:
    """A validated request: the public model name, the fields to forward, and what the
    tier-specific checks need to know of it (:mod:`mlxctl.gateway.tierfit`)."""

    model: str
    stream: bool
    params: dict[str, Any]
    # Image parts, and how many of them are remote (http/https) URLs.
    images: int = 0
    remote_images: int = 0
    # The largest token id ``logit_bias`` names (None: none).
    max_token_id: int | None = None
    # ``/v1/completions``: a string, a list of strings, or token ids.
    prompt: PromptKind = "none"
    # Relayed here by another machine's gateway: never relayed again (gateway.peers).
    hop: bool = False


@cache
def request_adapters(
    endpoint: Endpoint,
) -> tuple[TypeAdapter[Any], dict[str, TypeAdapter[Any]], frozenset[str]]:
    """The top-level adapter, adapters for list fields, and the schema's field names.

    pydantic validates ``Iterable[...]`` fields lazily (they would pass unchecked), so
    the SDK's iterable fields are checked again as lists.
    """
    if endpoint == "chat":
        from openai.types.chat import (
            ChatCompletionMessageParam,
            ChatCompletionToolUnionParam,
        )
        from openai.types.chat.completion_create_params import CompletionCreateParamsBase

        lists: dict[str, TypeAdapter[Any]] = {
            "messages": TypeAdapter(list[ChatCompletionMessageParam]),
            "tools": TypeAdapter(list[ChatCompletionToolUnionParam]),
        }
        base: Any = CompletionCreateParamsBase
    else:
        from openai.types.completion_create_params import CompletionCreateParamsBase as Text

        lists = {}
        base = Text
    fields = frozenset(str(k) for k in base.__annotations__) | {"stream"}
    return TypeAdapter(base), lists, fields


def _first_error(exc: ValidationError, field: str | None = None) -> RequestError:
    """pydantic's first error as one line: ``stop.str: Input should be a valid string``
    (clipped: a location or message may quote the client's input)."""
    err = exc.errors()[0]
    loc = ([field] if field else []) + [clip(p, 40) for p in err["loc"]]
    return RequestError(
        400,
        clip(f"invalid request: {'.'.join(loc)}: {err['msg']}", MAX_MESSAGE),
        code="invalid_request",
        param=loc[0] if loc else None,
    )


def check_request(body: Any, endpoint: Endpoint) -> Checked:
    """Validate ``body`` (parsed JSON) against the OpenAI schema and the gateway's bounds;
    raise :class:`RequestError`."""
    if not isinstance(body, Mapping):
        raise RequestError(400, "the request body must be a JSON object", code="invalid_request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(
            400, "'model' is required (a string)", code="invalid_request", param="model"
        )
    if len(model) > MAX_MODEL_NAME:
        refuse("model", f"at most {MAX_MODEL_NAME} characters ({len(model)} sent)")
    for fields_, why in (
        (LOADER_FIELDS, "the gateway serves only the models the stack names"),
        (TEMPLATE_FIELDS, "the tier's own chat template is used, never a client's"),
    ):
        named = sorted(fields_ & body.keys())
        if named:
            raise RequestError(400, f"'{named[0]}' is not accepted: {why}",
                               code="unsupported_parameter", param=named[0])  # fmt: skip
    top, lists, fields = request_adapters(endpoint)
    try:
        top.validate_python(body)
    except ValidationError as exc:
        raise _first_error(exc) from None
    for name, adapter in lists.items():
        if body.get(name) is not None:
            check_count(name, body[name], MAX_TOOLS if name == "tools" else MAX_MESSAGES)
            try:
                adapter.validate_python(body[name])
            except ValidationError as exc:
                raise _first_error(exc, name) from None
    unknown = sorted(k for k in body if k != "model" and k not in fields and k not in EXTENSIONS)
    if unknown:
        # Issue 18: what reaches a backend is the schema plus a known list; anything else
        # is named back, never silently forwarded nor silently dropped.
        name = clip(str(unknown[0]))
        raise RequestError(
            400,
            f"unknown parameter '{name}': not part of the OpenAI {API_NAMES[endpoint]} API nor "
            f"an extension the gateway forwards ({', '.join(sorted(EXTENSIONS))})",
            code="unknown_parameter",
            param=name,
        )
    params = {k: v for k, v in body.items() if k != "model"}
    _check_values(params, endpoint)
    images, remote = _check_messages(params.get("messages"))
    return Checked(
        model=model,
        stream=bool(params.get("stream")),
        params=params,
        images=images,
        remote_images=remote,
        max_token_id=check_logit_bias("logit_bias", params.get("logit_bias")),
        prompt=_prompt_kind(params.get("prompt")) if endpoint == "text" else "none",
    )


def _check_values(params: dict[str, Any], endpoint: Endpoint) -> None:
    """Numbers in range, booleans that are booleans, stops, schemas, template kwargs.

    Checks the values as they will be forwarded (the client's JSON, not pydantic's
    coercions: ``max_tokens: true`` is not 1)."""
    for name, value in params.items():
        if value is None:
            continue
        if name in NUMBERS:
            low, high, integer = NUMBERS[name]
            check_number(name, value, low, high, integer=integer)
        elif name in BOOLS or (name == "logprobs" and endpoint == "chat"):
            check_bool(name, value)
        elif name == "logprobs":  # /v1/completions: how many, 0-5
            check_number(name, value, 0, 5, integer=True)
    stop = params.get("stop")
    if isinstance(stop, str):
        check_text("stop", stop, MAX_STOP_CHARS)
    elif isinstance(stop, list):
        check_count("stop", stop, MAX_STOP)
        for i, item in enumerate(stop):
            check_text(f"stop[{i}]", item, MAX_STOP_CHARS)
    options = params.get("stream_options")
    if isinstance(options, dict) and "include_usage" not in options:
        # mlx_lm.server reads stream_options["include_usage"] unconditionally.
        params["stream_options"] = {**options, "include_usage": False}
    _check_template_kwargs(params.get("chat_template_kwargs"))
    _check_schemas(params)


def _check_template_kwargs(kwargs: object) -> None:
    if kwargs is None:
        return
    if not isinstance(kwargs, dict):
        refuse("chat_template_kwargs", "must be an object")
    assert isinstance(kwargs, dict)
    allowed = ", ".join(sorted(TEMPLATE_KWARGS))
    for key, value in kwargs.items():
        param = f"chat_template_kwargs.{key}"
        if key not in TEMPLATE_KWARGS:
            refuse(param, f"not accepted (the template takes only {allowed})",
                   code="unsupported_parameter")  # fmt: skip
        kind, choices = TEMPLATE_KWARGS[key]
        if kind is bool:
            check_bool(param, value)
        elif not isinstance(value, str) or (choices is not None and value not in choices):
            refuse(param, f"one of {', '.join(sorted(choices or ()))}")


def _check_schemas(params: dict[str, Any]) -> None:
    """``response_format``'s schema (compiled into a grammar by some backends) and the
    tools' parameter schemas (rendered into the prompt) are bounded."""
    fmt = params.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if isinstance(spec, dict):
            check_schema("response_format.json_schema.schema", spec.get("schema"),
                         max_properties=MAX_RESPONSE_SCHEMA_PROPERTIES)  # fmt: skip
    total = 0
    for field in ("tools", "functions"):
        entries = params.get(field)
        if not isinstance(entries, list):
            continue
        check_count(field, entries, MAX_TOOLS)
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            function = entry.get("function") if field == "tools" else entry
            if isinstance(function, dict):
                where = f"{field}[{i}].function.parameters" if field == "tools" else f"{field}[{i}]"
                total += check_schema(where, function.get("parameters"))
            if field == "tools" and isinstance(entry.get("custom"), dict):
                total += check_schema(f"tools[{i}].custom", entry["custom"])
    if total > MAX_TOOLS_SCHEMA_BYTES:
        refuse("tools", f"the tools' schemas add up to {total} bytes; at most "
                        f"{MAX_TOOLS_SCHEMA_BYTES}")  # fmt: skip


def _check_messages(messages: object) -> tuple[int, int]:
    """Content parts bounded; image parts counted (remote ones apart), data URLs bounded,
    other URL schemes refused; audio and file parts refused (no local runtime reads them
    safely). Returns (images, remote images)."""
    if not isinstance(messages, list):
        return 0, 0
    images = remote = 0
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        check_count(f"messages[{i}].content", content, MAX_CONTENT_PARTS)
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            where = f"messages[{i}].content[{j}]"
            if kind in ("input_audio", "file", "video_url", "video"):
                refuse(where, f"'{kind}' parts are not accepted: the tiers take text and images",
                       code="unsupported_parameter")  # fmt: skip
            if kind != "image_url":
                continue
            assert isinstance(part, dict)
            images += 1
            url = part["image_url"]["url"]
            scheme = url[:8].lower()
            if scheme.startswith("data:"):
                check_data_url(f"{where}.image_url.url", url)
            elif scheme.startswith(("http://", "https://")):
                remote += 1
            else:
                refuse(f"{where}.image_url.url", "an image is a data: URL (or an http(s) URL "
                       "where the stack allows remote images)")  # fmt: skip
    if images > MAX_IMAGES:
        refuse("messages", f"at most {MAX_IMAGES} images in a request ({images} sent)")
    return images, remote


def _prompt_kind(prompt: object) -> PromptKind:
    """A completions prompt: a string, a batch of strings (bounded), or token ids."""
    if isinstance(prompt, str):
        return "text"
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        check_count("prompt", prompt, MAX_PROMPTS)
        return "texts"
    return "tokens"
