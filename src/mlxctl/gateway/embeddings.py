"""``POST /v1/embeddings``: for the tiers that serve an embedding model.

A tier serves embeddings when its runtime is ``vllm-mlx-embeddings`` (vllm-mlx with the
``mlx-embeddings`` package, its embedding model locked at start:
:mod:`mlxctl.runtimes.vllm_mlx_embeddings`); ``Route.info.embeddings`` says so. A request
naming any other tier gets a 400 that names the tiers that could serve it (or says that
none does, and how to add one); a chat or text completion naming an embedding-only tier
gets a 400 too, before it reaches the server (vllm-mlx would try to load the embedding
model as a language model, fail with 500 and report itself unhealthy).

The request is checked against the OpenAI schema's fields (``input``: a string, a list
of strings, a list of token ids or a list of such lists, non-empty; ``encoding_format``
``float`` or ``base64``; ``dimensions``; ``user``); other fields are dropped. It then
takes the same path as a completion (:meth:`Gateway.handle`): the key, the name and its
aliases, the tier's gate, an on-demand tier's hold, the fast path, the answer's ``model``
set to the name the client sent, and the Router (``litellm.Router.aembedding``) when the
tier fails.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, cast

from starlette.responses import JSONResponse, Response

from mlxctl.gateway.bounds import clip
from mlxctl.gateway.intake import read_json
from mlxctl.gateway.peers import came_from_peer
from mlxctl.gateway.requests import Checked, Endpoint, RequestError

TIER_HEADER = "x-mlxctl-tier"  # as mlxctl.gateway.app names the tier that answered

if TYPE_CHECKING:
    from starlette.requests import Request

    from mlxctl.gateway.app import Gateway
    from mlxctl.gateway.routing import RoutingTable

ENDPOINT = cast(Endpoint, "embeddings")
HOW_TO = (
    "a tier with runtime vllm-mlx-embeddings and an embedding model serves them "
    "(docs/gateway.md, Embeddings)"
)


class Invalid(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check(body: Any) -> Checked:
    """The request's forwarded fields; :class:`Invalid` names what is wrong."""
    if not isinstance(body, dict):
        raise Invalid("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("model: a model name is required", "model")
    text = body.get("input")
    if not _valid_input(text):
        raise Invalid(
            "input: a string, a list of strings, a list of token ids, or a list of such "
            "lists (not empty)",
            "input",
        )
    params: dict[str, Any] = {"input": text}
    fmt = body.get("encoding_format")
    if fmt is not None:
        if fmt not in ("float", "base64"):
            raise Invalid("encoding_format: 'float' or 'base64'", "encoding_format")
        params["encoding_format"] = fmt
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise Invalid("dimensions: a positive integer", "dimensions")
        params["dimensions"] = dimensions
    user = body.get("user")
    if isinstance(user, str):
        params["user"] = user
    return Checked(model=model, stream=False, params=params)


def _valid_input(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(v, str) for v in value):
        return True
    if all(_tokens(v) for v in value):
        return True
    return all(isinstance(v, list) and v and all(_tokens(t) for t in v) for v in value)


def _tokens(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def serving(table: RoutingTable) -> list[str]:
    """The public names (tiers and aliases) whose tier serves embeddings."""
    return [n for n in table.models() if _info_embeddings(table, table.resolve(n))]


def _info_embeddings(table: RoutingTable, tier: str | None) -> bool:
    route = table.config.route(tier) if tier is not None else None
    return route is not None and route.info.embeddings


def _error(status: int, message: str, code: str, param: str | None = "model") -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": code}}  # fmt: skip
    return JSONResponse(body, status_code=status)


def chat_refusal(table: RoutingTable, public: str, tier: str) -> Response | None:
    """A 400 for a chat or text completion naming a tier that serves only embeddings."""
    route = table.config.route(tier)
    if route is None or route.info.chat:
        return None
    return _error(
        400,
        f"model '{clip(public)}' serves embeddings only (POST /v1/embeddings), not completions",
        "model_not_chat",
    )


async def create(gateway: Gateway, request: Request) -> Response:
    try:
        # Bounded, with a deadline, parsed strictly: as a completion's body is.
        checked = check(await read_json(request))
    except RequestError as exc:
        return _error(exc.status, str(exc), exc.code, exc.param)
    except Invalid as exc:
        return _error(400, f"invalid request: {exc}", "invalid_request", exc.param)
    if came_from_peer(request.headers):
        checked = dataclasses.replace(checked, hop=True)
    table = gateway.table
    name = table.resolve(checked.model)
    if name is None:
        models = ", ".join(table.models()) or "(none)"
        return _error(
            404,
            f"model '{clip(checked.model)}' does not exist; models: {models}",
            "model_not_found",
        )
    if not _info_embeddings(table, name):
        able = ", ".join(serving(table))
        where = f"models that serve embeddings: {able}" if able else f"none does: {HOW_TO}"
        message = f"model '{clip(checked.model)}' does not serve embeddings; {where}"
        return _error(400, message, "model_not_embedding")
    response = await gateway.handle(table, name, checked, ENDPOINT)
    response.headers.setdefault(TIER_HEADER, name)
    return response
