"""The canonical desired state (``mlxctl render``), like ``docker compose config``.

Every file merged, every default applied, ports assigned; secrets stay references.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlxctl.desired.ports import assign_ports
from mlxctl.spec.loader import StackSet
from mlxctl.spec.schema import API_VERSION, PathSource


def canonical(stack: StackSet, assigned_ports: Mapping[str, int]) -> dict[str, Any]:
    ports = assign_ports(stack, assigned_ports)
    tiers = []
    for sourced in stack.tiers:
        t = sourced.spec
        model: Any = {"path": t.model.path} if isinstance(t.model, PathSource) else t.model
        tier: dict[str, Any] = {
            "name": t.name,
            "runtime": t.runtime,
            "model": model,
            "port": ports[t.name],
            "args": dict(t.args),
            "env": dict(sorted(t.env.items())),
            "concurrency": t.concurrency,
        }
        if t.quant is not None:
            tier["quant"] = t.quant
        if t.context is not None:
            tier["context"] = t.context
        if t.startup_timeout is not None:
            tier["startupTimeout"] = t.startup_timeout
        if t.aliases:
            tier["aliases"] = list(t.aliases)
        if t.fallbacks:
            tier["fallbacks"] = list(t.fallbacks)
        tier["source"] = f"{sourced.file}:{sourced.line}"
        tiers.append(tier)
    gw = stack.gateway
    spec: dict[str, Any] = {
        "gateway": {
            "enabled": gw.enabled,
            "port": gw.port,
            "host": gw.host,
            "masterKey": gw.master_key or "(generated, stored in the state directory)",
            "retries": gw.retries,
            "timeout": gw.timeout,
            **(
                {"remotes": [r.model_dump(by_alias=True, exclude_none=True) for r in gw.remotes]}
                if gw.remotes
                else {}
            ),
        },
        "tiers": tiers,
    }
    if stack.memory is not None:
        spec["memory"] = {"budget": stack.memory.budget}
    return {
        "apiVersion": API_VERSION,
        "kind": "Stack",
        "metadata": {"name": "+".join(stack.names) or "empty"},
        "spec": spec,
    }


def to_yaml(data: Mapping[str, Any]) -> str:
    import io

    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    buffer = io.StringIO()
    yaml.dump(dict(data), buffer)
    return buffer.getvalue()
