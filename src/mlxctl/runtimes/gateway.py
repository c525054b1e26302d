"""mlxctl's gateway as a runtime: its command line, health check and routes file.

The gateway is mlxctl's own small ASGI app around ``litellm.Router``
(:mod:`mlxctl.gateway`, chosen over LiteLLM's proxy server by measurement, see
``docs/gateway.md``). This adapter is the contract between the two sides: mlxctl
renders a :class:`GatewayConfig` to a JSON file (mode 0600); the gateway validates
the same model when it reads that file, and reads it again whenever the file is
replaced, so a route change never restarts the gateway process.

One public model name per tier (plus its aliases), each pinned to the single model
that tier's server holds: a client names ``fast`` and can never make a backend load
another model. No secret is ever in the file: the master key and a remote
fallback's key reach the gateway through its environment, named here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mlxctl.runtimes.base import HOST, Http, ProbeMode, ProbeResult, Runtime

MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
# The generated key's file (a path, no secret): the gateway re-reads it when it is
# replaced, so ``mlxctl gateway key --rotate`` takes effect without a restart.
KEY_FILE_ENV = "MLXCTL_GATEWAY_KEY_FILE"
# The controller's admin socket (a path, no secret): where the gateway reports demand.
ADMIN_SOCKET_ENV = "MLXCTL_ADMIN_SOCKET"
# Environment variable that carries the remote fallback ``NAME``'s API key.
REMOTE_KEY_ENV_PREFIX = "MLXCTL_REMOTE_KEY_"

# Environment every gateway process gets: no remote cost-map fetch at start (the
# machine may be offline, and it slows start-up by seconds), no telemetry.
GATEWAY_ENV: tuple[tuple[str, str], ...] = (
    ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
    ("LITELLM_TELEMETRY", "False"),
    # The routes file's version. The file is left out of the gateway's launch hash (it is
    # reloaded in place), so a gateway running older code would refuse a file with fields
    # it does not know and keep its old routes: a new version moves the hash once, and the
    # gateway is replaced (with its overlapping handover). 2: the model facts of issue 18.
    ("MLXCTL_ROUTES_VERSION", "2"),
)

# Defaults for local models: a cold model is slow on its first token and a stream
# may run for minutes, so the timeout is long; one retry rides over a tier that is
# restarting (connection refused) without making a failing request slow.
DEFAULT_TIMEOUT = 600.0
DEFAULT_RETRIES = 1
# Seconds a request waits for a tier that refuses connections (starting or restarting)
# when it has no fallback: long enough for a large model to load (30 s cut a 45 s load's
# first requests off with a 502), short of a client's own timeout (OpenAI SDK: 600 s).
DEFAULT_HOLD = 120.0
# Seconds a request may wait at a busy tier's gate (its concurrency limit) before it is
# answered 503 with Retry-After, rather than waiting behind a queue of long generations.
DEFAULT_QUEUE_TIMEOUT = 120.0
# Requests that may wait in the gateway for one tier's turn (16 concurrent agents, each
# with a few requests in flight, fit).
DEFAULT_MAX_WAITING = 64


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Frozen):
    """What ``/v1/models`` says of a tier's model (:mod:`mlxctl.desired.model_info`): from
    the catalog entry when the tier names one, else from the model's own files; the
    tier's written ``context`` wins over both. Unknown is None / False."""

    context_length: int | None = Field(default=None, gt=0)
    tools: bool = False
    reasoning: bool = False
    vision: bool = False
    embeddings: bool = False
    # False for a tier that serves only embeddings: the gateway refuses chat for it.
    chat: bool = True
    # Where these came from: "catalog <id>", "config.json", "stack" (the tier's context).
    sources: tuple[str, ...] = ()


