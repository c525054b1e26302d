"""The gateway as ``chat`` and ``bench`` use it: the OpenAI base URL and key that
``mlxctl gateway env --client openai`` gives (:mod:`mlxctl.app.client_env`), the key
itself rather than a reference to it (these commands are the client)."""

from __future__ import annotations

from mlxctl.app.client_env import base_url, pick_model
from mlxctl.errors import MlxctlError
from mlxctl.paths import Paths
from mlxctl.spec.stack_set import StackSet


def client_settings(paths: Paths, stack: StackSet) -> tuple[str, str]:
    """The gateway's OpenAI base URL (with ``/v1``) and its key."""
    from mlxctl.app.ops import gateway_key

    if not stack.gateway.enabled:
        raise MlxctlError("the gateway is disabled in the stack files (spec.gateway.enabled)")
    return f"{base_url(stack)}/v1", gateway_key(paths, stack)


def check_model(stack: StackSet, model: str) -> str:
    """``model`` when the gateway routes it (a tier or an alias); NotFoundError naming the
    choices otherwise."""
    return pick_model(stack, model)
