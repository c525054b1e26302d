"""``mlx_lm.server``: one model per process, OpenAI-compatible.

Its ``/health`` is 200 while the model is still loading, so readiness is a real
1-token completion. A server whose model failed to load keeps running and answers
every completion 404 with a JSON error: that never recovers, so it is fatal.

One malformed request (``"stop": 123``) kills its generation thread: the process
keeps running, every completion then answers 404 ``{"error": "generation thread
died"}`` within milliseconds, and (mlx-lm 0.32.2) ``/health`` answers 503
``{"status": "unavailable"}``. Liveness therefore checks ``/health`` (milliseconds
even during a 4-minute generation) and then asks for a 1-token completion, judging
it by its *answer*, never its speed: an error answer means the server cannot
generate; a completion still running after ``COMPLETION_WAIT`` is queued behind a
generation, which is busy, not broken. A dead generation thread is reported as
``poisoned``: a request caused it, so the replacement is not counted as a crash.
"""

from __future__ import annotations

from mlxctl.runtimes import tier_guard
from mlxctl.runtimes.base import (
    COMPLETION_PROMPT,
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

# mlx_lm.server maps this request model name to the model given on its command line.
DEFAULT_MODEL = "default_model"
READY_PROMPT = COMPLETION_PROMPT
# What mlx_lm.server answers once its generation thread is gone (to every completion).
THREAD_DIED = "generation thread died"


def argv(launch: ServerLaunch) -> tuple[str, ...]:
    # Through mlxctl's guard: no CORS grant, no request without the tier's key.
    base = [str(launch.python), "-m", tier_guard.MODULE, "mlx-lm", "--model", str(launch.model_dir)]
    base += ["--host", HOST, "--port", str(launch.port)]
    return (*base, *render_args(launch.args))


def check(http: Http, mode: ProbeMode, model: str) -> ProbeResult:
    if mode == "live":
        return _live(http, model)
    status, raw = http("POST", "/v1/chat/completions", {"model": model, **READY_PROMPT})
    if status == 200:
        return ProbeResult(True, "1-token completion answered")
    text = excerpt(raw)
    if THREAD_DIED in text:
        return _poisoned(f"completion answered {status}: {text}")
    fatal = status == 404 and text.startswith("{")
    return ProbeResult(False, f"completion answered {status}: {text}", fatal=fatal)


def _live(http: Http, model: str) -> ProbeResult:
    status, raw = http("GET", "/health")
    if status == 503 and b"unavailable" in raw:
        return _poisoned(f"/health answered 503: {excerpt(raw)}")
    if status != 200:
        return ProbeResult(False, f"/health answered {status}")
    answer, body = generates(http, model)
    if answer is None:
        return ProbeResult(True, "/health answered 200; busy (a completion is queued)", busy=True)
    if answer == 200:
        return ProbeResult(True, "/health answered 200; 1-token completion answered")
    text = excerpt(body)
    if THREAD_DIED in text:
        return _poisoned(f"completion answered {answer}: {text}")
    return ProbeResult(False, f"cannot generate: completion answered {answer}: {text}")


def _poisoned(detail: str) -> ProbeResult:
    # Fatal too: while starting, it will never become ready either.
    return ProbeResult(
        False, f"cannot generate ({THREAD_DIED}): {detail}", fatal=True, poisoned=True
    )


RUNTIME = Runtime(
    name="mlx-lm",
    startup_timeout=300.0,
    served_model_name=lambda _tier: DEFAULT_MODEL,
    check=check,
    argv=argv,
    # mlx_lm.server's parser (mlx_lm/server.py main): --model, --host, --port.
    # (``--allowed-origins`` is left to the tier: the guard grants no origin whatever it
    # says, see runtimes.tier_guard.)
    managed_flags=frozenset({"model", "host", "port"}),
    # mlx_lm.server (0.31) decodes up to --decode-concurrency requests at once; it has no
    # flag that bounds the KV cache of a sequence (--max-tokens bounds the reply only),
    # so ``context`` is estimated but not enforced.
    limit_flags={"concurrency": "decode-concurrency"},
    guarded=True,
)
