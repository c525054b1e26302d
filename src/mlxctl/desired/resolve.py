"""Desired state: validated stack files resolved into the exact services to run.

Resolution is where the stack meets the machine: ports are assigned (and kept
stable across runs), model sources become directories, command lines and the
gateway config are rendered, and each service gets its ``spec_hash``. The hash
covers exactly what is launch-relevant (command line, environment, files written
for it, model identity) and carries a version, so a comment or an edit to another
tier never restarts anything and a future change of the hash recipe is explicit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlxctl.desired.ports import assign_ports
from mlxctl.desired.state import (
    GATEWAY,
    HASH_VERSION,
    DesiredService,
    DesiredState,
    ModelRef,
)
from mlxctl.errors import NotFoundError, SpecError
from mlxctl.runtimes.base import ArgValue, ProbeSpec, ServerLaunch
from mlxctl.runtimes.litellm import (
    GATEWAY_ENV,
    KEY_FILE_ENV,
    MASTER_KEY_ENV,
    REMOTE_KEY_ENV_PREFIX,
    RemoteRoute,
    Route,
    gateway_argv,
    render_config,
)
from mlxctl.runtimes.litellm import RUNTIME as GATEWAY_RUNTIME
from mlxctl.runtimes.registry import runtime as runtime_named
from mlxctl.spec import secrets
from mlxctl.spec.loader import SourcedTier, StackSet
from mlxctl.spec.schema import TierSpec

ModelResolver = Callable[[SourcedTier], ModelRef]


@dataclass(frozen=True)
class ResolveContext:
    """The machine facts resolution needs, passed in so tests control them."""

    python: Path
    state_dir: Path
    environ: Mapping[str, str]
    resolve_model: ModelResolver
    assigned_ports: Mapping[str, int] = field(default_factory=dict)
    read_secret: Callable[[str], str] | None = None


def spec_hash(
    argv: Sequence[str], env: Mapping[str, str], files: Mapping[str, str], model: str
) -> str:
    """The versioned hash of everything that makes a launch different."""
    payload = json.dumps(
        {"argv": list(argv), "env": dict(sorted(env.items())), "files": files, "model": model},
        sort_keys=True,
    )
    return f"{HASH_VERSION}:{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def resolve_desired(stack: StackSet, ctx: ResolveContext) -> DesiredState:
    """Resolve a validated stack into the services to run; problems raise :class:`SpecError`."""
    ports = assign_ports(stack, ctx.assigned_ports)
    problems: list[str] = []
    tiers: list[DesiredService] = []
    for tier in stack.tiers:
        try:
            tiers.append(_tier_service(tier, ports[tier.spec.name], ctx))
        except (SpecError, secrets.MissingSecretError) as exc:
            problems.append(str(exc))
    gateway = None
    # The gateway fronts tiers: with none to route to, it is not run.
    if stack.gateway.enabled and tiers:
        try:
            gateway = _gateway_service(stack, tiers, ctx)
        except secrets.MissingSecretError as exc:
            problems.append(str(exc))
    if problems:
        raise SpecError(problems)
    return DesiredState(
        tiers=tuple(tiers),
        gateway=gateway,
        files=stack.files,
        empty_files=stack.empty_files,
        ports=ports,
    )


def _resolved_env(
    env: Sequence[tuple[str, str]], ctx: ResolveContext, where: str
) -> dict[str, str]:
    """Environment for hashing: plain values as they are, references as digests."""
    out: dict[str, str] = {}
    kwargs = {"read_file": ctx.read_secret} if ctx.read_secret else {}
    for key, raw in env:
        if secrets.find_refs(raw):
            value = secrets.resolve(raw, ctx.environ, where=f"{where}: env.{key}", **kwargs)
            out[key] = f"<secret {secrets.digest(value)}>"
        else:
            out[key] = raw
    return out


def _tier_service(tier: SourcedTier, port: int, ctx: ResolveContext) -> DesiredService:
    spec = tier.spec
    where = f"{tier.file}:{tier.line}"
    model = ctx.resolve_model(tier)
    runtime = runtime_named(spec.runtime)
    assert runtime.argv is not None, f"{spec.runtime} is not a model server"
    served = runtime.served_model_name(spec.name)
    args = {**catalog_serving_args(spec), **spec.args}
    argv = runtime.argv(ServerLaunch(ctx.python, model.directory, port, served, args))
    env = tuple(sorted(spec.env.items()))
    hashed_env = _resolved_env(env, ctx, f"{where}: tier '{spec.name}'")
    launch = {
        "runtime": spec.runtime,
        "model": model.display,
        "port": port,
        "args": dict(args),
        "env": dict(env),
    }
    return DesiredService(
        name=spec.name,
        role="tier",
        runtime=spec.runtime,
        port=port,
        argv=argv,
        env=env,
        files=(),
        model=model,
        launch=launch,
        spec_hash=spec_hash(argv, hashed_env, {}, model.identity),
        probe=ProbeSpec(kind=runtime.name, port=port, model=served),
        startup_timeout=spec.startup_timeout or runtime.startup_timeout,
        source=where,
    )


def generated_key_path(state_dir: Path) -> Path:
    """Where mlxctl keeps the gateway key it generated (mode 0600)."""
    return state_dir / GATEWAY / "master_key"


def catalog_serving_args(spec: TierSpec) -> dict[str, ArgValue]:
    """vllm-mlx flags a catalog model's capabilities call for (tool calls, reasoning).

    Without ``--tool-call-parser`` a tool call reaches the client as plain text; the
    catalog knows each model's parser. The tier's own ``args`` win (``false`` drops one).
    """
    if spec.runtime != "vllm-mlx" or not isinstance(spec.model, str):
        return {}
    from mlxctl.catalog.entries import load_entry

    try:
        caps = load_entry(spec.model).capabilities
    except (NotFoundError, SpecError, OSError, ValueError):
        return {}  # resolving the model reports an unknown id with its line
    out: dict[str, ArgValue] = {}
    if caps.tool_calling and caps.tool_call_parser:
        out |= {"enable-auto-tool-choice": True, "tool-call-parser": caps.tool_call_parser}
    if caps.reasoning_parser:
        out["reasoning-parser"] = caps.reasoning_parser
    return out


def master_key_ref(stack: StackSet, state_dir: Path) -> str:
    """The gateway key reference: the user's, or the key mlxctl generated (mode 0600)."""
    return stack.gateway.master_key or f"${{file:{generated_key_path(state_dir)}}}"


