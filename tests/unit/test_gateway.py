"""The gateway's pure parts: request checks, routes, the Router's arguments, the stack
fields behind them, and what resolution puts in the routes file and the launch hash."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mlxctl.desired.resolve import ResolveContext, resolve_desired
from mlxctl.errors import SpecError
from mlxctl.gateway.requests import Endpoint, RequestError, check_request
from mlxctl.gateway.routing import router_kwargs
from mlxctl.runtimes.gateway import GatewayConfig, RemoteRoute, Route, parse_config
from mlxctl.sources.path import path_ref
from mlxctl.spec.loader import load_stack_set

HEAD = "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n"
MSG = [{"role": "user", "content": "hi"}]


def refused(body: dict[str, Any], endpoint: Any = "chat") -> RequestError:
    with pytest.raises(RequestError) as err:
        check_request(body, endpoint)
    return err.value


def test_a_valid_request_keeps_schema_fields_and_sampling_extensions_only() -> None:
    body = {"model": "fast", "messages": MSG, "max_tokens": 1, "top_k": 5}
    checked = check_request(body, "chat")
    assert checked.model == "fast" and checked.stream is False
    assert checked.params == {"messages": MSG, "max_tokens": 1, "top_k": 5}


@pytest.mark.parametrize(("field", "endpoint"), [("junk", "chat"), ("cache_prompt", "text")])
def test_a_field_outside_the_schema_and_the_extensions_is_a_400_naming_it(
    field: str, endpoint: Endpoint
) -> None:
    """Issue 18: only the schema and a known list of extensions reach a backend; anything
    else is named back to the client, never silently dropped or forwarded."""
    base = (
        {"model": "fast", "messages": MSG}
        if endpoint == "chat"
        else {"model": "fast", "prompt": "x"}
    )
    err = refused({**base, field: 1}, endpoint)
    assert (err.status, err.param, err.code) == (400, field, "unknown_parameter")
    assert f"unknown parameter '{field}'" in str(err)


def test_stop_of_the_wrong_type_is_a_400_naming_the_field() -> None:
    err = refused({"model": "fast", "messages": MSG, "stop": 123})
    assert (err.status, err.param) == (400, "stop")
    assert "stop" in str(err)
    assert refused({"model": "fast", "prompt": "x", "stop": 123}, "text").param == "stop"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fast", "messages": [{"role": "user"}]}, "messages"),  # no content
        ({"model": "fast", "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"model": "fast", "messages": MSG, "max_tokens": "many"}, "max_tokens"),
        ({"model": "fast", "messages": MSG, "tools": [{"type": "function"}]}, "tools"),
        ({"model": "fast", "messages": MSG, "stream": "yes"}, "stream"),
        ({"messages": MSG}, "model"),
    ],
)
def test_requests_outside_the_openai_schema_are_400(body: dict[str, Any], param: str) -> None:
    err = refused(body)
    assert (err.status, err.param) == (400, param)


@pytest.mark.parametrize("field", ["draft_model", "adapters", "adapter_path"])
def test_fields_that_load_another_model_are_refused(field: str) -> None:
    err = refused({"model": "fast", "messages": MSG, field: "/elsewhere"})
    assert (err.status, err.code, err.param) == (400, "unsupported_parameter", field)


def test_tool_definitions_and_streams_pass() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    checked = check_request(
        {"model": "m", "messages": MSG, "tools": [tool], "stream": True}, "chat"
    )
    assert checked.stream and checked.params["tools"] == [tool]


def config(**kw: Any) -> GatewayConfig:
    routes = (
        Route(name="fast", port=8001, served_model="default_model", aliases=("gpt-4o-mini",)),
        Route(name="standard", port=8002, served_model="default_model"),
    )
    return GatewayConfig(routes=routes, **kw)


def test_aliases_resolve_to_their_tier_and_a_tier_name_wins_over_an_alias() -> None:
    names = config().public_names()
    assert names == {"fast": "fast", "gpt-4o-mini": "fast", "standard": "standard"}


def test_router_gets_fallbacks_where_it_reads_them_and_no_cooldown() -> None:
    remote = RemoteRoute(name="cloud", model="openrouter/a/b", api_key_env="K")
    kw = router_kwargs(
        config(fallbacks={"fast": ("standard", "cloud")}, remotes=(remote,), retries=2),
        {"K": "sk-remote"},
    )
    assert kw["fallbacks"] == [{"fast": ["standard", "cloud"]}]
    assert kw["disable_cooldowns"] is True
    assert kw["num_retries"] == 1  # the fast path made the first attempt
    by_name = {d["model_name"]: d["litellm_params"] for d in kw["model_list"]}
    assert by_name["fast"]["api_base"] == "http://127.0.0.1:8001/v1"
    assert by_name["cloud"] == {"model": "openrouter/a/b", "api_key": "sk-remote"}


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(body), "  "))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as err:
        load_stack_set([path])
    return err.value.problems


def test_a_fallback_to_nothing_and_a_taken_alias_are_errors_with_their_line(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """\
        tiers:
          - {name: fast, runtime: mlx-lm, model: {path: /a}, fallbacks: [standrd]}
          - {name: standard, runtime: mlx-lm, model: {path: /b}, aliases: [fast]}
        """,
    )
    assert problems(path) == [
        f"{path}:6:1: tier 'fast': fallback 'standrd' is no tier or remote (known: standard)",
        f"{path}:7:1: tier 'standard': alias 'fast' is already the name of tier 'fast'",
    ]


def test_an_exposed_gateway_needs_a_key_of_the_users(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        gateway: {host: 0.0.0.0}
        tiers: [{name: fast, runtime: mlx-lm, model: {path: /a}}]
        """,
    )
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:5:") and "set masterKey" in problem


