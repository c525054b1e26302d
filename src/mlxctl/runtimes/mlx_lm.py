"""``mlx_lm.server``: one model per process, OpenAI-compatible.

Its ``/health`` is 200 while the model is still loading, so readiness is a real
1-token completion; liveness is ``/health`` (answered in milliseconds even during a
long generation). A server whose model failed to load keeps running and answers
every completion 404 with a JSON error: that never recovers, so it is fatal.
"""

from __future__ import annotations

from mlxctl.runtimes.base import (
    HOST,
    Http,
    ProbeMode,
    ProbeResult,
    Runtime,
    ServerLaunch,
    render_args,
)

# mlx_lm.server maps this request model name to the model given on its command line.
DEFAULT_MODEL = "default_model"
READY_PROMPT = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


def argv(launch: ServerLaunch) -> tuple[str, ...]:
    base = [str(launch.python), "-m", "mlx_lm", "server", "--model", str(launch.model_dir)]
    base += ["--host", HOST, "--port", str(launch.port)]
    return (*base, *render_args(launch.args))


def check(http: Http, mode: ProbeMode, model: str) -> ProbeResult:
    if mode == "live":
        status, _ = http("GET", "/health")
        return ProbeResult(status == 200, f"/health answered {status}")
    status, raw = http("POST", "/v1/chat/completions", {"model": model, **READY_PROMPT})
    if status == 200:
        return ProbeResult(True, "1-token completion answered")
    text = raw[:300].decode(errors="replace")
    fatal = status == 404 and text.startswith("{")
    return ProbeResult(False, f"completion answered {status}: {text}", fatal=fatal)


RUNTIME = Runtime(
    name="mlx-lm",
    startup_timeout=300.0,
    served_model_name=lambda _tier: DEFAULT_MODEL,
    check=check,
    argv=argv,
    # mlx_lm.server (0.31) decodes up to --decode-concurrency requests at once; it has no
    # flag that bounds the KV cache of a sequence (--max-tokens bounds the reply only),
    # so ``context`` is estimated but not enforced.
    limit_flags={"concurrency": "decode-concurrency"},
)
