"""``mlxctl catalog ls|show``: browse the model catalog."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import click

from mlxctl.cli.common import emit_json, output_option
from mlxctl.cli.completion import complete_catalog_ids

if TYPE_CHECKING:
    from mlxctl.capacity.hardware import HardwareProfile
    from mlxctl.capacity.memory import ThroughputEstimate
    from mlxctl.catalog.entries import Catalog, CatalogModel

    CatalogLoader = Callable[[], Catalog]
    Detector = Callable[[], HardwareProfile]


def _load_catalog() -> Catalog:
    from mlxctl.catalog.entries import load_catalog

    return load_catalog()


def _detect() -> HardwareProfile:
    from mlxctl.capacity.detect import detect_hardware

    return detect_hardware()


def _variant_origin(variant: Any) -> str:
    """Where a variant without a repo comes from (a wheel, or quantized on this machine)."""
    source = variant.source
    if source is not None and source.pypi_gguf is not None:
        return f"pypi {source.pypi_gguf.package}=={source.pypi_gguf.version}"
    if source is not None and source.quantize is not None:
        q = source.quantize
        return f"quantized here from {q.from_variant} ({q.bits}-bit, group {q.group_size})"
    return "?"


def register(
    app: click.Group,
    *,
    load: CatalogLoader = _load_catalog,
    detect: Detector = _detect,
) -> None:
    """Add ``catalog ls`` and ``catalog show`` to ``app``.

    The catalog, hardware and memory modules are imported when a command runs, not
    when it is registered: every other command's start-up stays fast.
    """

    @app.group("catalog", no_args_is_help=True)
    def group() -> None:
        """The model catalog: real repos, sourced numbers."""

    @group.command("ls")
    @click.option("--family", default=None, help="Only this family (e.g. qwen3.5).")
    @click.option("--tag", default=None, help="Only models with this tag.")
    @click.option(
        "--fits",
        is_flag=True,
        default=False,
        help="Only models whose smallest variant fits this machine's default budget.",
    )
    @output_option
    def ls(family: str | None, tag: str | None, fits: bool, output: str) -> None:
        """List catalog models."""
        from mlxctl.capacity.memory import budget_bytes, gib
        from mlxctl.catalog.entries import filter_models

        catalog = load()
        check = None
        if fits:
            budget = budget_bytes(detect().model_memory_bytes, None)

            def check(model: CatalogModel) -> bool:
                return _smallest(model) <= budget

        models = filter_models(catalog, family=family, tag=tag, fits=check)
        if output == "json":
            emit_json([_summary(m) for m in models])
            return
        rows: list[tuple[str, ...]] = [
            ("ID", "FAMILY", "PARAMS", "CONTEXT", "VARIANTS", "MIN MEMORY", "TOOLS", "TAGS")
        ]
        for m in models:
            s = _summary(m)
            tools = s["tool_call_parser"] or ("yes" if s["tool_calling"] else "-")
            rows.append(
                (
                    m.id, m.family, f"{m.parameters_b:g}B", str(m.context_length.value),
                    ",".join(m.variants), gib(s["min_memory_bytes"]), tools, ",".join(m.tags),
                )
            )  # fmt: skip
        _table(rows)

    @group.command("show")
    @click.argument("model_id", shell_complete=complete_catalog_ids)
    @output_option
    def show(model_id: str, output: str) -> None:
        """Show one model: variants, capabilities, measured numbers and their sources.

        MODEL_ID is a catalog id, e.g. qwen3-8b.
        """
        from mlxctl.capacity.memory import estimate_catalog_variant

        model = load().get(model_id)
        here = _speeds_here(model, detect)
        benched = _benched_here(model, detect)
        if output == "json":
            data: dict[str, Any] = model.model_dump(mode="json")
            data["memory_estimates"] = {
                k: estimate_catalog_variant(model, k).to_dict() for k in model.variants
            }
            data["this_machine"] = {k: dataclasses.asdict(v) for k, v in here.items()}
            data["benchmarked_here"] = {k: _bench_record(v) for k, v in benched.items()}
            emit_json(data)
            return
        click.echo(_describe(model, here, benched))


def _speeds_here(model: CatalogModel, detect: Detector) -> dict[str, ThroughputEstimate]:
    """Each variant's speed on this machine: measured on its profile, else scaled by bandwidth.

    Empty when the machine's memory bandwidth is unknown (Linux, an unlisted chip):
    a figure scaled from nothing would be invented.
    """
    from mlxctl.capacity.memory import estimate_throughput

    try:
        hw = detect()
    except OSError:
        return {}
    if hw.bandwidth_gbps is None:
        return {}
    speeds = {
        key: estimate_throughput(variant, hw.profile_id, hw.bandwidth_gbps)
        for key, variant in model.variants.items()
    }
    return {key: speed for key, speed in speeds.items() if speed is not None}


def _benched_here(model: CatalogModel, detect: Detector) -> dict[str, Any]:
    """This machine's own ``mlxctl bench`` results for each variant (validated when read)."""
    from mlxctl.app.bench import measured_here, stored
    from mlxctl.cli.common import err, paths

    try:
        profile_id = detect().profile_id
    except OSError:
        return {}
    results, skipped = stored(paths(), profile_id)
    for line in skipped:
        err(f"warning: bench result skipped: {line}")
    return measured_here(model, results)


