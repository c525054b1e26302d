"""vllm-mlx serving an embedding model: ``POST /v1/embeddings`` only.

vllm-mlx serves embeddings with the ``mlx-embeddings`` package when it is started with
``--embedding-model``: the model is loaded at start and **locked** (a request naming any
other model gets a 400, never a load). Its positional model is the same directory with
``--lazy-load-model``, so no language model is ever loaded at start (a chat request would
try to load the embedding model as one, answer 500 and mark the server unhealthy: the
gateway refuses chat for an embedding tier before it gets there).

The locked name is the model directory's path as given on the command line: it is what
the gateway sends as ``model`` (``Route.served_model`` is set to it by
:mod:`mlxctl.desired.model_info`), and the readiness check finds it in ``/v1/models``
(``owned_by: vllm-mlx-embedding``) and asks for one embedding with it.

Tried on Linux x86_64 (CPU MLX), vllm-mlx 0.5.0, mlx-embeddings 0.1.0, the tests' tiny
BERT: loaded in 0.05 s, two embeddings in 2.4 s (first call), then milliseconds.
"""

from __future__ import annotations

import json

from mlxctl.runtimes import tier_guard
from mlxctl.runtimes.base import (
    HOST,
    Http,
    ProbeMode,
    ProbeResult,
    Runtime,
    ServerLaunch,
    excerpt,
    render_args,
)

NAME = "vllm-mlx-embeddings"
OWNER = "vllm-mlx-embedding"
EMBED_WAIT = 10.0


def argv(launch: ServerLaunch) -> tuple[str, ...]:
    model = str(launch.model_dir)
    # Through the tier guard like every model server (no key: ``guarded`` is off), so
    # that it keeps its own log (:mod:`mlxctl.runtimes.server_log`).
    base = [str(launch.python), "-m", tier_guard.MODULE, "vllm-mlx", "serve", model]
    base += ["--host", HOST, "--port", str(launch.port), "--served-model-name", launch.served_name]
    base += ["--embedding-model", model, "--lazy-load-model"]
    return (*base, *render_args(launch.args))


def embedding_name(models_body: bytes) -> str | None:
    """The locked embedding model's name, from vllm-mlx's ``/v1/models``."""
    try:
        data = json.loads(models_body).get("data", [])
    except (ValueError, AttributeError):
        return None
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and entry.get("owned_by") == OWNER:
            name = entry.get("id")
            return name if isinstance(name, str) else None
    return None


def check(http: Http, mode: ProbeMode, model: str) -> ProbeResult:
    status, body = http("GET", "/v1/models")
    if status != 200:
        return ProbeResult(False, f"/v1/models answered {status}")
    name = embedding_name(body)
    if name is None:
        return ProbeResult(False, "/v1/models lists no embedding model (still loading?)")
    try:
        answer, raw = http(
            "POST", "/v1/embeddings", {"model": name, "input": "ping"}, timeout=EMBED_WAIT
        )
    except TimeoutError:
        return ProbeResult(True, "an embedding is still running (busy)")
    if answer == 200:
        return ProbeResult(True, "one embedding answered")
    return ProbeResult(False, f"cannot embed: /v1/embeddings answered {answer}: {excerpt(raw)}")


RUNTIME = Runtime(
    name=NAME,
    startup_timeout=600.0,
    served_model_name=lambda tier: tier,
    check=check,
    argv=argv,
    # vllm-mlx's own (runtimes/vllm_mlx.py: the positional model, another registry of
    # models, the address, the name, a key), and the two that make it an embedding server.
    managed_flags=frozenset(
        {"model", "models-config", "host", "port", "served-model-name", "api-key"}
        | {"embedding-model", "lazy-load-model"}
    ),
    # vllm-mlx serve --embedding-max-length: "Maximum tokens per embedding input".
    limit_flags={"context": "embedding-max-length"},
)
