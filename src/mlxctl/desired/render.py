"""The canonical desired state (``mlxctl render``), like ``docker compose config``.

Every file merged, every default applied, ports assigned; secrets stay references.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlxctl.desired.ports import assign_ports
from mlxctl.spec.loader import StackSet
from mlxctl.spec.schema import API_VERSION


def canonical(stack: StackSet, assigned_ports: Mapping[str, int]) -> dict[str, Any]:
    ports = assign_ports(stack, assigned_ports)
    tiers = []
    for sourced in stack.tiers:
        t = sourced.spec
        model: Any = t.model if isinstance(t.model, str) else t.model.model_dump(exclude_none=True)
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
        tier["source"] = f"{sourced.file}:{sourced.line}"
        tiers.append(tier)
    gw = stack.gateway
    spec: dict[str, Any] = {
        "gateway": {
            "enabled": gw.enabled,
            "port": gw.port,
            "masterKey": gw.master_key or "(generated, stored in the state directory)",
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
