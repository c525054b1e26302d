"""The stack file schema (``apiVersion: mlxctl/v1``, ``kind: Stack``): a public contract.

Every model is frozen and forbids unknown keys, so a typo is an error with a
"did you mean" instead of a silently ignored setting. ``docs/stack-format.md``
documents each field; keep the two in step.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mlxctl.errors import echo
from mlxctl.runtimes.base import ArgValue, managed_flag_for
from mlxctl.runtimes.registry import MODEL_SERVERS
from mlxctl.runtimes.registry import runtime as runtime_named
from mlxctl.spec.secrets import ANY_REF, find_refs, looks_secret

API_VERSION = "mlxctl/v1"
# The runtimes a tier may name: every model-server adapter in the registry.
RUNTIMES = MODEL_SERVERS
RESERVED_NAMES = frozenset({"gateway"})
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
Port = Annotated[int, Field(ge=1024, le=65535)]

# A model name a client may send: tier names, aliases ("gpt-4o-mini", "openai/gpt-4o").
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$"

# Flags mlxctl renders itself, per runtime (each adapter's ``managed_flags``): a user
# value would fight the controller. A tier whose runtime is unknown is checked
# against all of them.
MANAGED_BY_RUNTIME = {name: runtime_named(name).managed_flags for name in MODEL_SERVERS}
MANAGED_ARGS = frozenset().union(*MANAGED_BY_RUNTIME.values())
# A plain command-line flag name, as both servers' parsers spell theirs.
FLAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Bounds that keep every number inside what the memory arithmetic (floats) and the
# servers can take: larger is a typo or an attack, never a real setting.
MAX_CONTEXT = 16 * 1024 * 1024
MAX_CONCURRENCY = 4096
MAX_PATH = 4096
MAX_CATALOG_ID = 128
# C0 controls and DEL: never part of a name, a flag or a path in a stack file.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _arg_key(key: str, info: ValidationInfo) -> str:
    """A tier ``args`` key: a plain flag name that mlxctl does not manage for its runtime."""
    runtime = info.data.get("runtime")
    managed = (
        MANAGED_BY_RUNTIME.get(runtime, MANAGED_ARGS)
        if isinstance(runtime, str)
        else (MANAGED_ARGS)
    )
    if key.startswith("-") and FLAG_NAME.fullmatch(key.lstrip("-")):
        raise ValueError(f"write the flag without dashes: {echo(key.lstrip('-'))}")
    flag = managed_flag_for(key, managed)
    if flag == key:
        raise ValueError(f"'{key}' is set by mlxctl from the tier; remove it from args")
    if flag is not None:
        raise ValueError(
            f"{echo(key)} would set --{flag} (argparse takes a prefix or a '=' form as the "
            "flag), which mlxctl sets from the tier; remove it from args"
        )
    if not key:
        raise ValueError("an args key is a flag name; this one is empty")
    if "=" in key:
        raise ValueError(f"{echo(key)}: a flag name has no '='; write it as 'name: value'")
    if not FLAG_NAME.fullmatch(key):
        raise ValueError(
            f"{echo(key)} is not a flag name (letters, digits, '-', '_' and '.', "
            "at most 100 characters)"
        )
    return key


def _no_control(value: str) -> str:
    if CONTROL.search(value):
        raise ValueError(f"control characters are not allowed here (got {echo(value)})")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError(f"a NUL character cannot be passed to a process (got {echo(value)})")
    return value


ArgKey = Annotated[str, AfterValidator(_arg_key)]
Text = Annotated[str, AfterValidator(_no_control)]

# A duration: seconds as a number, or ``90s``, ``5m``, ``1h``, ``1h30m``.
_DURATION = re.compile(r"(?:(\d{1,4})h)?(?:(\d{1,6})m)?(?:(\d{1,7}(?:\.\d{1,3})?)s)?")
MAX_DURATION = 7 * 24 * 3600.0


def parse_duration(value: object) -> float:
    """Seconds from ``300``, ``"90s"``, ``"5m"``, ``"1h30m"`` (at most a week)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or like 90s, 5m, 1h30m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())) and value:
        hours, minutes, secs = match.groups()
        if hours is None and minutes is None and secs is None:
            raise ValueError("a duration is a number of seconds or like 90s, 5m, 1h30m")
        seconds = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
    else:
        raise ValueError("a duration is a number of seconds or like 90s, 5m, 1h30m")
    if not 0 <= seconds <= MAX_DURATION:
        raise ValueError("a duration is between 0 and a week (7d = 168h)")
    return seconds


