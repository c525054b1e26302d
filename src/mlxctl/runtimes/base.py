"""How each runtime is launched and how its readiness and liveness are probed.

Everything here is data: the command line a runtime needs and the HTTP check that
proves it serves. The readiness checks encode what was learned the hard way:
``mlx_lm.server`` answers ``/health`` while still loading, so only a completion
proves the model is there; vllm-mlx's ``/health`` is always 200 and its body says
whether the model is loaded; LiteLLM's ``/health`` calls every model, so only
``/health/liveliness`` is polled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlxctl.spec.schema import ArgValue

HOST = "127.0.0.1"
ProbeKind = Literal["mlx-lm", "vllm-mlx", "litellm"]

# mlx_lm.server maps this request model name to the model given on its command line.
MLX_LM_DEFAULT_MODEL = "default_model"


@dataclass(frozen=True)
class ProbeSpec:
    """Where and how to check one service."""

    kind: ProbeKind
    port: int
    model: str = ""
    host: str = HOST


def render_args(args: Mapping[str, ArgValue]) -> list[str]:
    """Turn ``{max-tokens: 4096, trust-remote-code: true}`` into command-line flags.

    ``true`` is a bare flag; ``false`` and ``null`` leave the flag out. Flags are sorted
    so that reordering keys in the file renders the same command line (no restart).
    """
    out: list[str] = []
    for key, value in sorted(args.items()):
        if value is None or value is False:
            continue
        out.append(f"--{key}")
        if value is not True:
            out.append(str(value))
    return out


def server_argv(
    runtime: str,
    *,
    python: Path,
    model_dir: Path,
    port: int,
    served_name: str,
    args: Mapping[str, ArgValue],
) -> tuple[str, ...]:
    """The full command line of a model server bound to loopback."""
    if runtime == "mlx-lm":
        base = [str(python), "-m", "mlx_lm", "server", "--model", str(model_dir)]
        base += ["--host", HOST, "--port", str(port)]
    elif runtime == "vllm-mlx":
        base = [str(python.parent / "vllm-mlx"), "serve", str(model_dir)]
        base += ["--host", HOST, "--port", str(port), "--served-model-name", served_name]
    else:  # pragma: no cover - the schema admits only the two runtimes
        raise ValueError(f"unknown runtime {runtime}")
    return (*base, *render_args(args))


def served_model_name(runtime: str, tier: str) -> str:
    """The model name the gateway sends to the tier's server."""
    return MLX_LM_DEFAULT_MODEL if runtime == "mlx-lm" else tier


def gateway_argv(*, python: Path, config: Path, port: int) -> tuple[str, ...]:
    return (
        str(python.parent / "litellm"),
        "--config",
        str(config),
        "--host",
        HOST,
        "--port",
        str(port),
    )


def probe_for(runtime: str, port: int, served_name: str) -> ProbeSpec:
    kind: ProbeKind = "mlx-lm" if runtime == "mlx-lm" else "vllm-mlx"
    return ProbeSpec(kind=kind, port=port, model=served_name)
