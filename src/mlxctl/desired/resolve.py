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
from typing import Any

from mlxctl.desired.group import rank_environment
from mlxctl.desired.model_info import attach_info
from mlxctl.desired.placement import Elsewhere
from mlxctl.desired.ports import assign_ports
from mlxctl.desired.state import (
    GATEWAY,
    HASH_VERSION,
    DesiredService,
    DesiredState,
    Group,
    ModelRef,
)
from mlxctl.desired.tier_route import (
    launch_facts,
    recorded_route_facts,
    tier_capacity,
    tier_context,
    tier_key_path,
)
from mlxctl.errors import MlxctlError, NotFoundError, SpecError
from mlxctl.paths import Paths, admin_socket_path
from mlxctl.runtimes.base import ArgValue, ProbeSpec, Runtime, ServerLaunch
from mlxctl.runtimes.gateway import (
    ADMIN_SOCKET_ENV,
    GATEWAY_ENV,
    KEY_FILE_ENV,
    MASTER_KEY_ENV,
    REMOTE_KEY_ENV_PREFIX,
    RemoteRoute,
    Route,
    gateway_argv,
    render_config,
)
from mlxctl.runtimes.gateway import RUNTIME as GATEWAY_RUNTIME
from mlxctl.runtimes.registry import runtime as runtime_named
from mlxctl.runtimes.tier_guard import KEY_FILE_ENV as TIER_KEY_FILE_ENV
from mlxctl.spec import secrets
from mlxctl.spec.schema import HostSpec, TierSpec
from mlxctl.spec.stack_set import SourcedTier, StackSet

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
    # Tiers other stacks own (from the inventory) that the shared gateway routes to too.
    extra_routes: tuple[Route, ...] = ()
    # Whether a port is taken by some process (asked when a port is first assigned).
    port_in_use: Callable[[int], bool] | None = None
    # Whether a tier's remembered automatic port is held by a program other than its own
    # server (then it is reassigned).
    port_held_by_other: Callable[[str, int], bool] | None = None
    # This machine's name among the stack's hosts, and the tiers other machines serve
    # (:mod:`mlxctl.desired.placement`): routed to those machines' gateways.
    host: str | None = None
    elsewhere: tuple[Elsewhere, ...] = ()
    # The stack's hosts, and each one's gateway base URL: a distributed tier's hostfile
    # lists its members' addresses, and its members reach each other's gateways.
    hosts: tuple[HostSpec, ...] = ()
    peers: Mapping[str, str] = field(default_factory=dict)


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
    ports = assign_ports(stack, ctx.assigned_ports, ctx.port_in_use, ctx.port_held_by_other)
    problems: list[str] = []
    tiers: list[DesiredService] = []
    unresolved: dict[str, str] = {}
    routes: list[Route] = []
    for tier in stack.tiers:
        name = tier.spec.name
        runtime = runtime_named(tier.spec.runtime)
        service: DesiredService | None = None
        try:
            service = _tier_service(tier, ports[name], ctx)
            tiers.append(service)
        except (SpecError, secrets.MissingSecretError) as exc:
            problems.append(str(exc))
        except (MlxctlError, OSError, ValueError) as exc:
            # One tier's model cannot be read: that tier is blocked, the others converge.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            unresolved[name] = f"{tier.file}:{tier.line}: model: {first}"
        # What the gateway checks requests against (the model's config) ...
        facts = model_facts(service.model.directory if service and service.model else None)
        if tier.spec.context is not None and "context" in tier.spec.model_fields_set:
            written = tier.spec.context
            facts["context"] = min(written, facts["context"] or written)
        route = Route(
            name=name,
            port=ports[name],
            served_model=runtime.served_model_name(name),
            aliases=tuple(tier.spec.aliases),
            # The requests its server takes at once (desired.tier_route); the rest
            # wait in the gateway.
            max_concurrency=tier_capacity(tier.spec),
            runtime=runtime.name,
            # This machine, in a stack of several (its /v1/models names it).
            host=ctx.host,
            key_file=str(tier_key_path(ctx.state_dir, name)) if runtime.guarded else None,
            on_demand=tier.load == "on-demand",
            # A request for a cold tier waits as long as the tier may take to start.
            hold=(tier.spec.startup_timeout or runtime.startup_timeout)
            if tier.load == "on-demand"
            else None,
            **facts,
        )
        if service is not None:
            # ... and what its launch says: its capacity with the catalog's args, its
            # context (the smaller of the two when both are known).
            launched = recorded_route_facts(service.launch, runtime.name)
            if facts["context"] is not None and "context" in launched:
                launched["context"] = min(launched["context"], facts["context"])
            route = route.model_copy(update=launched)
        if tier.spec.distributed is not None and tier.spec.distributed.hosts[0] != ctx.host:
            # A rank above 0 serves no HTTP: this machine's gateway relays to rank 0's.
            route = _rank0_route(tier, ctx) or route
        routes.append(route)
    # What each tier's model is and can do, for the gateway's /v1/models.
    specs = {tier.spec.name: tier.spec for tier in stack.tiers}
    routes = attach_info(routes, specs, {s.name: s.model for s in tiers if s.model is not None})
    gateway = None
    # The gateway fronts tiers (every stack's): with none to route to, it is not run.
    routes += [r for r in ctx.extra_routes if r.name not in ports]
    # Another machine's tiers, with what the catalog says of their models (their files
    # are on that machine, whose gateway checks requests against them).
    elsewhere_specs = {e.tier.spec.name: e.tier.spec for e in ctx.elsewhere}
    routes += attach_info([_peer_route(e) for e in ctx.elsewhere], elsewhere_specs, {})
    if stack.gateway.enabled and routes:
        try:
            gateway = _gateway_service(stack, routes, ctx)
        except secrets.MissingSecretError as exc:
            problems.append(str(exc))
    if problems:
        raise SpecError(problems)
    unknown = ", ".join(str(p) for p in stack.unknown_files)
    return DesiredState(
        tiers=tuple(tiers),
        gateway=gateway,
        files=stack.files,
        empty_files=stack.empty_files,
        ports=ports,
        scope=stack.scope,
        suspended_stacks=stack.suspended_stacks,
        unresolved=unresolved,
        hold_prune=(
            f"not pruned while {unknown} is invalid with no last valid version" if unknown else ""
        ),
        invalid_files=stack.invalid,
        host=ctx.host,
        elsewhere={e.tier.spec.name: e.host.name for e in ctx.elsewhere},
    )