class Route(_Frozen):
    """One tier behind the gateway: its public name, aliases and server."""

    name: str
    port: int
    served_model: str
    aliases: tuple[str, ...] = ()
    # The tier's capacity: requests the gateway sends this server at once; the rest wait
    # in the gateway (a vllm-mlx tier without continuous batching takes one).
    max_concurrency: int = Field(default=4, gt=0)
    # Requests that may wait in the gateway for a turn at this tier; one more is
    # answered 503 with ``Retry-After`` (:mod:`mlxctl.gateway.capacity`).
    max_waiting: int = Field(default=DEFAULT_MAX_WAITING, ge=0)
    # The runtime serving it ("mlx-lm", "vllm-mlx"; "" when unknown): how its errors and
    # its "busy" answers read (:mod:`mlxctl.gateway.backend_errors`), and which extension
    # fields it takes (:mod:`mlxctl.gateway.tierfit`).
    runtime: str = ""
    # Tokens of context the tier serves (the stack's ``context``, else the model's
    # config), when known: ``max_tokens`` is capped to it.
    context: int | None = Field(default=None, gt=0)
    # The model's ``tokenizer.json`` (a path), when it has one: the gateway counts a
    # prompt's tokens with it against ``context`` (:mod:`mlxctl.gateway.prompt_tokens`).
    tokenizer: str | None = None
    # The file holding the tier's own secret (a path, no secret): the gateway sends it
    # as the tier's bearer key (:mod:`mlxctl.runtimes.tier_guard`).
    key_file: str | None = None
    # ``load: on-demand``: the tier runs only while requests want it. The gateway holds
    # a request for it (reporting it as demand) until the controller says it serves,
    # up to ``hold`` seconds (the tier's startup timeout).
    on_demand: bool = False
    hold: float | None = Field(default=None, ge=0)
    # What else the gateway checks a request against before the tier sees it (issue 18;
    # None: unknown, the strictest check applies): the model's vocabulary size
    # (logit_bias ids) and whether it reads images.
    vocab_size: int | None = Field(default=None, gt=0)
    vision: bool | None = None
    # What the tier's model is and can do, for /v1/models (mlxctl.desired.model_info).
    info: ModelInfo = Field(default_factory=ModelInfo)
    # The machine serving it (``spec.hosts``; None: a stack without hosts). With
    # ``peer`` set the tier runs on another machine: the gateway relays every request
    # for it to that machine's gateway (``peer``, its base URL) with the master key,
    # and ``port`` is that gateway's port (docs/multi-host.md).
    host: str | None = None
    peer: str | None = None


class RemoteRoute(_Frozen):
    """A remote fallback: a LiteLLM model string, reached only when a local tier fails."""

    name: str
    model: str
    api_base: str | None = None
    # The environment variable holding the API key (never the key itself).
    api_key_env: str | None = None


class GatewayConfig(_Frozen):
    """Everything the gateway routes by. Rendered by mlxctl, read by the gateway."""

    routes: tuple[Route, ...] = ()
    remotes: tuple[RemoteRoute, ...] = ()
    # {"fast": ["standard", "remote"]}: tried in order when ``fast`` fails.
    fallbacks: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    retries: int = Field(default=DEFAULT_RETRIES, ge=0, le=10)
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0)
    # Relay a local tier's answer as it wrote it (but for its ``model``: the name the
    # client sent), and hand the request to the Router
    # only when the tier fails (False: every request through the Router; measured in
    # docs/gateway.md, it costs ~7 ms a request here).
    fast_path: bool = True
    # Seconds a request waits for a tier that refuses connections (it is starting or
    # restarting) when the tier has no fallback to go to instead.
    hold: float = Field(default=DEFAULT_HOLD, ge=0)
    # Seconds a request waits at a tier's gate before a 503 (``Retry-After``).
    queue_timeout: float = Field(default=DEFAULT_QUEUE_TIMEOUT, gt=0)
    # Image parts with an http(s) URL reach the tiers (which fetch them: from this
    # machine, loopback included); off, only inline data: URLs do
    # (``spec.gateway.remoteImages``).
    remote_images: bool = False

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)

    def public_names(self) -> dict[str, str]:
        """Every name a client may send, mapped to the route it reaches."""
        names = {r.name: r.name for r in self.routes}
        for route in self.routes:
            for alias in route.aliases:
                names.setdefault(alias, route.name)
        return names


# -- demand: what the gateway reports to the controller, and what it is told back ----------
#
# The gateway decides nothing: it reports, for each tier, the requests it holds and the
# ones in flight (level-triggered: the whole picture, again and again, so a controller
# that restarts learns it from the next report), and holds or answers requests by the
# verdicts the controller's planner gives back. ``PUT /v1/demand`` on the admin socket.


