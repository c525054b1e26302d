"""Tiers reachable only by the gateway (issue 18 row 2), and the capacity the gateway
respects (issue 17): what resolve gives each tier, and what the guard refuses."""

from __future__ import annotations

import textwrap
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from mlxctl.desired.resolve import ResolveContext, resolve_desired
from mlxctl.desired.tier_route import recorded_route_facts, tier_capacity
from mlxctl.runtimes.gateway import parse_config
from mlxctl.runtimes.tier_guard import KEY_FILE_ENV, bearer, refusal
from mlxctl.sources.path import path_ref
from mlxctl.spec.loader import load_stack_set
from mlxctl.spec.schema import TierSpec

STACK = """\
apiVersion: mlxctl/v1
kind: Stack
metadata: {name: t}
spec:
  tiers:
    - {name: fast, runtime: mlx-lm, model: {path: /a}, port: 8001}
    - {name: agent, runtime: vllm-mlx, model: {path: /b}, port: 8002, concurrency: 8}
    - name: batch
      runtime: vllm-mlx
      model: {path: /c}
      port: 8003
      concurrency: 8
      context: 4096
      args: {continuous-batching: true}
"""


def tier(**kw: Any) -> TierSpec:
    return TierSpec.model_validate({"name": "t", "model": {"path": "/m"}, **kw})


@pytest.mark.parametrize(
    ("spec", "capacity"),
    [
        ({"runtime": "vllm-mlx"}, 1),
        ({"runtime": "vllm-mlx", "concurrency": 8}, 1),  # the simple engine takes one
        ({"runtime": "vllm-mlx", "args": {"continuous-batching": True}}, 4),
        ({"runtime": "vllm-mlx", "concurrency": 8, "args": {"continuous-batching": True}}, 8),
        (
            {"runtime": "vllm-mlx", "args": {"continuous-batching": True, "max-num-seqs": 3}},
            3,
        ),
        ({"runtime": "mlx-lm"}, 4),
        ({"runtime": "mlx-lm", "concurrency": 16}, 16),
    ],
)
def test_a_tiers_capacity_comes_from_its_runtime_and_concurrency(
    spec: dict[str, Any], capacity: int
) -> None:
    assert tier_capacity(tier(**spec)) == capacity


def test_routes_carry_capacity_runtime_context_and_the_key_file_never_the_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "s.yaml").write_text(textwrap.dedent(STACK))
    ctx = ResolveContext(
        python=Path("/py/bin/python"),
        state_dir=Path("/state"),
        environ={},
        resolve_model=path_ref,
    )
    desired = resolve_desired(load_stack_set([tmp_path]), ctx)
    assert desired.gateway is not None
    routes = {r.name: r for r in parse_config(desired.gateway.files[0][1]).routes}
    assert {n: r.max_concurrency for n, r in routes.items()} == {"fast": 4, "agent": 1, "batch": 8}
    assert {n: r.runtime for n, r in routes.items()} == {
        "fast": "mlx-lm",
        "agent": "vllm-mlx",
        "batch": "vllm-mlx",
    }
    assert routes["batch"].context == 4096
    assert routes["agent"].key_file == "/state/tier-keys/agent.key"
    for service in desired.tiers:
        key_file = f"/state/tier-keys/{service.name}.key"
        assert (KEY_FILE_ENV, key_file) in service.env
        assert service.argv[1:3] == ("-m", "mlxctl.runtimes.tier_guard")
        assert "--api-key" not in service.argv
        assert service.probe.key_file == key_file
        # What another stack's apply rebuilds the route from.
        facts = recorded_route_facts(service.launch, service.runtime)
        assert facts["key_file"] == key_file
        assert facts["max_concurrency"] == routes[service.name].max_concurrency


class FakeHandler:
    def __init__(self, path: str, key: str, **headers: str) -> None:
        self.path = path
        self.guard_key = key
        self.headers = Message()
        for name, value in headers.items():
            self.headers[name.replace("_", "-")] = value


@pytest.mark.parametrize(
    ("path", "headers", "refused"),
    [
        ("/v1/chat/completions", {"Authorization": "Bearer k1"}, None),
        ("/v1/chat/completions", {}, "401"),
        ("/v1/chat/completions", {"Authorization": "Bearer k2"}, "401"),
        ("/v1/chat/completions", {"Authorization": "Bearer k1", "Origin": "https://a.b"}, "403"),
        ("/v1/chat/completions", {"Authorization": "Bearer k1", "Origin": "null"}, "403"),
        ("/health", {}, None),
        ("/health", {"Origin": "https://evil.example"}, "403"),
        ("/health?x=1", {}, None),
        ("/v1/models", {}, "401"),
    ],
)
def test_the_mlx_lm_guard_refuses_origins_and_requests_without_the_key(
    path: str, headers: dict[str, str], refused: str | None
) -> None:
    why = refusal(FakeHandler(path, "k1", **headers))
    assert (why.split(" ", 1)[0] if why else None) == refused


def test_the_key_is_read_from_its_file(tmp_path: Path) -> None:
    key = tmp_path / "t.key"
    assert bearer(str(key)) == {}  # not written yet
    key.write_text("sk-x\n")
    assert bearer(str(key)) == {"Authorization": "Bearer sk-x"}
    assert bearer(None) == {}