def _idle_timeout(value: object) -> float | str:
    if value in ("never", "auto"):
        return str(value)
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
# ``idleTimeout``: a duration, ``never``, or ``auto`` (by the machine's memory: under
# 24 GB 3 min, 24-63 GB 5 min, 64 GB and up 10 min).
IdleTimeout = Annotated[float | str, BeforeValidator(_idle_timeout)]
LoadPolicy = Literal["always", "on-demand"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PathSource(_Strict):
    """A local MLX model directory (``~`` is expanded when the stack is resolved)."""

    path: Text = Field(min_length=1, max_length=MAX_PATH)


REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"


class HfSource(_Strict):
    """A Hugging Face hub repo, at a branch, tag or 40-hex commit (default ``main``)."""

    hf: str = Field(pattern=REPO_PATTERN)
    revision: str = Field(default="main", min_length=1)


class GgufSource(_Strict):
    """A GGUF file, converted to MLX once: a local path, or a file inside a hub repo
    (``gguf: org/repo/file.gguf`` with an optional ``revision``)."""

    gguf: str = Field(min_length=1)
    revision: str | None = None

    @field_validator("gguf")
    @classmethod
    def _suffix(cls, value: str) -> str:
        if not value.lower().endswith(".gguf"):
            raise ValueError("a GGUF source names a .gguf file")
        return value


def _model_kind(value: object) -> str:
    """Which form of ``model:`` the user wrote, so errors speak of that form only."""
    if isinstance(value, HfSource):
        return "hf"
    if isinstance(value, GgufSource):
        return "gguf"
    if isinstance(value, BaseModel):
        return "path"
    if isinstance(value, dict):
        return next((key for key in ("hf", "gguf") if key in value), "path")
    return "id"


ModelSource = Annotated[
    Annotated[str, Tag("id")]
    | Annotated[PathSource, Tag("path")]
    | Annotated[HfSource, Tag("hf")]
    | Annotated[GgufSource, Tag("gguf")],
    Discriminator(_model_kind),
]


DistributedBackend = Literal["ring", "jaccl"]
MAX_HOSTS = 64
# An RDMA device name as ``ibv_devices`` lists it (``rdma_en5``).
RDMA_DEVICE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# The one runtime whose server runs MLX's distributed ranks (mlx_lm.server shards the
# model over ``mx.distributed.init()``; vllm-mlx has no distributed mode).
DISTRIBUTED_RUNTIME = "mlx-lm"


class DistributedSpec(_Strict):
    """One model across machines on MLX's distributed runtime (docs/multi-host.md).

    Each member host's controller starts its own rank (rank = the host's index in
    ``hosts``); rank 0 serves HTTP on the first host, which is the tier's ``host``.
    ``ring`` runs over TCP (and is the one that runs in the tests); ``jaccl`` is
    Thunderbolt RDMA (macOS 26.2 and later, a full mesh of cables).
    """

    hosts: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        min_length=2, max_length=MAX_HOSTS
    )
    backend: DistributedBackend = "ring"
    # ring: the port rank 0 listens on for the ring, rank r on ``port + r`` (as
    # ``mlx.launch --starting-port``); jaccl: the coordinator's port on rank 0's host.
    # Unset: chosen by mlxctl from the tier's name (mlxctl.desired.group), the same on
    # every member since each reads the same files.
    port: Port | None = None
    # jaccl only: the RDMA device each rank reaches each other rank through, one row per
    # rank (``devices[i][j]``: rank i's device towards rank j; null on the diagonal), as
    # ``mlx.distributed_config --backend jaccl`` lists them in its hostfile's ``rdma``.
    devices: list[list[Annotated[str, Field(pattern=RDMA_DEVICE_PATTERN)] | None]] | None = None

    @field_validator("hosts")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        dup = sorted({h for h in value if value.count(h) > 1})
        if dup:
            raise ValueError(f"host {dup[0]!r} appears twice")
        return value

    @model_validator(mode="after")
    def _devices(self) -> DistributedSpec:
        n = len(self.hosts)
        if self.backend != "jaccl":
            if self.devices is not None:
                raise ValueError("devices is for backend jaccl (RDMA); the ring runs over TCP")
            return self
        rows = self.devices
        if rows is None:
            raise ValueError(
                "backend jaccl needs devices: each rank's RDMA device towards each other rank "
                "(mlx.distributed_config --backend jaccl lists them)"
            )
        if len(rows) != n or any(len(row) != n for row in rows):
            raise ValueError(f"devices must be {n} rows of {n} (one per rank, one per peer)")
        for i, row in enumerate(rows):
            for j, device in enumerate(row):
                if (device is None) != (i == j):
                    want = "null (a rank to itself)" if i == j else "a device name"
                    raise ValueError(f"devices[{i}][{j}] must be {want}")
        return self


