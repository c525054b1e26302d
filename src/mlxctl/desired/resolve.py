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
from typing import Any, Literal

from mlxctl.capacity.memory import MemoryEstimate
from mlxctl.errors import SpecError
from mlxctl.runtimes.base import (
    ProbeSpec,
    gateway_argv,
    probe_for,
    served_model_name,
    server_argv,
)
from mlxctl.runtimes.litellm import GATEWAY_ENV, MASTER_KEY_ENV, Route, render_config
from mlxctl.spec import secrets
from mlxctl.spec.loader import SourcedTier, StackSet

HASH_VERSION = "v1"
GATEWAY = "gateway"
FIRST_TIER_PORT = 8001
DEFAULT_STARTUP_TIMEOUT = {"mlx-lm": 300.0, "vllm-mlx": 600.0, "litellm": 120.0}

Role = Literal["tier", "gateway"]


@dataclass(frozen=True)
class ModelRef:
    """Where a tier's model comes from and where its server reads it.

    ``identity`` is what the hash sees: the source, not the bytes, so re-reading
    the same directory never restarts a server.
    """

    source: Literal["path", "pypi-gguf", "hf"]
    identity: str
    directory: Path
    display: str
    # Set when mlxctl can produce the model itself (e.g. converting the demo GGUF).
    prepare: str | None = None
    # How the user can get the model when it is missing and mlxctl cannot produce it.
    hint: str = ""


@dataclass(frozen=True)
class DesiredService:
    """One process mlxctl should run: a tier's model server or the gateway."""

    name: str
    role: Role
    runtime: str
    port: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]
    model: ModelRef | None
    launch: Mapping[str, Any]
    spec_hash: str
    probe: ProbeSpec
    startup_timeout: float
    source: str
    # Estimated memory (see mlxctl.desired.admission); None when it cannot be estimated.
    memory: MemoryEstimate | None = None


@dataclass(frozen=True)
class DesiredState:
    """Everything the stack files ask for, ready to plan against."""

    tiers: tuple[DesiredService, ...]
    gateway: DesiredService | None
    files: tuple[Path, ...] = ()
    empty_files: tuple[Path, ...] = ()
    ports: Mapping[str, int] = field(default_factory=dict)
    # The memory budget every tier's estimate must fit into, together.
    budget_bytes: int | None = None
    # Smaller variants per tier, for the refusal message (label, estimate).
    memory_alternatives: Mapping[str, tuple[tuple[str, MemoryEstimate], ...]] = field(
        default_factory=dict
    )

    @property
    def services(self) -> tuple[DesiredService, ...]:
        return self.tiers + ((self.gateway,) if self.gateway else ())

    def get(self, name: str) -> DesiredService | None:
        return next((s for s in self.services if s.name == name), None)


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


def assign_ports(stack: StackSet, previous: Mapping[str, int]) -> dict[str, int]:
    """Ports for every tier: the declared one, else the one assigned before, else the next free.

    Deterministic and stable: a tier keeps its port across runs as long as nobody
    else declares it.
    """
    taken = {t.spec.port for t in stack.tiers if t.spec.port is not None}
    if stack.gateway.enabled:
        taken.add(stack.gateway.port)
    ports: dict[str, int] = {}
    for tier in stack.tiers:
        if tier.spec.port is not None:
            ports[tier.spec.name] = tier.spec.port
    for tier in stack.tiers:
        name = tier.spec.name
        if name in ports:
            continue
        kept = previous.get(name)
        if kept is not None and kept not in taken:
            ports[name] = kept
            taken.add(kept)
    for tier in stack.tiers:
        name = tier.spec.name
        if name in ports:
            continue
        port = FIRST_TIER_PORT
        while port in taken:
            port += 1
        ports[name] = port
        taken.add(port)
    return ports


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
    served = served_model_name(spec.runtime, spec.name)
    argv = server_argv(
        spec.runtime,
        python=ctx.python,
        model_dir=model.directory,
        port=port,
        served_name=served,
        args=spec.args,
    )
    env = tuple(sorted(spec.env.items()))
    hashed_env = _resolved_env(env, ctx, f"{where}: tier '{spec.name}'")
    launch = {
        "runtime": spec.runtime,
        "model": model.display,
        "port": port,
        "args": {k: v for k, v in spec.args.items()},
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
        probe=probe_for(spec.runtime, port, served),
        startup_timeout=spec.startup_timeout or DEFAULT_STARTUP_TIMEOUT[spec.runtime],
        source=where,
    )


def master_key_ref(stack: StackSet, state_dir: Path) -> str:
    """The gateway key reference: the user's, or the key mlxctl generated (mode 0600)."""
    return stack.gateway.master_key or f"${{file:{state_dir / GATEWAY / 'master_key'}}}"


def _gateway_service(
    stack: StackSet, tiers: Sequence[DesiredService], ctx: ResolveContext
) -> DesiredService:
    gw = stack.gateway
    config_path = ctx.state_dir / GATEWAY / "config.yaml"
    routes = [Route(t.name, t.port, t.probe.model) for t in tiers]
    config = render_config(routes)
    env = (*GATEWAY_ENV, (MASTER_KEY_ENV, master_key_ref(stack, ctx.state_dir)))
    env = tuple(sorted(env))
    where = f"{stack.files[0] if stack.files else '<stack>'}: gateway"
    # A generated key is stable by construction (created once when the gateway first
    # starts): leave it out of the hash so its creation restarts nothing.
    hashed = env if gw.master_key is not None else [(k, v) for k, v in env if k != MASTER_KEY_ENV]
    hashed_env = _resolved_env(hashed, ctx, where)
    argv = gateway_argv(python=ctx.python, config=config_path, port=gw.port)
    files = ((str(config_path), config),)
    launch = {
        "runtime": "litellm",
        "port": gw.port,
        "routes": {r.name: f"{r.port}/{r.served_model}" for r in routes},
        "masterKey": master_key_ref(stack, ctx.state_dir),
    }
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
        spec_hash=spec_hash(argv, hashed_env, dict(files), ""),
        probe=ProbeSpec(kind="litellm", port=gw.port),
        startup_timeout=DEFAULT_STARTUP_TIMEOUT["litellm"],
        source=where,
    )
