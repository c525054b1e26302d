"""The gateway's bounds on a request: every size, count and number, and the helpers that
check them (shared by every API family: OpenAI chat and completions, Responses,
Anthropic Messages).

The servers behind the gateway are fragile (issue 18): one out-of-range token id in
``logit_bias`` segfaults libmlx, a 5000-property JSON schema pins a tier for half an
hour, a NaN temperature reaches the sampler. Nothing a client sends reaches a backend
unless it is within the limits here; a value outside them is a 400 naming the field,
and no error message echoes more than :data:`MAX_ECHO` characters of the client's input.

Every helper raises :class:`RequestError` (``status``, OpenAI error ``code``, ``param``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

# -- the body ---------------------------------------------------------------------------
# Bytes of a request body; more is a 413, refused before it is read (Content-Length) or
# as soon as it is (a chunked body). Agents' requests are ~40-50 KB; a few images fit.
MAX_BODY_BYTES = 16 << 20
# Nesting of JSON containers in a body (a chat request needs ~8; a tool schema ~20).
MAX_JSON_DEPTH = 64
# Bodies larger than this are parsed in a worker thread, not on the event loop.
PARSE_OFF_LOOP_BYTES = 256 << 10
# Seconds to receive a whole body once its headers came (a body shorter than its
# Content-Length, or one trickled a byte a minute, is a 408 after this).
BODY_READ_SECONDS = 60.0
# Seconds a connection may take to send a request's headers.
HEADER_READ_SECONDS = 30.0

# -- echoes -----------------------------------------------------------------------------
# Characters of client input an error message may repeat (a 1 MB model name is not echoed).
MAX_ECHO = 64
# Characters of a whole error message built from validation errors.
MAX_MESSAGE = 400

# -- counts -----------------------------------------------------------------------------
MAX_MESSAGES = 10_000
MAX_CONTENT_PARTS = 1_000  # parts of one message's content
MAX_IMAGES = 16  # image parts in one request
MAX_TOOLS = 256
MAX_STOP = 16  # stop sequences
MAX_STOP_CHARS = 1_024  # characters of one stop sequence
MAX_N = 16  # choices (n, best_of)
MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 64  # strings in a batch prompt (runtimes that take one)
MAX_MODEL_NAME = 256

# -- logit_bias ---------------------------------------------------------------------------
MAX_LOGIT_BIAS = 300  # entries (OpenAI's limit)
LOGIT_BIAS_RANGE = 100.0  # each bias in [-100, 100]
# A token id no vocabulary reaches: the bound when the tier's vocabulary is unknown.
MAX_TOKEN_ID = (1 << 31) - 1

# -- tokens -------------------------------------------------------------------------------
# The largest max_tokens a request may name at all (2**70 is refused); a tier's own
# context caps it further (:mod:`mlxctl.gateway.tierfit`).
MAX_TOKENS = (1 << 31) - 1

# -- images -------------------------------------------------------------------------------
# Characters of one data URL (base64: ~7.5 MB of image).
MAX_DATA_URL_CHARS = 10 << 20

# -- JSON schemas (response_format, tool parameters) ---------------------------------------
MAX_SCHEMA_BYTES = 64 << 10  # one schema, serialized
MAX_SCHEMA_DEPTH = 24  # nesting of its containers
MAX_SCHEMA_PROPERTIES = 512  # entries of every "properties" object in it, added up
MAX_SCHEMA_NODES = 8_192  # objects and arrays in it
# A response_format schema becomes a grammar the backend compiles and runs per token:
# tighter than a tool's, which only reaches the chat template as text.
MAX_RESPONSE_SCHEMA_PROPERTIES = 256
MAX_TOOLS_SCHEMA_BYTES = 1 << 20  # every tool's parameters, added up


class RequestError(ValueError):
    """A request the gateway refuses: ``status``, an OpenAI error ``code`` and ``param``."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


def clip(value: object, limit: int = MAX_ECHO) -> str:
    """``value`` as text for an error message: at most ``limit`` characters of it, the
    rest counted (``'aaaa…' (1048576 characters)``), control characters escaped."""
    text = value if isinstance(value, str) else repr(value)
    head = text[:limit].encode("unicode_escape").decode("ascii")
    if len(text) <= limit:
        return head
    return f"{head}… ({len(text)} characters)"


def refusal(
    param: str, message: str, *, code: str = "invalid_request", status: int = 400
) -> RequestError:
    """The 400 for ``param`` (its name clipped: a name may come from the client)."""
    name = ".".join(clip(p, 40) for p in param.split(".")) if param else param
    top = name.split(".")[0].split("[")[0] if name else None
    return RequestError(status, f"invalid request: {name}: {message}", code=code, param=top)


def refuse(param: str, message: str, *, code: str = "invalid_request", status: int = 400) -> None:
    """Raise :func:`refusal`."""
    raise refusal(param, message, code=code, status=status)


