"""A prompt longer than the tier's context (:mod:`mlxctl.gateway.prompt_tokens`): a 400
naming both numbers, counted with the tier's own tokenizer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from mlxctl.desired.resolve import model_facts
from mlxctl.gateway import prompt_tokens
from mlxctl.gateway.anthropic import MESSAGES
from mlxctl.gateway.bounds import RequestError
from mlxctl.gateway.prompt_tokens import PER_MESSAGE, fit_context
from mlxctl.gateway.requests import Checked, Endpoint, check_request
from mlxctl.runtimes.gateway import Route
from mlxctl.testing.tiny_model import build_tiny_tokenizer

WORDS = "the quick brown fox jumps over the lazy dog "


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def tier(tokenizer: Path | None, context: int | None = 256) -> Route:
    return Route(name="fast", port=8001, served_model="m", runtime="mlx-lm", context=context,
                 tokenizer=str(tokenizer) if tokenizer else None)  # fmt: skip


def fit(body: dict[str, Any], route: Route, endpoint: Endpoint = "chat") -> Checked:
    return asyncio.run(
        fit_context(check_request({"model": "fast", **body}, endpoint), route, endpoint)
    )


def refusal(body: dict[str, Any], route: Route, endpoint: Endpoint = "chat") -> RequestError:
    with pytest.raises(RequestError) as err:
        fit(body, route, endpoint)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    return err.value


def tokens(path: Path, text: str) -> int:
    from tokenizers import Tokenizer

    return len(Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids)


def test_a_prompt_longer_than_the_context_is_a_400_naming_both_numbers(
    tokenizer_file: Path,
) -> None:
    text = WORDS * 40
    n = tokens(tokenizer_file, text)
    assert n > 256
    err = refusal({"messages": [{"role": "user", "content": text}], "max_tokens": 10},
                  tier(tokenizer_file))  # fmt: skip
    assert f"{n + PER_MESSAGE} prompt tokens (+ max_tokens 10) > the tier's context 256" in str(err)
    assert err.param == "messages"
    err = refusal({"prompt": text}, tier(tokenizer_file), "text")
    assert f"{n} prompt tokens > the tier's context 256" in str(err)
    assert err.param == "prompt"


def test_the_count_covers_every_message_part_and_tool_call(tokenizer_file: Path) -> None:
    half = WORDS * 4  # under the context alone, over it twice
    assert 128 < tokens(tokenizer_file, half) < 256
    messages = [
        {"role": "system", "content": [{"type": "text", "text": half}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
         "function": {"name": "f", "arguments": json.dumps({"a": half})}}]},
    ]  # fmt: skip
    refusal({"messages": messages}, tier(tokenizer_file))


def test_a_prompt_that_fits_passes_with_max_tokens_lowered_to_what_is_left(
    tokenizer_file: Path,
) -> None:
    text = WORDS * 2
    n = tokens(tokenizer_file, text) + PER_MESSAGE
    body = {"messages": [{"role": "user", "content": text}]}
    route = tier(tokenizer_file)
    assert fit({**body, "max_tokens": 5}, route).params["max_tokens"] == 5
    assert fit({**body, "max_tokens": 250}, route).params["max_tokens"] == 256 - n
    assert "max_tokens" not in fit(body, route).params
    # No context known: nothing is counted.
    assert fit({**body, "max_tokens": 250}, tier(tokenizer_file, None)).params["max_tokens"] == 250


def test_long_prompts_are_encoded_off_the_event_loop(
    tokenizer_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[object] = []
    real = asyncio.to_thread

    async def spy(func: Any, *args: Any) -> Any:
        threads.append(func)
        return await real(func, *args)

    monkeypatch.setattr(prompt_tokens.asyncio, "to_thread", spy)
    prompt_tokens._cache.clear()
    fit({"prompt": "hi"}, tier(tokenizer_file), "text")
    assert len(threads) == 1  # the tokenizer's first load
    fit({"prompt": "hi"}, tier(tokenizer_file), "text")
    assert len(threads) == 1  # cached; a short prompt is encoded inline
    refusal({"prompt": WORDS * 400}, tier(tokenizer_file), "text")
    assert len(threads) == 2


def test_without_a_tokenizer_only_a_prompt_certainly_too_long_is_refused(tmp_path: Path) -> None:
    route = tier(None)
    fits_maybe = "x" * (4 * 256 * 2)  # an estimate of twice the context: maybe
    assert fit({"prompt": fits_maybe}, route, "text").params["prompt"] == fits_maybe
    err = refusal({"prompt": fits_maybe + "x" * 8}, route, "text")
    assert "about 514 prompt tokens > the tier's context 256" in str(err)
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json", encoding="utf-8")
    assert fit({"prompt": fits_maybe}, tier(broken), "text").params["prompt"] == fits_maybe


def test_the_routes_name_the_model_s_tokenizer(tokenizer_file: Path, tmp_path: Path) -> None:
    assert model_facts(tokenizer_file.parent)["tokenizer"] == str(tokenizer_file)
    assert "tokenizer" not in model_facts(tmp_path)


@pytest.mark.parametrize(
    ("path", "body", "type_"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "TEXT"}]}, None),
        ("/v1/completions", {"prompt": "TEXT"}, None),
        ("/v1/messages", {"max_tokens": 10, "messages": [{"role": "user", "content": "TEXT"}]},
         "invalid_request_error"),
        ("/v1/responses", {"input": "TEXT"}, None),
    ],
)  # fmt: skip
def test_every_route_answers_the_400_before_the_tier_sees_the_request(
    tokenizer_file: Path, path: str, body: dict[str, Any], type_: str | None
) -> None:
    import httpx

    from mlxctl.gateway.app import Gateway, build_app
    from mlxctl.gateway.routing import RoutingTable
    from mlxctl.runtimes.gateway import GatewayConfig

    route = tier(tokenizer_file).model_copy(update={"port": 1})  # nothing listens there
    app = build_app(Gateway("k" * 32, RoutingTable(GatewayConfig(routes=(route,)))))
    payload = json.loads(json.dumps({"model": "fast", **body}).replace("TEXT", WORDS * 40))

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            headers = {"Authorization": "Bearer " + "k" * 32}
            return await client.post(path, json=payload, headers=headers)

    answer = asyncio.run(post())
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "> the tier's context 256" in error["message"]
    if type_ is not None:
        assert error["type"] == type_
    else:
        assert error["code"] == "context_length_exceeded"


# -- POST /v1/messages/count_tokens: the same count, with the tier's tokenizer ------------

CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"name": "get_weather", "description": "The weather in a city.", "input_schema": CITY}
TURNS: Any = {
    "system": [{"type": "text", "text": "be brief"}],
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "let me look"},
            {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "content": "sunny"}]},
    ],
}  # fmt: skip
# The chat prompt TURNS becomes (system, user, assistant with its call, the tool's
# result: 4 messages), as the context check renders it.
RENDERED = "\n".join(
    ["be brief", "weather in Paris?", "let me look", "get_weather", '{"city": "Paris"}', "sunny"]
)
FUNCTION = json.dumps(
    {"name": "get_weather", "parameters": WEATHER["input_schema"],
     "description": WEATHER["description"]}, separators=(",", ":"),
)  # fmt: skip


def count_tokens(*routes: Route, body: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
    """``POST /v1/messages/count_tokens`` to the gateway app in front of ``routes``:
    (status, answer, the gateway)."""
    import httpx

    from mlxctl.gateway.app import Gateway, build_app
    from mlxctl.gateway.routing import RoutingTable
    from mlxctl.runtimes.gateway import GatewayConfig

    gateway = Gateway("k" * 32, RoutingTable(GatewayConfig(routes=routes)))
    app = build_app(gateway)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.post("/v1/messages/count_tokens", json=body,
                                     headers={"x-api-key": "k" * 32})  # fmt: skip

    answer = asyncio.run(post())
    return answer.status_code, answer.json(), gateway


def test_count_tokens_counts_the_prompt_with_the_tiers_tokenizer_as_the_context_check_does(
    tokenizer_file: Path,
) -> None:
    # Port 1: nothing listens there, so a request sent to the tier would fail.
    route = tier(tokenizer_file).model_copy(update={"port": 1, "aliases": ("claude-tiny",)})
    status, answer, _ = count_tokens(route, body={"model": "claude-tiny", **TURNS})
    assert status == 200, answer
    # The tiny model's template shows the model no tools: they are not counted.
    assert answer == {"input_tokens": tokens(tokenizer_file, RENDERED) + 4 * PER_MESSAGE}
    assert count_tokens(route, body={"model": "fast", **TURNS})[1] == answer
    # The context check counts the same: 4 tokens of context more than the prompt fit.
    context = answer["input_tokens"]
    chat = MESSAGES.parse({"model": "fast", "max_tokens": 100, **TURNS}).chat
    with pytest.raises(RequestError, match=f"{context} prompt tokens"):
        fit(chat, route.model_copy(update={"context": context}))
    assert fit(chat, route.model_copy(update={"context": context + 4})).params["max_tokens"] == 4
    # Unknown model: Anthropic's 404, naming the models.
    status, answer, _ = count_tokens(route, body={"model": "nope", **TURNS})
    assert status == 404 and "models: claude-tiny, fast" in answer["error"]["message"]


def test_the_tools_count_when_the_models_template_renders_them(tmp_path: Path) -> None:
    from mlxctl.testing.tiny_model import build_tiny_tokenizer

    file = build_tiny_tokenizer(tmp_path / "tools")
    (file.parent / "chat_template.jinja").write_text(
        "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    status, answer, _ = count_tokens(tier(file), body={"model": "fast", **TURNS})
    assert status == 200, answer
    expected = tokens(file, RENDERED + "\n" + FUNCTION) + 4 * PER_MESSAGE
    assert answer == {"input_tokens": expected}
    assert expected > tokens(file, RENDERED) + 4 * PER_MESSAGE


@pytest.mark.parametrize(
    "config",
    [
        {"chat_template": "{{ tools }}"},
        {"chat_template": [{"name": "default", "template": "x"},
                           {"name": "tool_use", "template": "{% if tools %}t{% endif %}"}]},
    ],
)  # fmt: skip
def test_a_template_in_tokenizer_config_json_says_whether_tools_are_rendered(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert prompt_tokens.renders_tools(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "tool_call"}))
    assert not prompt_tokens.renders_tools(tmp_path)
    assert not prompt_tokens.renders_tools(tmp_path / "absent")


def test_count_tokens_without_a_tokenizer_is_the_estimate_message_start_carries() -> None:
    status, answer, _ = count_tokens(tier(None), body={"model": "fast", **TURNS})
    assert status == 200
    rendered = len(RENDERED.encode()) // prompt_tokens.BYTES_PER_TOKEN + 4 * PER_MESSAGE
    assert answer == {"input_tokens": rendered}
    parsed = MESSAGES.parse({"model": "fast", "max_tokens": 100, **TURNS})
    assert MESSAGES.translator(parsed).input_estimate == rendered


def test_count_tokens_loads_no_tier_and_encodes_long_prompts_off_the_event_loop(
    tokenizer_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[object] = []
    real = asyncio.to_thread

    async def spy(func: Any, *args: Any) -> Any:
        threads.append(func)
        return await real(func, *args)

    monkeypatch.setattr(prompt_tokens.asyncio, "to_thread", spy)
    prompt_tokens._cache.clear()
    cold = tier(tokenizer_file).model_copy(update={"port": 1, "on_demand": True, "hold": 60.0})
    long = WORDS * 400
    body = {"model": "fast", "messages": [{"role": "user", "content": long}]}
    status, answer, gateway = count_tokens(cold, body=body)
    assert (status, answer) == (200, {"input_tokens": tokens(tokenizer_file, long) + PER_MESSAGE})
    assert len(threads) == 2  # the tokenizer's load, then the long prompt's encoding
    # An on-demand tier is counted cold: no demand reported, nothing held or sent.
    load = gateway.demand.snapshot().tiers.get("fast")
    assert load is None or (load.waiting, load.in_flight) == (0, 0)