class TierSpec(_Strict):
    """One model server."""

    name: str = Field(pattern=NAME_PATTERN)
    runtime: str
    model: ModelSource
    quant: Annotated[Text, Field(max_length=64)] | None = None
    port: Port | None = None
    args: dict[ArgKey, ArgValue] = Field(default_factory=dict)
    # Env names that look like secrets (HF_TOKEN...) whose literal value is not one;
    # declared before env so env's check can read it.
    not_secret: list[str] = Field(default_factory=list, alias="notSecret")
    env: dict[str, str] = Field(default_factory=dict)
    context: Annotated[int, Field(gt=0, le=MAX_CONTEXT)] | None = None
    concurrency: Annotated[int, Field(gt=0, le=MAX_CONCURRENCY)] = 1
    startup_timeout: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        default=None, alias="startupTimeout"
    )
    # When it runs (docs/stack-format.md, "On-demand tiers"): neither enters the launch.
    load: LoadPolicy | None = None
    idle_timeout: IdleTimeout | None = Field(default=None, alias="idleTimeout")
    # Controls (docs/reconciler.md, "Suspend and dependsOn"): neither enters the launch.
    suspend: bool = False
    depends_on: list[str] = Field(default_factory=list, alias="dependsOn")
    # More model names the gateway routes to this tier (listed in /v1/models).
    aliases: list[Annotated[str, Field(pattern=ALIAS_PATTERN)]] = Field(default_factory=list)
    # Tiers or remotes tried in order when this tier fails (the gateway's Router fallbacks).
    fallbacks: list[str] = Field(default_factory=list)
    # The machine that serves it (a name from ``spec.hosts``): its controller runs it,
    # every other machine's gateway routes to that machine's gateway. Neither enters
    # the launch.
    host: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    distributed: DistributedSpec | None = None

    @model_validator(mode="after")
    def _not_own_fallback(self) -> TierSpec:
        if self.name in self.fallbacks:
            raise ValueError(f"tier '{self.name}' cannot fall back to itself")
        if (
            self.distributed is not None
            and self.host is not None
            and self.host != self.distributed.hosts[0]
        ):
            raise ValueError(
                f"host '{self.host}' must be distributed.hosts[0] "
                f"('{self.distributed.hosts[0]}'): rank 0 serves the tier"
            )
        if self.name in self.aliases:
            raise ValueError(f"alias '{self.name}' is the tier's own name")
        if self.distributed is not None and self.runtime != DISTRIBUTED_RUNTIME:
            raise ValueError(
                f"distributed needs runtime {DISTRIBUTED_RUNTIME} (mlx_lm.server runs MLX's "
                f"distributed ranks; {self.runtime} has no distributed mode)"
            )
        if self.distributed is not None and self.load == "on-demand":
            raise ValueError(
                "a distributed tier runs always (load: on-demand would need every member "
                "to load and unload together)"
            )
        return self

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(f"'{value}' is reserved for mlxctl's own gateway")
        return value

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, value: str) -> str:
        if value not in RUNTIMES:
            raise ValueError(f"Input should be {' or '.join(repr(r) for r in RUNTIMES)}")
        return value

    @field_validator("model")
    @classmethod
    def _model_id(cls, value: ModelSource) -> ModelSource:
        if isinstance(value, str) and len(value) > MAX_CATALOG_ID:
            raise ValueError(f"a catalog id has at most {MAX_CATALOG_ID} characters")
        if isinstance(value, str) and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", value):
            raise ValueError(
                "a catalog id is lower-case letters, digits, '.', '_' and '-'; "
                "for a directory write {path: DIR}"
            )
        return value

    @field_validator("args")
    @classmethod
    def _args(cls, value: dict[str, ArgValue]) -> dict[str, ArgValue]:
        for key, arg in value.items():
            if isinstance(arg, str):
                _no_nul(arg)
            if isinstance(arg, str) and find_refs(arg):
                raise ValueError(
                    f"args.{key}: secrets go in env (command lines are visible to every user)"
                )
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        not_secret = info.data.get("not_secret") or []
        for key, raw in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
                raise ValueError(f"{echo(key)} is not a valid environment variable name")
            if looks_secret(key) and key not in not_secret and not find_refs(raw):
                # Stack files live in git. The value is never echoed back.
                raise PydanticCustomError(
                    "secret_literal",
                    f"env.{key} looks like a secret and is written literally; write "
                    f"${{env:{key}}} or ${{file:PATH}}, or list it in notSecret: [{key}] "
                    "if the value is not secret",
                )
            _no_nul(raw)
            if "${" in raw and not find_refs(raw):
                raise ValueError(
                    f"env.{key}: references are written ${{env:NAME}} or ${{file:PATH}}"
                )
        return value


