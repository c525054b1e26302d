"""The canonical desired state (``mlxctl render``), like ``docker compose config``.

The output is itself a stack: one document per stack (``metadata.name``), every file
merged, every default mlxctl applies written out (``quant``, ``port``,
``startupTimeout``, ``suspend``, ``dependsOn``), model paths absolute. ``validate``
accepts it and ``diff`` against it plans nothing new. Two things are left as they
were written, because writing them would change the launch: ``context`` and
``concurrency`` (a written limit becomes a server flag; an unwritten one is the
server's own default; ``diff`` says when the memory estimate is not enforced) and a
generated gateway ``masterKey`` (a header comment says where it is). Secrets stay
references.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlxctl.desired.ports import assign_ports
from mlxctl.runtimes.registry import runtime as runtime_named
from mlxctl.spec.schema import API_VERSION, PathSource
from mlxctl.spec.stack_set import SourcedTier, StackSet


def _model(sourced: SourcedTier) -> Any:
    model = sourced.spec.model
    if isinstance(model, PathSource):
        raw = Path(model.path).expanduser()
        directory = raw if raw.is_absolute() else sourced.file.parent / raw
        return {"path": str(directory.resolve())}
    if isinstance(model, str):
        return model
    return model.model_dump(exclude_none=True, by_alias=True)  # hf: / gguf: forms


def _quant(sourced: SourcedTier) -> str | None:
    if sourced.spec.quant is not None or not isinstance(sourced.spec.model, str):
        return sourced.spec.quant
    from mlxctl.catalog.entries import load_entry
    from mlxctl.errors import NotFoundError

    try:
        return load_entry(sourced.spec.model).default_variant
    except NotFoundError:
        return None  # validate reports it


def _tier(sourced: SourcedTier, port: int) -> dict[str, Any]:
    t = sourced.spec
    tier: dict[str, Any] = {"name": t.name, "runtime": t.runtime, "model": _model(sourced)}
    quant = _quant(sourced)
    if quant is not None:
        tier["quant"] = quant
    tier["port"] = port
    tier["args"] = dict(t.args)
    tier["env"] = dict(sorted(t.env.items()))
    if t.not_secret:
        tier["notSecret"] = list(t.not_secret)
    for limit in ("context", "concurrency"):
        if limit in t.model_fields_set:
            tier[limit] = getattr(t, limit)
    tier["startupTimeout"] = t.startup_timeout or runtime_named(t.runtime).startup_timeout
    tier["suspend"] = t.suspend
    tier["dependsOn"] = list(t.depends_on)
    tier["aliases"] = list(t.aliases)
    tier["fallbacks"] = list(t.fallbacks)
    if t.host is not None:
        tier["host"] = t.host
    if t.distributed is not None:
        tier["distributed"] = t.distributed.model_dump(by_alias=True, exclude_none=True)
    return tier


def canonical_documents(stack: StackSet, assigned_ports: Mapping[str, int]) -> list[dict[str, Any]]:
    """One stack document per ``metadata.name``, in the order the stacks were read."""
    ports = assign_ports(stack, assigned_ports)
    names = list(dict.fromkeys(stack.names)) or ["empty"]
    docs: list[dict[str, Any]] = []
    for index, name in enumerate(names):
        spec: dict[str, Any] = {}
        if index == 0:  # the shared settings, once
            if stack.hosts:
                spec["hosts"] = [
                    h.model_dump(by_alias=True, exclude_none=True) for h in stack.hosts
                ]
            gw = stack.gateway
            spec["gateway"] = {
                "enabled": gw.enabled,
                "port": gw.port,
                "host": gw.host,
                "retries": gw.retries,
                "timeout": gw.timeout,
                "hold": gw.hold,
            }
            if gw.remotes:
                spec["gateway"]["remotes"] = [
                    r.model_dump(by_alias=True, exclude_none=True) for r in gw.remotes
                ]
            if gw.master_key is not None:
                spec["gateway"]["masterKey"] = gw.master_key
            if stack.memory is not None:
                spec["memory"] = {"budget": stack.memory.budget}
        if name in stack.suspended_stacks:
            spec["suspend"] = True
        spec["tiers"] = [
            _tier(t, ports[t.spec.name]) for t in stack.tiers if t.stack == name or not t.stack
        ]
        docs.append(
            {"apiVersion": API_VERSION, "kind": "Stack", "metadata": {"name": name}, "spec": spec}
        )
    return docs


def canonical(stack: StackSet, assigned_ports: Mapping[str, int]) -> dict[str, Any]:
    """The first (usually only) stack document; see :func:`canonical_documents`."""
    return canonical_documents(stack, assigned_ports)[0]


def to_yaml(docs: list[dict[str, Any]], stack: StackSet | None = None, header: str = "") -> str:
    """The documents as YAML, ``header`` as comment lines on top, and a comment at each
    tier saying where it was declared."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    sources = {t.spec.name: t for t in stack.tiers} if stack else {}
    out = []
    for doc in docs:
        tiers = []
        for tier in doc["spec"]["tiers"]:
            cm = CommentedMap(tier)
            sourced = sources.get(tier["name"])
            if sourced is not None:
                cm.yaml_add_eol_comment(f"from {sourced.file}:{sourced.line}", "name")
            tiers.append(cm)
        out.append({**doc, "spec": {**doc["spec"], "tiers": tiers}})
    yaml = YAML()
    yaml.default_flow_style = False
    buffer = io.StringIO()
    yaml.dump_all(out, buffer)
    top = "".join(f"# {line}\n" for line in header.splitlines())
    return top + buffer.getvalue()
