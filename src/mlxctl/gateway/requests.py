"""Checking a client's request before any backend sees it.

The schema is the OpenAI SDK's own request types (``openai.types``), validated with
pydantic: a request ``mlx_lm.server`` would choke on (``"stop": 123`` kills its
generation thread) gets a 400 here instead. Fields that would make a backend load
something the stack does not name (``draft_model``, adapters) are refused; other
fields outside the schema are dropped unless they are a known sampling extension
that the local servers understand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

Endpoint = Literal["chat", "text"]

# A request naming one of these could make the backend load weights of its choosing.
LOADER_FIELDS = frozenset(
    {"draft_model", "adapters", "adapter_path", "adapter", "lora", "lora_path", "model_path"}
)
# Sampling parameters outside the OpenAI schema that mlx_lm.server and vllm-mlx accept.
EXTENSIONS = frozenset(
    {
        "top_k", "min_p", "repetition_penalty", "repetition_context_size",
        "xtc_probability", "xtc_threshold", "num_draft_tokens", "chat_template_kwargs",
    }
)  # fmt: skip


class RequestError(ValueError):
    """A request the gateway refuses: ``status``, an OpenAI error ``code`` and ``param``."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


@dataclass(frozen=True)
class Checked:
    """A validated request: the public model name and the fields to forward."""

    model: str
    stream: bool
    params: dict[str, Any]


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
    """pydantic's first error as one line: ``stop.str: Input should be a valid string``."""
    err = exc.errors()[0]
    loc = ([field] if field else []) + [str(p) for p in err["loc"]]
    return RequestError(
        400,
        f"invalid request: {'.'.join(loc)}: {err['msg']}",
        code="invalid_request",
        param=loc[0] if loc else None,
    )


def check_request(body: Any, endpoint: Endpoint) -> Checked:
    """Validate ``body`` (parsed JSON) against the OpenAI schema; raise :class:`RequestError`."""
    if not isinstance(body, Mapping):
        raise RequestError(400, "the request body must be a JSON object", code="invalid_request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(
            400, "'model' is required (a string)", code="invalid_request", param="model"
        )
    loaders = sorted(LOADER_FIELDS & body.keys())
    if loaders:
        raise RequestError(
            400,
            f"'{loaders[0]}' is not accepted: the gateway serves only the models the stack names",
            code="unsupported_parameter",
            param=loaders[0],
        )
    top, lists, fields = request_adapters(endpoint)
    try:
        top.validate_python(body)
    except ValidationError as exc:
        raise _first_error(exc) from None
    for name, adapter in lists.items():
        if body.get(name) is not None:
            try:
                adapter.validate_python(body[name])
            except ValidationError as exc:
                raise _first_error(exc, name) from None
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(
            400,
            "invalid request: stream: must be a boolean",
            code="invalid_request",
            param="stream",
        )
    params = {k: v for k, v in body.items() if k != "model" and (k in fields or k in EXTENSIONS)}
    return Checked(model=model, stream=bool(stream), params=params)