def _bench_record(result: Any) -> dict[str, Any]:
    return {
        "generation_tps": result.generation_tps(),
        "prompt_tps": result.prompt_tps(),
        "tier": result.tier,
        "measured_at": result.measured_at,
        "profile_id": result.hardware.profile_id,
    }


def _smallest(model: CatalogModel) -> int:
    from mlxctl.capacity.memory import estimate_catalog_variant

    return min(estimate_catalog_variant(model, k).total for k in model.variants)


def _summary(model: CatalogModel) -> dict[str, Any]:
    caps = model.capabilities
    return {
        "id": model.id,
        "name": model.name,
        "family": model.family,
        "parameters": model.parameters.value,
        "context_length": model.context_length.value,
        "variants": list(model.variants),
        "default_variant": model.default_variant,
        "min_memory_bytes": _smallest(model),
        "tool_calling": caps.tool_calling,
        "tool_call_parser": caps.tool_call_parser,
        "reasoning_parser": caps.reasoning_parser,
        "vision": caps.vision,
        "measured": model.measured,
        "tags": list(model.tags),
    }


def _describe(
    model: CatalogModel,
    here: Mapping[str, ThroughputEstimate],
    benched: Mapping[str, Any] | None = None,
) -> str:
    from mlxctl.capacity.memory import estimate_catalog_variant, gib

    caps = model.capabilities
    att = model.attention
    lines = [
        f"{model.id}: {model.name} ({model.family}, {model.architecture})",
        f"  upstream      {model.upstream}",
        f"  parameters    {model.parameters_b:g}B [{_origin(model.parameters)}]",
        f"  context       {model.context_length.value} tokens [{_origin(model.context_length)}]",
        f"  kv cache      {att.full_layers} full-attention layers x {att.kv_heads} KV heads x "
        f"head_dim {att.head_dim}"
        + (f", {att.sliding_layers} sliding ({att.sliding_window})" if att.sliding_layers else "")
        + f" [{_origin(att)}]",
        f"  tools         {'yes' if caps.tool_calling else 'no'}"
        + (f", vllm-mlx parser {caps.tool_call_parser}" if caps.tool_call_parser else ""),
        f"  reasoning     {caps.reasoning_parser or '-'}",
        f"  vision        {'yes' if caps.vision else 'no'}",
    ]
    if model.quality is not None:
        q = model.quality
        cats = ", ".join(f"{k} {v:g}" for k, v in q.by_category.items())
        lines.append(f"  quality       pass rate {q.overall_pass_rate:g} ({cats}) [{_origin(q)}]")
    lines.append(f"  tags          {', '.join(model.tags) or '-'}")
    lines.append("  variants:")
    for key, variant in model.variants.items():
        where = variant.repo or _variant_origin(variant)
        default = " (default)" if key == model.default_variant else ""
        lines.append(f"    {key}{default}: {where}")
        lines.append(
            f"      disk        {gib(variant.disk_bytes.value)} [{_origin(variant.disk_bytes)}]"
        )
        lines.append(f"      memory      {estimate_catalog_variant(model, key).describe()}")
        for profile, bench in variant.benchmarks.items():
            lines.append(
                f"      {profile:<11} {bench.generation_tps:g} tok/s generation, "
                f"{bench.prompt_tps:g} tok/s prompt, peak {bench.peak_memory_gib:g} GiB"
            )
        if not variant.benchmarks:
            lines.append("      no measurements")
        mine = (benched or {}).get(key)
        if mine is not None:
            gen, prompt = mine.generation_tps(), mine.prompt_tps()
            lines.append(
                f"      {mine.hardware.profile_id:<11} "
                + (f"{gen:.1f} tok/s generation" if gen is not None else "generation -")
                + (f", {prompt:.0f} tok/s prompt" if prompt is not None else "")
                + f" [mlxctl bench on this machine, tier '{mine.tier}']"
            )
        speed = here.get(key)
        if speed is not None and speed.estimated:
            lines.append(
                f"      this machine ~{speed.generation_tps:g} tok/s generation [{speed.basis}]"
            )
    if model.notes:
        lines.append(f"  notes         {model.notes}")
    sources = sorted(
        {b.source for v in model.variants.values() for b in v.benchmarks.values() if b.source}
    )
    if sources:
        lines.append(f"  measured by   {'; '.join(sources)}")
    return "\n".join(lines)


def _origin(item: Any) -> str:
    if item.provenance == "estimated":
        return f"estimated: {item.formula}"
    return f"{item.provenance}: {item.source}"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
