"""vllm-mlx: continuous batching on MLX, OpenAI-compatible.

Its ``/health`` is always 200 and its body says whether the model is loaded, which
is both readiness and liveness. When it fails while loading it exits, and only its
log says why (the observer reads the log's tail).
"""

from __future__ import annotations

import json

from mlxctl.runtimes.base import (
    HOST,
    Http,
    ProbeMode,
    ProbeResult,
    Runtime,
    ServerLaunch,
    render_args,
)


def argv(launch: ServerLaunch) -> tuple[str, ...]:
    base = [str(launch.python.parent / "vllm-mlx"), "serve", str(launch.model_dir)]
    base += ["--host", HOST, "--port", str(launch.port), "--served-model-name", launch.served_name]
    return (*base, *render_args(launch.args))


def check(http: Http, mode: ProbeMode, model: str) -> ProbeResult:
    status, body = http("GET", "/health")
    try:
        data = json.loads(body)
    except ValueError:
        return ProbeResult(False, f"/health answered {status} without JSON")
    loaded = status == 200 and data.get("model_loaded") is True
    return ProbeResult(
        loaded, f"/health: status={data.get('status')} model_loaded={data.get('model_loaded')}"
    )


RUNTIME = Runtime(
    name="vllm-mlx",
    startup_timeout=600.0,
    served_model_name=lambda tier: tier,
    check=check,
    argv=argv,
    # vllm-mlx serve: --max-num-seqs "Max concurrent sequences", --max-kv-size "Maximum KV
    # cache size per sequence" (a rotating cache past it).
    limit_flags={"context": "max-kv-size", "concurrency": "max-num-seqs"},
)
