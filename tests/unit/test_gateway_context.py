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
