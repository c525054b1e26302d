"""``/v1/models``: each name's context, capabilities and load state, from the catalog,
the model's own files or the stack, through resolution into the routes file and out of
the gateway."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import openai

from mlxctl.desired.model_info import describe
from mlxctl.desired.resolve import ResolveContext, resolve_desired
from mlxctl.desired.state import ModelRef
from mlxctl.gateway.app import Gateway, build_app
from mlxctl.gateway.routing import RoutingTable
from mlxctl.runtimes.gateway import (
    DemandAnswer,
    GatewayConfig,
    ModelInfo,
    Route,
    TierVerdict,
    parse_config,
)
from mlxctl.spec.loader import load_stack_set
from mlxctl.spec.schema import TierSpec

KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


def model_dir(root: Path, config: dict[str, Any], template: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    if template is not None:
        (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return root


def ref(directory: Path) -> ModelRef:
    return ModelRef("path", f"path:{directory}", directory, str(directory))


def tier(**kw: Any) -> TierSpec:
    return TierSpec.model_validate({"name": "fast", "runtime": "mlx-lm", **kw})


def test_a_catalog_model_gets_the_catalogs_context_and_capabilities(tmp_path: Path) -> None:
    info = describe(tier(model="qwen3-14b"), None)
    assert info.context_length and info.context_length >= 32768
    assert (info.tools, info.reasoning, info.vision, info.embeddings) == (True, True, False, False)
    assert info.sources == ("catalog qwen3-14b",)
    # The tier's written context is what its server serves: it wins.
    assert describe(tier(model="qwen3-14b", context=4096), None).context_length == 4096


def test_a_directory_model_is_read_from_its_config_and_template(tmp_path: Path) -> None:
    chat = model_dir(
        tmp_path / "chat",
        {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 131072},
        "{% if tools %}{{ tools }}{% endif %}<think>",
    )
    info = describe(tier(model={"path": str(chat)}), ref(chat))
    assert info == ModelInfo(
        context_length=131072, tools=True, reasoning=True, sources=("config.json",)
    )
    vlm = model_dir(
        tmp_path / "vlm",
        {"model_type": "gemma3", "text_config": {"max_position_embeddings": 8192},
         "vision_config": {}},
    )  # fmt: skip
    info = describe(tier(model={"path": str(vlm)}), ref(vlm))
    assert (info.context_length, info.vision, info.tools) == (8192, True, False)
    bert = model_dir(
        tmp_path / "bert",
        {"architectures": ["BertModel"], "model_type": "bert", "max_position_embeddings": 512},
    )
    info = describe(tier(model={"path": str(bert)}), ref(bert))
    assert (info.embeddings, info.context_length) == (True, 512)
    # Not downloaded yet: unknown, never an error.
    missing = tmp_path / "missing"
    assert describe(tier(model={"path": str(missing)}), ref(missing)) == ModelInfo()


def test_resolution_puts_the_info_in_the_routes_file(tmp_path: Path) -> None:
    chat = model_dir(tmp_path / "m", {"max_position_embeddings": 2048})
    stack = tmp_path / "stack.yaml"
    stack.write_text(
        textwrap.dedent(f"""\
            apiVersion: mlxctl/v1
            kind: Stack
            metadata: {{name: s}}
            spec:
              tiers:
                - {{name: fast, runtime: mlx-lm, model: {{path: {chat}}}, port: 8001}}
                - {{name: big, runtime: mlx-lm, model: {{path: {chat}}}, port: 8002,
                   context: 1024}}
            """)
    )
    ctx = ResolveContext(
        python=Path("/py"), state_dir=tmp_path / "state", environ={},
        resolve_model=lambda t: ref(Path(t.spec.model.path)),  # type: ignore[union-attr]
    )  # fmt: skip
    desired = resolve_desired(load_stack_set([stack]), ctx)
    assert desired.gateway is not None
    routes = {r.name: r for r in parse_config(desired.gateway.files[0][1]).routes}
    assert routes["fast"].info.context_length == 2048
    assert routes["big"].info.context_length == 1024
    assert routes["big"].info.sources == ("config.json", "stack")


def serve(routes: tuple[Route, ...], test: Any) -> None:
    async def run() -> None:
        gateway = Gateway(KEY, RoutingTable(GatewayConfig(routes=routes)))
        transport = httpx.ASGITransport(app=build_app(gateway))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                await test(gateway, client)
        finally:
            await gateway.aclose()

    asyncio.run(run())


INFO = ModelInfo(context_length=8192, tools=True, sources=("catalog x",))


def test_every_name_and_alias_is_listed_with_its_tier_context_capabilities_and_state() -> None:
    routes = (
        Route(name="fast", port=1, served_model="m", aliases=("gpt-4o-mini",), info=INFO),
        Route(name="big", port=2, served_model="m", on_demand=True, hold=5.0),
    )

    async def test(gateway: Gateway, client: httpx.AsyncClient) -> None:
        assert (await client.get("/v1/models")).status_code == 401
        listed = (await client.get("/v1/models", headers=AUTH)).json()
        by_id = {m["id"]: m for m in listed["data"]}
        assert sorted(by_id) == ["big", "fast", "gpt-4o-mini"]
        alias = by_id["gpt-4o-mini"]
        assert alias["tier"] == "fast" and alias["object"] == "model"
        assert (alias["context_length"], alias["max_model_len"]) == (8192, 8192)
        assert alias["capabilities"] == {
            "tools": True, "reasoning": False, "vision": False, "embeddings": False, "chat": True,
        }  # fmt: skip
        assert (alias["load"], alias["state"]) == ("always", "loaded")
        assert (by_id["big"]["load"], by_id["big"]["state"]) == ("on-demand", "unknown")
        assert by_id["big"]["context_length"] is None
        expected = {"cold": "on_demand", "loading": "loading", "ready": "loaded",
                    "draining": "unloading", "unavailable": "unavailable"}  # fmt: skip
        for verdict, state in expected.items():
            answer = DemandAnswer(
                tiers={"big": TierVerdict(state=verdict, detail="why")}  # type: ignore[arg-type]
            )
            gateway.demand._apply(answer)
            one = (await client.get("/v1/models/big", headers=AUTH)).json()
            assert (one["state"], one["state_detail"]) == (state, "why")
        missing = await client.get("/v1/models/nope", headers=AUTH)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"
        assert "big, fast, gpt-4o-mini" in missing.json()["error"]["message"]

    serve(routes, test)


def test_the_openai_sdk_reads_the_list_and_one_model_with_the_extra_fields() -> None:
    routes = (Route(name="fast", port=1, served_model="m", aliases=("org/model:v1",), info=INFO),)

    async def test(gateway: Gateway, client: httpx.AsyncClient) -> None:
        sdk = openai.AsyncOpenAI(api_key=KEY, base_url="http://gw/v1", http_client=client)
        names = [m.id async for m in sdk.models.list()]
        assert names == ["fast", "org/model:v1"]
        one = await sdk.models.retrieve("org/model:v1")  # a slash inside an alias
        assert one.id == "org/model:v1"
        extra = one.model_extra or {}
        assert extra["context_length"] == 8192 and extra["capabilities"]["tools"] is True

    serve(routes, test)