class TierLoad(_Frozen):
    """What the gateway sees of one tier's requests."""

    # Requests held for the tier (not sent yet: it is cold, loading or draining).
    waiting: int = Field(default=0, ge=0)
    # Requests sent to the tier and not finished (a stream: until its last byte).
    in_flight: int = Field(default=0, ge=0)
    # Wall-clock time the oldest held request arrived.
    waiting_since: float | None = None
    # Wall-clock time the last request ended (its last byte), None before any did.
    last_end: float | None = None
    # The gateway holds this tier's new requests (its last verdict said ``draining``):
    # once it says so with nothing in flight, the controller may stop the tier without
    # cutting a request that was on its way.
    held_back: bool = False


class DemandReport(_Frozen):
    """The gateway's whole view of demand, sent on every change and every few seconds."""

    gateway_pid: int = Field(ge=1)
    tiers: dict[str, TierLoad] = Field(default_factory=dict)


VerdictState = Literal["ready", "cold", "loading", "draining", "unavailable"]


class TierVerdict(_Frozen):
    """What the controller's last plan says of a tier, for the requests held for it.

    - ``ready``: send requests to it.
    - ``cold`` / ``loading``: hold them (``detail`` says why: waiting for memory, for an
      eviction, for its readiness check).
    - ``draining``: hold new ones; the ones in flight finish (an eviction or unload
      waits for them).
    - ``unavailable``: answer the held requests now with 503, ``Retry-After:
      retry_after`` and ``detail`` (its load failed, it is backing off, it is blocked).
    """

    state: VerdictState
    detail: str = ""
    retry_after: float | None = Field(default=None, ge=0)


class DemandAnswer(_Frozen):
    """The controller's answer to a :class:`DemandReport`: a verdict per on-demand tier."""

    tiers: dict[str, TierVerdict] = Field(default_factory=dict)


def render_config(
    routes: Sequence[Route],
    *,
    remotes: Sequence[RemoteRoute] = (),
    fallbacks: Mapping[str, Sequence[str]] | None = None,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT,
    hold: float = DEFAULT_HOLD,
    remote_images: bool = False,
) -> str:
    """The gateway's routes file: deterministic JSON, so equal routes give equal bytes."""
    config = GatewayConfig(
        routes=tuple(sorted(routes, key=lambda r: r.name)),
        remotes=tuple(sorted(remotes, key=lambda r: r.name)),
        fallbacks={k: tuple(v) for k, v in sorted((fallbacks or {}).items()) if v},
        retries=retries,
        timeout=timeout,
        hold=hold,
        remote_images=remote_images,
    )
    return config.model_dump_json(indent=2) + "\n"


def parse_config(text: str) -> GatewayConfig:
    """The routes file as the gateway reads it (raises pydantic's ValidationError)."""
    return GatewayConfig.model_validate_json(text)


def gateway_argv(*, python: Path, config: Path, port: int, host: str = HOST) -> tuple[str, ...]:
    return (
        str(python),
        "-m",
        "mlxctl.gateway",
        "--config",
        str(config),
        "--host",
        host,
        "--port",
        str(port),
    )


def check(http: Http, mode: ProbeMode, model: str) -> ProbeResult:
    """``/health/liveliness``: answered only once the gateway serves, with its PID (while
    one gateway replaces another on the same port, either may answer)."""
    status, body = http("GET", "/health/liveliness")
    pid: int | None = None
    try:
        data = json.loads(body)
        pid = data.get("pid") if isinstance(data, dict) else None
    except ValueError:
        pass
    return ProbeResult(
        status == 200,
        f"/health/liveliness answered {status}",
        pid=pid if isinstance(pid, int) else None,
    )


# The name predates this module's; it stays "litellm" because every running gateway's
# recorded launch (and so its hash) carries it: see runtimes/registry.py.
RUNTIME = Runtime(
    name="litellm",
    startup_timeout=120.0,
    served_model_name=lambda tier: tier,
    check=check,
)