# A tier on another machine is queued by that machine's gateway, never by this one.
PEER_CAPACITY = 4096


def _peer_route(elsewhere: Elsewhere) -> Route:
    """The route to a tier another machine serves: its names, relayed to its machine's
    gateway, which holds, queues, checks and falls back for it as for any of its own."""
    tier = elsewhere.tier
    host = elsewhere.host
    return Route(
        name=tier.spec.name,
        port=int(elsewhere.peer.rsplit(":", 1)[1]),
        served_model=tier.spec.name,
        aliases=tuple(tier.spec.aliases),
        max_concurrency=PEER_CAPACITY,
        runtime=tier.spec.runtime,
        context=tier.spec.context,
        host=host.name,
        peer=elsewhere.peer,
    )


def _rank0_route(tier: SourcedTier, ctx: ResolveContext) -> Route | None:
    """The route of a distributed tier on a member whose rank is not 0: relayed to rank
    0's machine's gateway, as a tier another machine serves."""
    assert tier.spec.distributed is not None
    first = tier.spec.distributed.hosts[0]
    host = next((h for h in ctx.hosts if h.name == first), None)
    if host is None or first not in ctx.peers:
        return None
    return _peer_route(Elsewhere(tier, host, ctx.peers[first]))


def _group(tier: SourcedTier, ctx: ResolveContext) -> tuple[Group, dict[str, str], dict[str, str]]:
    """This machine's rank of distributed tier ``tier``: the group, the rank's
    environment and the files its launch writes."""
    spec = tier.spec.distributed
    assert spec is not None
    by_name = {h.name: h for h in ctx.hosts}
    if ctx.host not in spec.hosts or any(h not in by_name for h in spec.hosts):
        raise SpecError(
            [f"{tier.file}:{tier.line}: tier '{tier.spec.name}': this machine "
             f"('{ctx.host}') is not one of its distributed.hosts"]
        )  # fmt: skip
    rank = spec.hosts.index(ctx.host)
    members = [by_name[h] for h in spec.hosts]
    env, files = rank_environment(tier.spec.name, spec, rank, members, ctx.state_dir)
    peers = {h: ctx.peers[h] for h in spec.hosts if h != ctx.host and h in ctx.peers}
    group = Group(tuple(spec.hosts), rank, spec.backend, peers)
    return group, env, dict(files)


