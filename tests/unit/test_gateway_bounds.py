"""Issue 18: the request model's bounds (every size, count and number) and the checks
that need the tier (vocabulary, context, vision, runtime), one test per row.

Each case here was forwarded to the tier before the fix (``check_request`` accepted it);
``tests/unit/test_gateway_poison.py`` replays them against a real ``mlx_lm.server``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxctl.gateway import bounds
from mlxctl.gateway.bounds import RequestError, check_schema, clip, json_depth, parse_json
from mlxctl.gateway.requests import NUMBERS, Checked, Endpoint, check_request
from mlxctl.gateway.tierfit import fit_request
from mlxctl.runtimes.gateway import GatewayConfig, Route

MSG = [{"role": "user", "content": "hi"}]
TIER = Route(
    name="fast", port=8001, served_model="m", runtime="mlx-lm",
    vocab_size=300, context=2048, vision=False,
)  # fmt: skip
VISION = TIER.model_copy(update={"name": "eyes", "vision": True})
PNG = "data:image/png;base64,iVBORw0KGgo="


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": MSG, **fields}


def text(**fields: Any) -> dict[str, Any]:
    return {"model": "fast", "prompt": "hi", **fields}


def fit(
    body: dict[str, Any],
    endpoint: Endpoint = "chat",
    route: Route = TIER,
    config: GatewayConfig | None = None,
) -> Checked:
    checked = check_request(body, endpoint)
    return fit_request(checked, route, endpoint, config or GatewayConfig(routes=(route,)))


def refused(body: dict[str, Any], endpoint: Endpoint = "chat", **kw: Any) -> RequestError:
    with pytest.raises(RequestError) as err:
        fit(body, endpoint, **kw)
    assert err.value.status in (400, 413), err.value
    assert len(str(err.value)) < 600
    return err.value


# -- row 1: logit_bias ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bias",
    [
        {"999999999": 100},  # segfaulted libmlx in both runtimes
        {"300": 1},  # one past the tier's vocabulary
        {str(i): 1 for i in range(301)},  # more entries than OpenAI takes
        {"-1": 1},
        {"abc": 1},
        {"5": 101},
        {"5": -100.5},
        {"5": True},
    ],
)
def test_logit_bias_ids_past_the_vocabulary_too_many_entries_or_wild_values_are_400(
    bias: dict[str, Any],
) -> None:
    assert refused(chat(logit_bias=bias)).param == "logit_bias"


def test_logit_bias_within_the_vocabulary_passes_and_an_unknown_vocabulary_takes_none() -> None:
    assert fit(chat(logit_bias={"299": -100, "0": 5})).params["logit_bias"]
    unknown = TIER.model_copy(update={"vocab_size": None})
    assert refused(chat(logit_bias={"1": 1}), route=unknown).param == "logit_bias"
    assert fit(chat(logit_bias={}), route=unknown).params["logit_bias"] == {}


# -- rows 3 and 4: batch prompts, templates ------------------------------------------------


def test_a_batch_prompt_is_400_for_mlx_lm_and_token_prompts_for_every_tier() -> None:
    assert refused(text(prompt=["a", "b"]), "text").param == "prompt"
    assert refused(text(prompt=[1, 2, 3]), "text").param == "prompt"
    assert refused(text(prompt=[[1, 2]]), "text").param == "prompt"
    vllm = TIER.model_copy(update={"runtime": "vllm-mlx"})
    assert fit(text(prompt=["a", "b"]), "text", route=vllm).params["prompt"] == ["a", "b"]
    assert refused(text(prompt=[1, 2, 3]), "text", route=vllm).param == "prompt"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"return_tensors": "np"},  # killed mlx-lm's generation thread
        {"chat_template": "{% for i in range(99999) %}{% endfor %}"},
        {"enable_thinking": "yes"},
        {"reasoning_effort": "x" * 1000},
        {"tokenize": True},
    ],
)
def test_chat_template_kwargs_take_a_short_list_of_plain_values(kwargs: dict[str, Any]) -> None:
    err = refused(chat(chat_template_kwargs=kwargs))
    assert err.param == "chat_template_kwargs"


def test_allowed_template_kwargs_pass() -> None:
    kwargs = {"enable_thinking": False, "reasoning_effort": "low"}
    assert fit(chat(chat_template_kwargs=kwargs)).params["chat_template_kwargs"] == kwargs


@pytest.mark.parametrize("field", ["chat_template", "role_mapping", "mm_processor_kwargs"])
def test_a_client_never_supplies_a_template(field: str) -> None:
    err = refused(chat(**{field: "{{ x }}"}))
    assert (err.param, err.code) == (field, "unsupported_parameter")


def test_extensions_a_runtime_does_not_take_are_400_naming_them() -> None:
    vllm = TIER.model_copy(update={"runtime": "vllm-mlx"})
    assert refused(chat(xtc_probability=0.5), route=vllm).param == "xtc_probability"
    assert fit(chat(xtc_probability=0.5)).params["xtc_probability"] == 0.5
    unknown = TIER.model_copy(update={"runtime": ""})
    assert refused(chat(num_draft_tokens=2), route=unknown).param == "num_draft_tokens"


# -- row 5: images ---------------------------------------------------------------------------


def image(url: str) -> list[dict[str, Any]]:
    parts = [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": parts}]


def test_a_text_only_tier_refuses_image_parts() -> None:
    assert refused(chat(messages=image(PNG))).param == "messages"
    unknown = TIER.model_copy(update={"vision": None})
    assert refused(chat(messages=image(PNG)), route=unknown).param == "messages"
    assert fit(chat(messages=image(PNG)), route=VISION).images == 1


def test_remote_image_urls_are_refused_unless_the_stack_allows_them() -> None:
    for url in ("http://127.0.0.1:22/", "https://example.com/cat.png"):
        err = refused(chat(messages=image(url)), route=VISION)
        assert "remote image" in str(err)
    allowed = GatewayConfig(routes=(VISION,), remote_images=True)
    assert fit(chat(messages=image("https://example.com/c.png")), route=VISION, config=allowed)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "data:text/html;base64,PGI+",
        "data:image/png;base64," + "A" * (bounds.MAX_DATA_URL_CHARS + 1),
    ],
)
def test_other_schemes_and_oversized_or_non_image_data_urls_are_400(url: str) -> None:
    assert refused(chat(messages=image(url)), route=VISION).param == "messages"


def test_audio_video_and_file_parts_and_too_many_images_are_400() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    video = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}
    for part in (audio, video, {"type": "video", "video": "clip.mp4"}):
        content = [{"type": "text", "text": "what is this?"}, part]
        error = refused(chat(messages=[{"role": "user", "content": content}]), route=VISION)
        assert error.param == "messages" and "the tiers take text and images" in str(error)
    many = [{"type": "image_url", "image_url": {"url": PNG}}] * (bounds.MAX_IMAGES + 1)
    body = chat(messages=[{"role": "user", "content": many}])
    assert refused(body, route=VISION).param == "messages"


# -- row 6: schemas ---------------------------------------------------------------------------


def schema_with(properties: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f"p{i}": {"type": "string"} for i in range(properties)},
    }


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def deep_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    "schema",
    [
        schema_with(5000),  # pinned a vllm-mlx tier at 100% of a core for 31.7 minutes
        schema_with(bounds.MAX_RESPONSE_SCHEMA_PROPERTIES + 1),
        deep_schema(bounds.MAX_SCHEMA_DEPTH),
        {"type": "string", "description": "x" * (bounds.MAX_SCHEMA_BYTES + 1)},
    ],
)
def test_a_response_format_schema_is_bounded(schema: dict[str, Any]) -> None:
    assert refused(chat(response_format=response_format(schema))).param == "response_format"


def test_tool_parameter_schemas_and_tool_counts_are_bounded() -> None:
    def tool(params: dict[str, Any], name: str = "f") -> dict[str, Any]:
        return {"type": "function", "function": {"name": name, "parameters": params}}

    assert refused(chat(tools=[tool(schema_with(5000))])).param == "tools"
    assert refused(chat(tools=[tool(deep_schema(40))])).param == "tools"
    many = [tool({"type": "object"}, f"f{i}") for i in range(bounds.MAX_TOOLS + 1)]
    assert refused(chat(tools=many)).param == "tools"
    # An agent's tools (a dozen, a few KB each) pass.
    agents = [tool(schema_with(30), f"t{i}") for i in range(12)]
    assert len(fit(chat(tools=agents)).params["tools"]) == 12
    assert fit(chat(response_format=response_format(schema_with(20))))


# -- row 7: max_tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_is_capped_by_the_context_and_absurd_or_boolean_values_are_400(
    field: str,
) -> None:
    assert fit(chat(**{field: 100_000})).params[field] == 2048
    assert fit(chat(**{field: 10})).params[field] == 10
    assert refused(chat(**{field: 2**70})).param == field
    assert refused(chat(**{field: True})).param == field
    assert refused(chat(**{field: 0})).param == field
    unknown = TIER.model_copy(update={"context": None})
    assert fit(chat(**{field: 100_000}), route=unknown).params[field] == 100_000


# -- row 10: numbers, echoes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", float("nan")),
        ("temperature", float("inf")),
        ("temperature", -1),
        ("temperature", 2.5),
        ("top_p", 5),
        ("top_p", float("nan")),
        ("presence_penalty", 3),
        ("frequency_penalty", float("-inf")),
        ("n", 1000),
        ("n", True),
        ("top_logprobs", 100),
        ("seed", 2**70),
        ("top_k", 2**40),
        ("min_p", 2),
        ("repetition_penalty", float("nan")),
        ("repetition_context_size", 2**40),
        ("xtc_probability", 5.0),
        ("num_draft_tokens", 10_000),
        ("logprobs", 1),
        ("stream", 1),
        ("parallel_tool_calls", "yes"),
    ],
)
def test_numbers_out_of_range_and_wrong_types_are_400_naming_the_field(
    field: str, value: Any
) -> None:
    assert refused(chat(**{field: value})).param == field


def test_stops_are_bounded() -> None:
    assert refused(chat(stop=["x"] * (bounds.MAX_STOP + 1))).param == "stop"
    assert refused(chat(stop="x" * (bounds.MAX_STOP_CHARS + 1))).param == "stop"
    assert fit(chat(stop="\n")).params["stop"] == "\n"


def test_stream_options_without_include_usage_gets_it() -> None:
    assert fit(chat(stream=True, stream_options={})).params["stream_options"] == {
        "include_usage": False
    }


def test_error_messages_never_echo_much_of_the_clients_input() -> None:
    huge = "x" * 1_000_000
    assert len(str(refused({"model": huge, "messages": MSG}))) < 200
    err = refused(chat(messages=[{"role": huge, "content": "x"}]))
    assert len(str(err)) < 600
    err = refused(chat(logit_bias={huge: 1}))
    assert len(str(err)) < 300
    assert clip("a" * 100).endswith("(100 characters)")
    assert clip("\x1b[31m") == "\\x1b[31m"


# -- row 8: the body's JSON ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,  # a RecursionError and a 500 before
        '{"a": ' * 70 + "1" + "}" * 70,  # parses, but deeper than the bound
        '{"model": "fast", "temperature": NaN}',
        '{"model": "fast", "temperature": Infinity}',
        '{"model": "fast", "temperature": 1e999}',
        '{"model": "fast", "seed": ' + "9" * 5000 + "}",
        "{",
    ],
)
def test_bodies_that_are_not_bounded_strict_json_are_400(raw: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_json(raw.encode())
    assert (err.value.status, err.value.code) == (400, "invalid_json")
    assert len(str(err.value)) < 300


def test_json_depth_is_counted_without_recursion() -> None:
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    assert json_depth(deep, limit=64) == 65
    assert json_depth({"a": [1, {"b": 2}]}) == 3
    assert parse_json(json.dumps(chat()).encode()) == chat()


def test_check_schema_returns_its_size() -> None:
    assert check_schema("s", {"type": "object"}) == len('{"type":"object"}')


# -- hypothesis: whatever the numbers, nothing out of range reaches a tier --------------------

NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(sorted(NUMBERS)),
        NUMBER,
        max_size=4,
    ),
    st.dictionaries(st.text(max_size=12), st.one_of(NUMBER, st.text(max_size=5)), max_size=4),
)
def test_any_numbers_either_refused_or_forwarded_in_range(
    numbers: dict[str, Any], bias: dict[str, Any]
) -> None:
    body = chat(**numbers, logit_bias=bias)
    try:
        checked = fit(body)
    except RequestError as exc:
        assert exc.status == 400 and exc.param is not None
        return
    for name, value in checked.params.items():
        if name in NUMBERS:
            low, high, _ = NUMBERS[name]
            assert not isinstance(value, bool)
            assert low <= value <= high and value == value  # not NaN
            if name in ("max_tokens", "max_completion_tokens"):
                assert value <= 2048
    for key, value in checked.params["logit_bias"].items():
        assert 0 <= int(key) < 300 and -100 <= value <= 100
