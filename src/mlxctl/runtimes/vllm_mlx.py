"""vllm-mlx: continuous batching on MLX, OpenAI-compatible.

Its ``/health`` is always 200 and its body says whether the model is loaded, which
is where readiness starts. When it fails while loading it exits, and only its log says why (the
observer reads the log's tail).

``model_loaded: true`` does not prove it can generate, so readiness and liveness also
ask for a 1-token completion and judges it by its answer, never its speed. Its
simple engine serves one generation at a time and answers any other completion at
once with 503 ``text_generation_busy`` (seen here during a 32768-token generation a
``"top_p": 5`` request started): that is busy, not broken, as is a completion still
running after ``COMPLETION_WAIT``. Malformed fields (``"stop": 123``) are refused
with 422 by its request validation and harm nothing.
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
    generates,
    render_args,
)

# What its simple engine answers to a completion while another generation runs.
BUSY = b"text_generation_busy"


def argv(launch: ServerLaunch) -> tuple[str, ...]:
    # Through mlxctl's guard, which adds ``--api-key`` from the tier's key file in the
    # process (never on the command line, which every user can read).
    base = [str(launch.python), "-m", tier_guard.MODULE, "vllm-mlx", "serve", str(launch.model_dir)]
    base += ["--host", HOST, "--port", str(launch.port), "--served-model-name", launch.served_name]
    return (*base, *render_args(launch.args))


def check(http: Http, mode: ProbeMode, model: str) -> ProbeResult:
    status, body = http("GET", "/health")
    try:
        data = json.loads(body)
    except ValueError:
        return ProbeResult(False, f"/health answered {status} without JSON")
    loaded = status == 200 and isinstance(data, dict) and data.get("model_loaded") is True
    detail = (
        f"/health: status={data.get('status')} model_loaded={data.get('model_loaded')}"
        if isinstance(data, dict)
        else f"/health answered {status}"
    )
    if not loaded:
        return ProbeResult(loaded, detail)
    answer, raw = generates(http, model)
    if answer is None or (answer == 503 and BUSY in raw):
        return ProbeResult(True, f"{detail}; busy (another generation runs)", busy=True)
    if answer == 200:
        return ProbeResult(True, f"{detail}; 1-token completion answered")
    return ProbeResult(False, f"cannot generate: completion answered {answer}: {excerpt(raw)}")


RUNTIME = Runtime(
    name="vllm-mlx",
    startup_timeout=600.0,
    served_model_name=lambda tier: tier,
    check=check,
    argv=argv,
    # ``vllm-mlx serve`` (vllm_mlx/cli.py create_parser): the model is positional and
    # ``--models-config`` would serve a whole registry of other models (``--model``
    # abbreviates it); ``--api-key`` is the tier's own key, set by mlxctl (runtimes.tier_guard).
    managed_flags=frozenset(
        {"model", "models-config", "host", "port", "served-model-name", "api-key"}
    ),
    # vllm-mlx serve: --max-num-seqs "Max concurrent sequences", --max-kv-size "Maximum KV
    # cache size per sequence" (a rotating cache past it).
    limit_flags={"context": "max-kv-size", "concurrency": "max-num-seqs"},
    guarded=True,
)