def model_facts(directory: Path | None) -> dict[str, Any]:
    """What the gateway checks requests against, from the model's ``config.json``: its
    vocabulary size (``logit_bias`` ids), context (``max_tokens`` cap) and whether it
    reads images (a ``vision_config`` or an image processor), and its ``tokenizer.json``
    (a prompt's tokens). Unknown (no directory yet, an unreadable config): None each, and
    the gateway applies its strictest check."""
    facts: dict[str, Any] = {"vocab_size": None, "context": None, "vision": None}
    if directory is None:
        return facts
    if (directory / "tokenizer.json").is_file():
        facts["tokenizer"] = str(directory / "tokenizer.json")
    from mlxctl.capacity.model_dir import read_model_config

    try:
        config = read_model_config(directory)
    except (MlxctlError, OSError, ValueError):
        return facts
    scopes = [config] + [
        config[k] for k in ("text_config", "llm_config") if isinstance(config.get(k), dict)
    ]

    def smallest(key: str) -> int | None:
        values = [
            v
            for c in scopes
            if isinstance(v := c.get(key), int) and not isinstance(v, bool) and v > 0
        ]
        return min(values) if values else None

    facts["vocab_size"] = smallest("vocab_size")
    facts["context"] = smallest("max_position_embeddings")
    facts["vision"] = isinstance(config.get("vision_config"), dict) or any(
        (directory / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")
    )
    return facts


def _limit_args(spec: TierSpec, runtime: Runtime) -> tuple[dict[str, ArgValue], tuple[str, ...]]:
    """The flags that make the server enforce the limits the memory estimate assumes, and
    the limits it is not told (no flag in this runtime, or left to the server's default).

    Only limits written in the file become flags, so a stack that does not write them
    launches exactly as before (the same hash).
    """
    flags: dict[str, ArgValue] = {}
    unenforced: list[str] = []
    for limit in ("context", "concurrency"):
        flag = runtime.limit_flags.get(limit)
        written = limit in spec.model_fields_set
        if flag is None:
            unenforced.append(f"{limit} ({runtime.name} has no flag for it)")
        elif flag in spec.args:
            continue  # the user's own flag wins
        elif written:
            flags[flag] = getattr(spec, limit)
        else:
            unenforced.append(f"{limit} (not written: the server's default applies)")
    return flags, tuple(unenforced)


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
    limits, unenforced = _limit_args(spec, runtime)
    args = {**catalog_serving_args(spec), **spec.args, **limits}
    argv = runtime.argv(ServerLaunch(ctx.python, model.directory, port, served, args))
    key_file = str(tier_key_path(ctx.state_dir, spec.name)) if runtime.guarded else ""
    # The tier's key file (a path, no secret): read by its guard, created at its launch.
    guard_env = {TIER_KEY_FILE_ENV: key_file} if key_file else {}
    group, group_env, files = _group(tier, ctx) if spec.distributed else (None, {}, {})
    env = tuple(sorted({**spec.env, **guard_env, **group_env}.items()))
    hashed_env = _resolved_env(env, ctx, f"{where}: tier '{spec.name}'")
    launch: dict[str, Any] = {
        "runtime": spec.runtime,
        "model": model.display,
        "port": port,
        "args": dict(args),
        "env": dict(sorted(spec.env.items())),
    }
    if group is not None:
        # Its rank, and everything its hostfile says: a change restarts the group.
        launch["distributed"] = {
            "rank": group.rank,
            "hosts": list(group.hosts),
            "backend": group.backend,
            "file": "".join(files.values()).strip(),
        }
    capacity = tier_capacity(spec, args)
    launch |= launch_facts(capacity, tier_context(spec, model.directory), key_file)
    if model.revision:
        # A hub model's pinned commit: a lock-file change shows as "revision changed: a -> b".
        launch["revision"] = model.revision[:12]
    return DesiredService(
        name=spec.name,
        role="tier",
        runtime=spec.runtime,
        port=port,
        argv=argv,
        env=env,
        files=tuple(files.items()),
        model=model,
        launch=launch,
        spec_hash=spec_hash(argv, hashed_env, files, model.identity),
        probe=ProbeSpec(kind=runtime.name, port=port, model=served, key_file=key_file),
        startup_timeout=spec.startup_timeout or runtime.startup_timeout,
        source=where,
        stack=tier.stack,
        suspended=tier.suspended,
        depends_on=tuple(spec.depends_on),
        unenforced=unenforced,
        load=tier.load,
        # ``auto`` is resolved with the machine's memory (desired.admission).
        idle_timeout=tier.idle_timeout if isinstance(tier.idle_timeout, float) else None,
        group=group,
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
    stack: StackSet, routes: Sequence[Route], ctx: ResolveContext
) -> DesiredService:
    """The gateway: launched by argv, port, bind address and keys; routed by its file.

    The routes file (tiers, aliases, fallbacks, limits) is left out of the hash: the
    gateway reloads it in place when it is replaced, so a tier added, removed or
    re-routed never restarts the gateway (and never interrupts the other tiers).
    """
    gw = stack.gateway
    config_path = ctx.state_dir / GATEWAY / "config.json"
    # Every tier of the stack, this machine's and the others': a tier on another machine
    # whose machine does not answer falls back here as it would there.
    specs = {t.spec.name: t.spec for t in (*stack.tiers, *(e.tier for e in ctx.elsewhere))}
    routed = {r.name for r in routes}
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
        if name in specs  # another stack's tier: its own stack declares its fallbacks
    }
    config = render_config(
        routes,
        remotes=remotes,
        fallbacks=fallbacks,
        retries=gw.retries,
        timeout=gw.timeout,
        hold=gw.hold,
        remote_images=gw.remote_images,
    )
    env_pairs = [*GATEWAY_ENV, (MASTER_KEY_ENV, master_key_ref(stack, ctx.state_dir))]
    # Where it reports demand (a path, no secret): the controller's admin socket.
    state = Paths(config=ctx.state_dir, state=ctx.state_dir)
    env_pairs.append((ADMIN_SOCKET_ENV, str(admin_socket_path(state))))
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
