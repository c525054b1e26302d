"""Every runtime adapter by name: adding a runtime is one file and one line here."""

from __future__ import annotations

from mlxctl.errors import MlxctlError
from mlxctl.runtimes import gateway, mlx_lm, vllm_mlx, vllm_mlx_embeddings
from mlxctl.runtimes.base import Runtime

RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (mlx_lm.RUNTIME, vllm_mlx.RUNTIME, vllm_mlx_embeddings.RUNTIME, gateway.RUNTIME)
}
# The runtimes a tier may name (the gateway's is mlxctl's own choice). The gateway's
# runtime keeps the name "litellm": it is in every gateway's recorded launch (and its
# hash), so renaming it would restart running gateways.
MODEL_SERVERS = tuple(name for name, r in RUNTIMES.items() if r.argv is not None)


def runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise MlxctlError(f"unknown runtime '{name}' (known: {', '.join(RUNTIMES)})") from None