def is_number(value: object) -> bool:
    """A JSON number (never a bool: ``true`` is not 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_number(
    param: str,
    value: object,
    low: float,
    high: float,
    *,
    integer: bool = False,
) -> None:
    """``value`` is a finite number (an integer when ``integer``) in ``[low, high]``."""
    if integer:
        if not isinstance(value, int) or isinstance(value, bool):
            refuse(param, "must be an integer")
    elif not is_number(value):
        refuse(param, "must be a number")
    assert isinstance(value, int | float)
    if isinstance(value, float) and not math.isfinite(value):
        refuse(param, "must be a finite number")
    if not low <= value <= high:
        refuse(param, f"must be between {_num(low)} and {_num(high)}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check_bool(param: str, value: object) -> None:
    if not isinstance(value, bool):
        refuse(param, "must be a boolean")


def check_text(param: str, value: object, limit: int) -> None:
    """A string of at most ``limit`` characters."""
    if not isinstance(value, str):
        refuse(param, "must be a string")
    assert isinstance(value, str)
    if len(value) > limit:
        refuse(param, f"at most {limit} characters ({len(value)} sent)")


def check_count(param: str, value: object, limit: int) -> None:
    """A list (or object) of at most ``limit`` entries."""
    if isinstance(value, list | dict) and len(value) > limit:
        refuse(param, f"at most {limit} entries ({len(value)} sent)")


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of parsed JSON ``value`` (iterative: a deep value cannot blow
    the stack); stops counting past ``limit`` (returns ``limit + 1``)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ValueError("a number too large for a double")
    return value


def parse_json(data: bytes | str) -> Any:
    """Parse a request body: strict JSON (``NaN``, ``Infinity`` and numbers past a double
    refused), nested at most :data:`MAX_JSON_DEPTH`. Raises :class:`RequestError`."""
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise RequestError(
            400, f"the request body nests deeper than {MAX_JSON_DEPTH}", code="invalid_json"
        ) from None
    except ValueError as exc:
        why = clip(str(exc).splitlines()[0] if str(exc) else "", 120)
        raise RequestError(400, f"the request body is not valid JSON: {why}",
                           code="invalid_json") from None  # fmt: skip
    if json_depth(value) > MAX_JSON_DEPTH:
        raise RequestError(
            400, f"the request body nests deeper than {MAX_JSON_DEPTH}", code="invalid_json"
        )
    return value


def check_schema(
    param: str,
    schema: object,
    *,
    max_properties: int = MAX_SCHEMA_PROPERTIES,
    max_bytes: int = MAX_SCHEMA_BYTES,
) -> int:
    """A JSON schema a backend may compile (``response_format``) or render (tools):
    at most ``max_bytes`` serialized, :data:`MAX_SCHEMA_DEPTH` deep,
    :data:`MAX_SCHEMA_NODES` containers and ``max_properties`` properties in all.
    Returns its serialized size."""
    if schema is None:
        return 0
    if not isinstance(schema, Mapping):
        refuse(param, "a JSON schema must be an object")
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > max_bytes:
        refuse(param, f"the schema is {size} bytes; at most {max_bytes}")
    nodes = properties = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
            props = node.get("properties")
            if isinstance(props, dict):
                properties += len(props)
        elif isinstance(node, list):
            children = node
        else:
            continue
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH:
            refuse(param, f"the schema nests deeper than {MAX_SCHEMA_DEPTH}")
        stack.extend((child, depth + 1) for child in children)
    if nodes > MAX_SCHEMA_NODES:
        refuse(param, f"the schema has {nodes} objects and arrays; at most {MAX_SCHEMA_NODES}")
    if properties > max_properties:
        refuse(param, f"the schema has {properties} properties; at most {max_properties}")
    return size


def check_logit_bias(param: str, bias: object, vocab_size: int | None = None) -> int | None:
    """``{"token id": bias}``: at most :data:`MAX_LOGIT_BIAS` entries, ids decimal integers
    below ``vocab_size`` (the tier's vocabulary; :data:`MAX_TOKEN_ID` when unknown),
    biases finite in [-100, 100]. Returns the largest id (None: no entry)."""
    if bias is None:
        return None
    if not isinstance(bias, Mapping):
        refuse(param, "must be an object of token ids to biases")
    assert isinstance(bias, Mapping)
    if len(bias) > MAX_LOGIT_BIAS:
        refuse(param, f"at most {MAX_LOGIT_BIAS} entries ({len(bias)} sent)")
    limit = vocab_size if vocab_size is not None else MAX_TOKEN_ID + 1
    largest: int | None = None
    for key, value in bias.items():
        text = str(key)
        if not (text.isascii() and text.isdigit() and len(text) <= 10):
            refuse(f"{param}.{text}", "a token id is a non-negative decimal integer")
        token = int(text)
        if token >= limit:
            refuse(f"{param}.{text}", f"no such token: the vocabulary has {limit} tokens")
        check_number(f"{param}.{text}", value, -LOGIT_BIAS_RANGE, LOGIT_BIAS_RANGE)
        largest = token if largest is None else max(largest, token)
    return largest


def check_data_url(param: str, url: str) -> None:
    """An inline image: ``data:image/...;base64,`` and at most :data:`MAX_DATA_URL_CHARS`."""
    if len(url) > MAX_DATA_URL_CHARS:
        refuse(param, f"a data URL of at most {MAX_DATA_URL_CHARS} characters ({len(url)} sent)")
    head = url[:100].partition(",")[0].lower()
    if not head.startswith("data:image/") or not head.endswith(";base64"):
        refuse(param, "an inline image is a data:image/...;base64, URL")