def remote_key_env(name: str) -> str:
    """The gateway environment variable that carries remote ``name``'s API key."""
    return REMOTE_KEY_ENV_PREFIX + name.upper().replace("-", "_")


def _gateway_service(
    stack: StackSet, tiers: Sequence[DesiredService], ctx: ResolveContext
) -> DesiredService:
    """The gateway: launched by argv, port, bind address and keys; routed by its file.

    The routes file (tiers, aliases, fallbacks, limits) is left out of the hash: the
    gateway reloads it in place when it is replaced, so a tier added, removed or
    re-routed never restarts the gateway (and never interrupts the other tiers).
    """
    gw = stack.gateway
    config_path = ctx.state_dir / GATEWAY / "config.json"
    specs = {t.spec.name: t.spec for t in stack.tiers}
    routes = [
        Route(
            name=t.name,
            port=t.port,
            served_model=t.probe.model,
            aliases=tuple(specs[t.name].aliases),
            # Enough to keep a batching server busy, never a burst past mlx_lm.server's
            # listen backlog of 5 (the rest wait in the gateway).
            max_concurrency=max(4, specs[t.name].concurrency),
        )
        for t in tiers
    ]
    routed = {t.name for t in tiers}
    remotes = [
        RemoteRoute(
            name=r.name,
            model=r.model,
            api_base=r.api_base,
            api_key_env=remote_key_env(r.name) if r.api_key else None,
        )
        for r in gw.remotes
    ]
    # A fallback to a tier that is not resolved (its model is missing) is left out.
    fallbacks = {
        name: [f for f in specs[name].fallbacks if f in routed or f in {r.name for r in remotes}]
        for name in sorted(routed)
    }
    config = render_config(
        routes, remotes=remotes, fallbacks=fallbacks, retries=gw.retries, timeout=gw.timeout
    )
    env_pairs = [*GATEWAY_ENV, (MASTER_KEY_ENV, master_key_ref(stack, ctx.state_dir))]
    if gw.master_key is None:
        env_pairs.append((KEY_FILE_ENV, str(generated_key_path(ctx.state_dir))))
    env_pairs += [(remote_key_env(r.name), r.api_key) for r in gw.remotes if r.api_key]
    env = tuple(sorted(env_pairs))
    where = f"{stack.files[0] if stack.files else '<stack>'}: gateway"
    # A generated key is stable by construction (created once when the gateway first
    # starts): leave it out of the hash so its creation restarts nothing.
    hashed = env if gw.master_key is not None else [(k, v) for k, v in env if k != MASTER_KEY_ENV]
    hashed_env = _resolved_env(hashed, ctx, where)
    argv = gateway_argv(python=ctx.python, config=config_path, port=gw.port, host=gw.host)
    files = ((str(config_path), config),)
    launch = {
        "runtime": "litellm",
        "port": gw.port,
        "host": gw.host,
        "routes": {r.name: f"{r.port}/{r.served_model}" for r in routes},
        "masterKey": master_key_ref(stack, ctx.state_dir),
    }
    probe_host = gw.host if gw.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return DesiredService(
        name=GATEWAY,
        role="gateway",
        runtime="litellm",
        port=gw.port,
        argv=argv,
        env=env,
        files=files,
        model=None,
        launch=launch,
        spec_hash=spec_hash(argv, hashed_env, {}, ""),
        probe=ProbeSpec(kind=GATEWAY_RUNTIME.name, port=gw.port, host=probe_host),
        startup_timeout=GATEWAY_RUNTIME.startup_timeout,
        source=where,
    )