def test_a_remote_key_must_be_a_reference(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        gateway:
          remotes: [{name: cloud, model: openrouter/a/b, apiKey: sk-plain}]
        tiers: [{name: fast, runtime: mlx-lm, model: {path: /a}, fallbacks: [cloud]}]
        """,
    )
    (problem,) = problems(path)
    assert "spec.gateway.remotes[0].apiKey" in problem and "${env:" in problem


STACK = """\
gateway:
  port: 4000
  retries: 2
  remotes: [{name: cloud, model: openrouter/a/b, apiKey: "${env:OR_KEY}"}]
tiers:
  - {name: fast, runtime: mlx-lm, model: {path: /a}, port: 8001, aliases: [gpt-4o-mini],
     fallbacks: [standard, cloud]}
  - {name: standard, runtime: mlx-lm, model: {path: /b}, port: 8002, concurrency: 8}
"""


def resolve(tmp_path: Path, body: str) -> Any:
    ctx = ResolveContext(
        python=Path("/py/bin/python"),
        state_dir=Path("/state"),
        environ={"OR_KEY": "sk-or-secret"},
        resolve_model=path_ref,
    )
    return resolve_desired(load_stack_set([write(tmp_path, body)]), ctx)


def test_the_routes_file_has_aliases_fallbacks_limits_and_no_secret(tmp_path: Path) -> None:
    gw = resolve(tmp_path, STACK).gateway
    ((path, text),) = gw.files
    assert path == "/state/gateway/config.json" and "sk-or-secret" not in text
    routes = parse_config(text)
    assert routes.public_names()["gpt-4o-mini"] == "fast"
    assert routes.fallbacks == {"fast": ("standard", "cloud")}
    assert {r.name: r.max_concurrency for r in routes.routes} == {"fast": 4, "standard": 8}
    assert routes.remotes[0].api_key_env == "MLXCTL_REMOTE_KEY_CLOUD"
    assert ("MLXCTL_REMOTE_KEY_CLOUD", "${env:OR_KEY}") in gw.env
    assert gw.argv[1:3] == ("-m", "mlxctl.gateway")
    assert gw.argv[gw.argv.index("--host") + 1] == "127.0.0.1"
    assert (routes.retries, routes.timeout, routes.hold) == (2, 600.0, 120.0)
    held = parse_config(
        resolve(tmp_path, STACK.replace("retries: 2", "hold: 5")).gateway.files[0][1]
    )
    assert (held.retries, held.hold) == (1, 5.0)


def test_routes_do_not_move_the_gateway_hash_but_its_port_does(tmp_path: Path) -> None:
    base = resolve(tmp_path, STACK).gateway
    rerouted = resolve(
        tmp_path,
        STACK.replace("aliases: [gpt-4o-mini]", "aliases: [gpt-4o]").replace(
            "fallbacks: [standard, cloud]", "fallbacks: [cloud]"
        ),
    ).gateway
    assert rerouted.files != base.files and rerouted.spec_hash == base.spec_hash
    moved = resolve(tmp_path, STACK.replace("port: 4000", "port: 4001")).gateway
    assert moved.spec_hash != base.spec_hash
    json.loads(moved.files[0][1])  # the file is JSON


def test_a_vllm_mlx_catalog_tier_gets_its_parsers_from_the_catalog(tmp_path: Path) -> None:
    from mlxctl.desired.state import ModelRef

    def fake_ref(tier: Any) -> ModelRef:
        return ModelRef("hf", f"hf:{tier.spec.model}", tmp_path, str(tier.spec.model))

    ctx = ResolveContext(
        python=Path("/py/bin/python"), state_dir=Path("/state"), environ={}, resolve_model=fake_ref
    )
    body = """\
        tiers:
          - {name: agent, runtime: vllm-mlx, model: qwen3-14b, port: 8001}
          - {name: mine, runtime: vllm-mlx, model: qwen3-14b, port: 8002,
             args: {tool-call-parser: hermes, reasoning-parser: false}}
          - {name: plain, runtime: mlx-lm, model: qwen3-14b, port: 8003}
        """
    desired = resolve_desired(load_stack_set([write(tmp_path, body)]), ctx)
    argv = {t.name: " ".join(t.argv) for t in desired.tiers}
    assert (
        "--enable-auto-tool-choice --reasoning-parser qwen3 --tool-call-parser qwen3"
        in argv["agent"]
    )
    assert "--tool-call-parser hermes" in argv["mine"] and "reasoning" not in argv["mine"]
    assert "parser" not in argv["plain"]  # mlx_lm.server reads tool calls from the template


def test_a_replaced_routes_file_is_reloaded_and_a_broken_one_is_not(tmp_path: Path) -> None:
    # Inside a running loop, as in the gateway: a reload schedules the new Router's build
    # as a task (cancelled unstarted when the loop ends).
    asyncio.run(_reload_scenario(tmp_path))


async def _reload_scenario(tmp_path: Path) -> None:
    from mlxctl.gateway.app import Gateway
    from mlxctl.gateway.routing import RoutingTable
    from mlxctl.gateway.server import Reloader

    path = tmp_path / "routes.json"
    path.write_text(config().model_dump_json())
    gateway = Gateway("sk-k", RoutingTable(parse_config(path.read_text())))
    reloader = Reloader(gateway, path)
    old = gateway.table
    assert reloader.reload() is False  # unchanged file: nothing to do

    grown = config(fallbacks={"fast": ("standard",)}).model_copy(
        update={"routes": (*config().routes, Route(name="extra", port=8003, served_model="x"))}
    )
    tmp = tmp_path / "new.json"
    tmp.write_text(grown.model_dump_json())
    tmp.replace(path)  # the way mlxctl writes it: a new file renamed over the old
    assert reloader.reload() is True
    assert gateway.table is not old and gateway.table.resolve("extra") == "extra"
    # An unchanged tier keeps its gate (a reload never lets a burst through).
    assert gateway.table.gates["fast"] is old.gates["fast"]

    tmp.write_text("{not json")
    tmp.replace(path)
    current = gateway.table
    assert reloader.reload() is False and gateway.table is current


def test_a_rotated_key_file_replaces_the_key(tmp_path: Path) -> None:
    from mlxctl.gateway.app import Gateway
    from mlxctl.gateway.routing import RoutingTable
    from mlxctl.gateway.server import Reloader, read_key

    key_file = tmp_path / "master_key"
    key_file.write_text("sk-old\n")
    routes = tmp_path / "routes.json"
    routes.write_text(config().model_dump_json())
    gateway = Gateway(read_key(key_file), RoutingTable(config()))
    reloader = Reloader(gateway, routes, key_file)
    new = tmp_path / "k.tmp"
    new.write_text("sk-new\n")
    new.replace(key_file)
    from starlette.requests import Request

    def with_key(key: str) -> Request:
        return Request({"type": "http", "headers": [(b"authorization", f"Bearer {key}".encode())]})

    assert gateway.authorized(with_key("sk-old"))
    reloader.reload_key()
    assert gateway.authorized(with_key("sk-new")) and not gateway.authorized(with_key("sk-old"))


def test_the_routes_file_carries_each_models_vocabulary_context_vision_and_runtime(
    tmp_path: Path,
) -> None:
    """Issue 18: what the gateway checks requests against comes from the model's config."""
    text_model, vision_model = tmp_path / "a", tmp_path / "b"
    text_model.mkdir()
    vision_model.mkdir()
    config = {"vocab_size": 300, "max_position_embeddings": 2048}
    (text_model / "config.json").write_text(json.dumps(config))
    vision = {"vocab_size": 262208, "vision_config": {}, "text_config": {"vocab_size": 262144,
              "max_position_embeddings": 131072}}  # fmt: skip
    (vision_model / "config.json").write_text(json.dumps(vision))
    stack = f"""\
        gateway: {{remoteImages: true}}
        tiers:
          - {{name: fast, runtime: mlx-lm, model: {{path: {text_model}}}, context: 1024}}
          - {{name: eyes, runtime: vllm-mlx, model: {{path: {vision_model}}}}}
          - {{name: gone, runtime: mlx-lm, model: {{path: {tmp_path / "missing"}}}}}
        """
    routes = parse_config(resolve(tmp_path, stack).gateway.files[0][1])
    facts = {r.name: (r.runtime, r.vocab_size, r.context, r.vision) for r in routes.routes}
    assert facts == {
        "fast": ("mlx-lm", 300, 1024, False),  # the stack's smaller context wins
        "eyes": ("vllm-mlx", 262144, 131072, True),  # the smaller vocabulary is the bound
        "gone": ("mlx-lm", None, None, None),  # unknown: the strictest checks apply
    }
    assert routes.remote_images is True
