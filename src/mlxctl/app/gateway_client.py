"""The gateway as a client sees it: its OpenAI base URL and key (what ``mlxctl gateway env
--client openai`` prints), and the names it answers to. Used by ``chat`` and ``bench``."""

from __future__ import annotations

from mlxctl.errors import MlxctlError, NotFoundError
from mlxctl.paths import Paths
from mlxctl.spec.stack_set import StackSet


def gateway_url(stack: StackSet) -> str:
    """The gateway's base URL from this machine (a wildcard bind is reached on loopback)."""
    host = stack.gateway.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{stack.gateway.port}"


def client_settings(paths: Paths, stack: StackSet) -> tuple[str, str]:
    """The gateway's OpenAI base URL (with ``/v1``) and key, as ``gateway env --client
    openai`` gives them."""
    from mlxctl.app.ops import gateway_key

    if not stack.gateway.enabled:
        raise MlxctlError("the gateway is disabled in the stack files (spec.gateway.enabled)")
    return f"{gateway_url(stack)}/v1", gateway_key(paths, stack)


def public_names(stack: StackSet) -> list[str]:
    """Every name the gateway routes: tiers and their aliases."""
    names: list[str] = []
    for tier in stack.tiers:
        names.append(tier.spec.name)
        names.extend(tier.spec.aliases)
    return names


def check_model(stack: StackSet, model: str) -> str:
    """``model`` when the gateway routes it; NotFoundError naming the choices otherwise."""
    names = public_names(stack)
    if model not in names:
        raise NotFoundError(
            f"'{model}' is not a tier or alias here; tiers: {', '.join(names) or 'none'}"
        )
    return model