class RemoteSpec(_Strict):
    """A remote model a tier may fall back to (e.g. an OpenRouter model), never routed directly."""

    name: str = Field(pattern=NAME_PATTERN)
    # A LiteLLM model string: ``openrouter/meta-llama/llama-3.1-8b-instruct``.
    model: str = Field(min_length=1)
    api_base: str | None = Field(default=None, alias="apiBase")
    api_key: str | None = Field(default=None, alias="apiKey")

    @field_validator("api_key")
    @classmethod
    def _key_is_reference(cls, value: str | None) -> str | None:
        if value is not None and not ANY_REF.fullmatch(value):
            raise ValueError("the API key must be a reference like ${env:OPENROUTER_API_KEY}")
        return value


class GatewaySpec(_Strict):
    """The gateway in front of every tier."""

    enabled: bool = True
    port: Port = 4000
    # 127.0.0.1 unless the stack asks otherwise; any other address needs masterKey set.
    host: str = "127.0.0.1"
    master_key: str | None = Field(default=None, alias="masterKey")
    # Attempts after a failed one, per request (a tier restarting refuses connections).
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    # Seconds the gateway waits for a tier's answer to begin, and between two parts of a
    # streamed one: a cold model is slow to its first token, a long answer streams for
    # minutes.
    timeout: Annotated[float, Field(gt=0, le=86400)] = 600.0
    # Seconds a request waits for a tier that is starting or restarting (it refuses
    # connections) when the tier has no fallback.
    hold: Annotated[float, Field(ge=0, le=86400)] = 120.0
    # Image parts may name http(s) URLs, which the tiers fetch (from this machine, so
    # loopback services included): off, only inline data: URLs reach a tier.
    remote_images: bool = Field(default=False, alias="remoteImages")
    remotes: list[RemoteSpec] = Field(default_factory=list)

    @field_validator("host")
    @classmethod
    def _host_is_address(cls, value: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("an IP address like 127.0.0.1 or 0.0.0.0") from None
        return value

    @model_validator(mode="after")
    def _exposed_needs_key(self) -> GatewaySpec:
        import ipaddress

        if not ipaddress.ip_address(self.host).is_loopback and self.master_key is None:
            raise ValueError(
                f"host {self.host} exposes the gateway beyond this machine: set masterKey "
                "(a reference like ${env:MLXCTL_GATEWAY_KEY}) so the key is yours to share"
            )
        names = [r.name for r in self.remotes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"remote name {dup[0]!r} appears twice")
        return self

    @field_validator("master_key")
    @classmethod
    def _key_is_reference(cls, value: str | None) -> str | None:
        if value is not None and (not ANY_REF.fullmatch(value) or CONTROL.search(value)):
            raise ValueError(
                "the master key must be a reference like ${env:MLXCTL_GATEWAY_KEY} or ${file:PATH}"
            )
        return value


class MemorySpec(_Strict):
    """The memory budget: a share of unified memory (0-1] or an absolute size like ``18GB``
    (unset: the default share); and ``minResidency``, how long a loaded on-demand tier
    stays before another tier's requests may evict it while it is busy (thrash guard)."""

    budget: float | str | None = None
    min_residency: Duration | None = Field(default=None, alias="minResidency")

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, float | int) and not 0 < value <= 1:
            raise ValueError("a share of memory is a number in (0, 1]; or write a size like 18GB")
        if isinstance(value, str) and not re.fullmatch(
            r"\d{1,9}(\.\d{1,6})?\s*(GB|GiB|MB|MiB)", value
        ):
            raise ValueError("a size is written like 18GB, 18GiB or 512MB")
        return value


