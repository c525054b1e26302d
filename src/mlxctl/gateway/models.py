"""``GET /v1/models`` and ``GET /v1/models/{id}``: every public name, with what it is.

Each tier name and each alias is one OpenAI model object (``id``, ``object``,
``created``, ``owned_by``) with mlxctl's additions, which OpenAI's SDKs keep as extra
fields:

- ``tier``: the tier the name reaches (an alias names its tier);
- ``context_length`` (and ``max_model_len``, vLLM's name for it): the tier's written
  ``context``, else the catalog's, else the model's ``config.json``; null when unknown;
- ``capabilities``: ``tools``, ``reasoning``, ``vision``, ``embeddings`` (the catalog's,
  else read from the model's files: :mod:`mlxctl.desired.model_info`) and ``chat``
  (false for a tier that serves only embeddings);
- ``load``: ``always`` or ``on-demand``; ``state``: ``loaded`` (an ``always`` tier, or an
  on-demand tier the controller says is ready), ``loading``, ``on_demand`` (cold: the
  first request loads it), ``unloading`` (draining), ``unavailable`` (its load failed or
  is blocked; ``state_detail`` says why), or ``unknown`` (no verdict yet);
- ``host``, in a stack of several machines (docs/multi-host.md): the machine serving the
  tier. Another machine's tier has the state that machine's gateway gives it (and its
  context and capabilities, which it reads from the model's files), or
  ``unreachable`` when that gateway does not answer (:mod:`mlxctl.gateway.peers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlxctl.gateway.peers import PeerTier, Unreachable, unreachable_detail

if TYPE_CHECKING:
    from mlxctl.gateway.demand import Demand
    from mlxctl.gateway.routing import RoutingTable
    from mlxctl.runtimes.gateway import Route

_STATES = {
    "ready": "loaded",
    "loading": "loading",
    "cold": "on_demand",
    "draining": "unloading",
    "unavailable": "unavailable",
}


# Tier name -> what its machine's gateway says of it (None: not asked, as for a gateway
# asking for this machine's own tiers).
PeerStates = Mapping[str, PeerTier | Unreachable] | None


def listing(
    table: RoutingTable, demand: Demand, created: int, peers: PeerStates = None
) -> dict[str, Any]:
    data = [model_object(table, demand, name, created, peers) for name in table.models()]
    return {"object": "list", "data": [d for d in data if d is not None]}


def model_object(
    table: RoutingTable, demand: Demand, public: str, created: int, peers: PeerStates = None
) -> dict[str, Any] | None:
    """The model object of a public name, or None when no tier answers to it."""
    tier = table.resolve(public)
    route = table.config.route(tier) if tier is not None else None
    if route is None:
        return None
    info = route.info
    # The context the gateway checks requests against (the model's config, capped by the
    # tier's written ``context``) wins; the catalog's when the model is not on disk yet.
    context = route.context or info.context_length
    vision = bool(route.vision) or info.vision
    capabilities = {
        "tools": info.tools,
        "reasoning": info.reasoning,
        "vision": vision,
        "embeddings": info.embeddings,
        "chat": info.chat,
    }
    load = "on-demand" if route.on_demand else "always"
    if route.peer is None:
        state, detail = load_state(demand, route)
    else:
        told = (peers or {}).get(route.name)
        if isinstance(told, PeerTier):
            state, detail = told.state, told.detail
            load = told.load or load
            context = told.context_length or context
            capabilities.update(told.capabilities)
        elif isinstance(told, Unreachable):
            state, detail = "unreachable", unreachable_detail(route, told.why)
        else:
            state, detail = "unknown", ""
    answer: dict[str, Any] = {
        "id": public,
        "object": "model",
        "created": created,
        "owned_by": "mlxctl",
        "tier": route.name,
        "context_length": context,
        "max_model_len": context,
        "capabilities": capabilities,
        "load": load,
        "state": state,
    }
    if route.host is not None:
        answer["host"] = route.host
    if detail:
        answer["state_detail"] = detail
    return answer


def load_state(demand: Demand, route: Route) -> tuple[str, str]:
    """The tier's load state as a client reads it, and the controller's detail."""
    if not route.on_demand:
        return "loaded", ""
    verdict = demand.verdict(route.name)
    if verdict is None:
        return "unknown", ""
    return _STATES.get(verdict.state, verdict.state), verdict.detail
