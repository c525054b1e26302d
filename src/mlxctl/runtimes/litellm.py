"""The LiteLLM gateway: its command line, its health check and its configuration.

One public model name per tier, each pinned to the single model that tier's server
holds: a client names ``fast`` and can never make a backend load another model.
The master key never appears in the file; LiteLLM reads it from the environment
(``os.environ/LITELLM_MASTER_KEY``). The rendering is deterministic (sorted, JSON,
which LiteLLM reads as YAML) so the gateway restarts only when a route changes,
never because a tier behind it restarted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlxctl.runtimes.base import HOST, Http, ProbeMode, ProbeResult, Runtime

MASTER_KEY_ENV = "LITELLM_MASTER_KEY"

# Environment every gateway process gets: no remote cost-map fetch at start (the
# machine may be offline, and it slows start-up), no telemetry.
GATEWAY_ENV: tuple[tuple[str, str], ...] = (
    ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
    ("LITELLM_TELEMETRY", "False"),
)


@dataclass(frozen=True)
class Route:
    """One public model name and the server behind it."""

    name: str
    port: int
    served_model: str


def render_config(routes: Sequence[Route], *, request_timeout: float = 600.0) -> str:
    """The LiteLLM proxy config for ``routes``."""
    model_list = [
        {
            "model_name": r.name,
            "litellm_params": {
                "model": f"openai/{r.served_model}",
                "api_base": f"http://{HOST}:{r.port}/v1",
                "api_key": "none",
            },
        }
        for r in sorted(routes, key=lambda r: r.name)
    ]
    config = {
        "model_list": model_list,
        "litellm_settings": {"drop_params": True, "request_timeout": request_timeout},
        "router_settings": {"num_retries": 0},
        "general_settings": {"master_key": f"os.environ/{MASTER_KEY_ENV}"},
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


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


def check(http: Http, mode: ProbeMode, model: str) -> ProbeResult:
    """``/health/liveliness``: LiteLLM's ``/health`` calls every model behind it."""
    status, _ = http("GET", "/health/liveliness")
    return ProbeResult(status == 200, f"/health/liveliness answered {status}")


RUNTIME = Runtime(
    name="litellm",
    startup_timeout=120.0,
    served_model_name=lambda tier: tier,
    check=check,
)