class HostSpec(_Strict):
    """A machine of this stack (docs/multi-host.md): the name its controller knows itself
    by (``--host``, ``MLXCTL_HOST`` or its short hostname) and the address the other
    machines reach its gateway at."""

    name: str = Field(pattern=NAME_PATTERN)
    # An IP address or a DNS name (``studio.local``).
    address: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]{0,252}$")
    # The port its gateway listens on (unset: ``spec.gateway.port``).
    gateway_port: Port | None = Field(default=None, alias="gatewayPort")
    # This machine's own memory budget (unset: ``spec.memory``).
    memory: MemorySpec | None = None


class TierDefaults(_Strict):
    """Defaults for every tier of this stack file (a tier's own setting wins)."""

    load: LoadPolicy | None = None
    idle_timeout: IdleTimeout | None = Field(default=None, alias="idleTimeout")


class StackSpec(_Strict):
    # The machines of this stack (unset: one machine, this one).
    hosts: list[HostSpec] = Field(default_factory=list, max_length=MAX_HOSTS)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)
    defaults: TierDefaults = Field(default_factory=TierDefaults)
    memory: MemorySpec | None = None
    tiers: list[TierSpec] = Field(default_factory=list)
    # Every tier of this stack is left alone (no start, stop or heal) while true.
    suspend: bool = False

    @model_validator(mode="after")
    def _unique(self) -> StackSpec:
        names = [t.name for t in self.tiers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tier name {dup[0]!r} appears twice")
        hosts = [h.name for h in self.hosts]
        dup = sorted({n for n in hosts if hosts.count(n) > 1})
        if dup:
            raise ValueError(f"host name {dup[0]!r} appears twice")
        return self


class Metadata(_Strict):
    name: str = Field(pattern=NAME_PATTERN)


class StackDocument(_Strict):
    """One stack file."""

    api_version: Literal["mlxctl/v1"] = Field(alias="apiVersion")
    kind: Literal["Stack"]
    metadata: Metadata
    spec: StackSpec
