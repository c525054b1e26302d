"""The memory model: how much each tier needs, and whether all of them fit together.

    total    = weights + kv_cache + overhead
    kv_cache = 2 (K and V) x dtype bytes x kv_heads x head_dim x concurrency
               x (full_layers x context + sliding_layers x min(context, window))
    overhead = 1 GiB + 20% of weights          (runtime, Metal buffers, prefill activations)

For a catalog variant with measured peak memory, the overhead is raised to what the
measurement implies (peak - weights - KV cache of the benchmark's context), so a
model that needs more than the formula says is never under-counted.
``docs/memory.md`` gives the formula's measured error against the benchmark data.

The budget is a share of unified memory; by default everything but
``max(4 GiB, 25%)``, which is left to macOS and other apps. The SUM of all tiers must
fit: :func:`check_budget` is the admission check, and explains what to drop or shrink.

Everything here is pure; reading a model directory is :mod:`mlxctl.capacity.model_dir`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlxctl.errors import AdmissionError, SpecError

if TYPE_CHECKING:
    from mlxctl.catalog.entries import CatalogModel, Variant

GIB = 1024**3
OVERHEAD_FIXED_BYTES = 1 * GIB
OVERHEAD_WEIGHT_SHARE = 0.20
KV_DTYPE_BYTES = 2  # fp16/bf16 KV cache, mlx-lm's and vllm-mlx's default
DEFAULT_CONTEXT = 32768  # tokens a tier's estimate assumes when the stack sets none
BENCHMARK_CONTEXT = 2048  # assumed prompt+output tokens of the benchmark runs (not recorded)
OS_RESERVE_MIN_BYTES = 4 * GIB
OS_RESERVE_SHARE = 0.25
_UNITS = {"GB": 10**9, "GiB": GIB, "MB": 10**6, "MiB": 1024**2}


@dataclass(frozen=True)
class KvLayout:
    """The layers that keep a KV cache (see :class:`mlxctl.catalog.entries.Attention`)."""

    full_layers: int
    kv_heads: int
    head_dim: int
    sliding_layers: int = 0
    sliding_window: int | None = None


@dataclass(frozen=True)
class MemoryEstimate:
    """One tier's estimated memory, in bytes; ``total`` is the sum of the three parts."""

    weights: int
    kv_cache: int
    overhead: int
    total: int
    basis: str = ""

    def __post_init__(self) -> None:
        if self.total != self.weights + self.kv_cache + self.overhead:
            raise ValueError("total must equal weights + kv_cache + overhead")

    @classmethod
    def of(cls, weights: int, kv_cache: int, overhead: int, basis: str = "") -> MemoryEstimate:
        return cls(weights, kv_cache, overhead, weights + kv_cache + overhead, basis)

    def describe(self) -> str:
        """``9.9 GiB (weights 4.3 + KV cache 4.5 + overhead 1.1)``."""
        text = (
            f"{gib(self.total)} (weights {gib(self.weights, unit=False)} + KV cache "
            f"{gib(self.kv_cache, unit=False)} + overhead {gib(self.overhead, unit=False)})"
        )
        return f"{text}; {self.basis}" if self.basis else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "kv_cache": self.kv_cache,
            "overhead": self.overhead,
            "total": self.total,
            "basis": self.basis,
        }


@dataclass(frozen=True)
class BudgetCheck:
    """The outcome of checking all tiers together against the budget."""

    fits: bool
    total: int
    budget: int
    tiers: tuple[tuple[str, MemoryEstimate], ...]
    message: str
    drop: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = field(default=())

    def require(self) -> None:
        """Raise :class:`~mlxctl.errors.AdmissionError` when the tiers do not fit."""
        if not self.fits:
            raise AdmissionError(self.message)


def gib(n: int, *, unit: bool = True) -> str:
    text = f"{n / GIB:.1f}"
    return f"{text} GiB" if unit else text


def runtime_overhead(weights: int) -> int:
    """The formula's overhead: 1 GiB plus 20% of the weights."""
    return OVERHEAD_FIXED_BYTES + int(OVERHEAD_WEIGHT_SHARE * weights)


def rank_share(total: MemoryEstimate, ranks: int) -> MemoryEstimate:
    """What one rank of a model sharded over ``ranks`` machines holds (mlx-lm's tensor
    parallelism splits the attention and MLP weights, and the KV heads, evenly; its
    pipeline mode splits the layers): a ``1/ranks`` share of the weights and of the KV
    cache, plus a whole process's overhead for that share (1 GiB plus 20% of it, which
    also covers what every rank keeps whole: the embedding and the norms)."""
    weights = -(-total.weights // ranks)
    kv = -(-total.kv_cache // ranks)
    basis = f"rank share 1/{ranks} of {gib(total.total)}"
    basis = f"{total.basis}; {basis}" if total.basis else basis
    return MemoryEstimate.of(weights, kv, runtime_overhead(weights), basis)


def kv_cache_bytes(
    layout: KvLayout, context: int, concurrency: int = 1, dtype_bytes: int = KV_DTYPE_BYTES
) -> int:
    """Bytes of KV cache for ``concurrency`` sequences of ``context`` tokens each."""
    if context <= 0 or concurrency <= 0:
        raise ValueError("context and concurrency must be positive")
    window = min(context, layout.sliding_window or context)
    tokens = layout.full_layers * context + layout.sliding_layers * window
    return 2 * dtype_bytes * layout.kv_heads * layout.head_dim * tokens * concurrency


def estimate(
    weights: int,
    layout: KvLayout | None,
    *,
    context: int,
    concurrency: int = 1,
    min_overhead: int = 0,
    basis: str = "",
) -> MemoryEstimate:
    """weights + KV cache + overhead (at least ``min_overhead``); pure.

    Without a ``layout`` (an unknown architecture) the KV cache is estimated as one
    Llama-style layer set: 0.5 MiB per token, a deliberately high guess.
    """
    if layout is None:
        kv = int(0.5 * 1024**2) * context * concurrency
    else:
        kv = kv_cache_bytes(layout, context, concurrency)
    overhead = max(runtime_overhead(weights), min_overhead)
    return MemoryEstimate.of(weights, kv, overhead, basis)


def layout_of(model: CatalogModel) -> KvLayout:
    att = model.attention
    return KvLayout(
        att.full_layers, att.kv_heads, att.head_dim, att.sliding_layers, att.sliding_window
    )


def measured_overhead(model: CatalogModel, variant: Variant) -> int | None:
    """The overhead the variant's measured peak memory implies (largest over profiles)."""
    peaks = [b.peak_memory_gib for b in variant.benchmarks.values()]
    if not peaks:
        return None
    kv = kv_cache_bytes(layout_of(model), BENCHMARK_CONTEXT)
    return max(0, int(max(peaks) * GIB) - variant.disk_bytes.value - kv)


def estimate_catalog_variant(
    model: CatalogModel,
    quant: str | None = None,
    *,
    context: int | None = None,
    concurrency: int = 1,
) -> MemoryEstimate:
    """A catalog variant's estimate; context defaults to min(model's, 32768)."""
    key = quant or model.default_variant
    variant = model.variants[key]
    ctx = context or min(model.context_length.value, DEFAULT_CONTEXT)
    measured = measured_overhead(model, variant)
    basis = f"{model.id} {key}, {ctx} tokens x {concurrency}"
    if measured is not None and measured > runtime_overhead(variant.disk_bytes.value):
        basis += ", overhead from measured peak memory"
    return estimate(
        variant.disk_bytes.value,
        layout_of(model),
        context=ctx,
        concurrency=concurrency,
        min_overhead=measured or 0,
        basis=basis,
    )


def smaller_variants(
    model: CatalogModel, quant: str | None, *, context: int | None = None, concurrency: int = 1
) -> tuple[tuple[str, MemoryEstimate], ...]:
    """Variants of ``model`` that need less memory than ``quant``, smallest first."""
    current = estimate_catalog_variant(model, quant, context=context, concurrency=concurrency)
    options = [
        (key, estimate_catalog_variant(model, key, context=context, concurrency=concurrency))
        for key in model.variants
    ]
    return tuple(
        sorted(((k, e) for k, e in options if e.total < current.total), key=lambda o: o[1].total)
    )


# --- models on disk -----------------------------------------------------------------


# A model's config.json is a few kilobytes; its sizes (layers, heads, positions) are
# far below 2**40. Anything larger would overflow the float arithmetic of the estimate.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_CONFIG_INT = 2**40


@dataclass(frozen=True)
class ModelDir:
    """What :func:`estimate_from_config` needs from a model directory."""

    config: Mapping[str, Any]
    weights_bytes: int


def layout_from_config(config: Mapping[str, Any]) -> KvLayout | None:
    """The KV layout described by a Hugging Face / MLX ``config.json``; pure.

    Handles nested ``text_config`` (vision-language models), ``layer_types``
    (Qwen3.5's linear/full attention, Gemma 3's sliding/full), Gemma 3's
    ``sliding_window_pattern`` and Nemotron-H's ``hybrid_override_pattern``.
    """
    text = config.get("text_config")
    cfg: Mapping[str, Any] = {**config, **text} if isinstance(text, Mapping) else config
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(cfg, "num_attention_heads", "n_head")
    if layers is None or heads is None:
        return None
    kv_heads = _int(cfg, "num_key_value_heads") or heads
    hidden = _int(cfg, "hidden_size", "n_embd")
    head_dim = _int(cfg, "head_dim") or (hidden // heads if hidden else None)
    if head_dim is None:
        return None
    window = _int(cfg, "sliding_window")
    full, sliding = layers, 0
    types = cfg.get("layer_types")
    pattern = cfg.get("hybrid_override_pattern")
    if isinstance(types, list) and len(types) == layers:
        full = sum(1 for t in types if t in ("full_attention", "attention"))
        sliding = sum(1 for t in types if t == "sliding_attention")
    elif isinstance(pattern, str) and pattern:
        full = pattern.count("*")
    elif _int(cfg, "full_attention_interval"):
        full = layers // int(cfg["full_attention_interval"])
    elif _int(cfg, "sliding_window_pattern") and window:
        full = layers // int(cfg["sliding_window_pattern"])
        sliding = layers - full
    if sliding and not window:
        full, sliding = full + sliding, 0
    return KvLayout(full, kv_heads, head_dim, sliding, window if sliding else None)


def estimate_from_config(
    model: ModelDir, *, context: int | None = None, concurrency: int = 1, basis: str = ""
) -> MemoryEstimate:
    """The estimate for a model directory already read
    (:func:`mlxctl.capacity.model_dir.read_model_dir`); pure."""
    layout = layout_from_config(model.config)
    text = model.config.get("text_config")
    cfg = {**model.config, **text} if isinstance(text, Mapping) else model.config
    max_ctx = _int(cfg, "max_position_embeddings")
    ctx = context or min(max_ctx or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    note = f"{ctx} tokens x {concurrency}" + ("" if layout else ", unknown attention layout")
    return estimate(
        model.weights_bytes,
        layout,
        context=ctx,
        concurrency=concurrency,
        basis=f"{basis}, {note}" if basis else note,
    )


# --- the budget ---------------------------------------------------------------------


def default_budget_bytes(memory_bytes: int) -> int:
    """Everything but ``max(4 GiB, 25%)`` of unified memory (12 GiB of 16, 18 of 24)."""
    reserve = max(OS_RESERVE_MIN_BYTES, int(memory_bytes * OS_RESERVE_SHARE))
    return max(0, memory_bytes - reserve)


def parse_size(text: str) -> int:
    """``18GB`` (10^9), ``18GiB`` (2^30), ``512MB``, ``512MiB`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(GB|GiB|MB|MiB)\s*", text)
    if match is None:
        raise SpecError([f"memory size {text!r}: write it like 18GB, 18GiB or 512MB"])
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def budget_bytes(memory_bytes: int, budget: float | str | None) -> int:
    """The budget in bytes: a share in (0, 1] of memory, an absolute size, or the default."""
    if budget is None:
        return default_budget_bytes(memory_bytes)
    if isinstance(budget, str):
        try:
            share = float(budget)
        except ValueError:
            return parse_size(budget)
        budget = share
    if not 0 < budget <= 1:
        raise SpecError([f"memory budget {budget}: a share of memory is a number in (0, 1]"])
    return int(memory_bytes * budget)


def check_budget(
    tiers: Sequence[tuple[str, MemoryEstimate]],
    budget_bytes: int,
    *,
    alternatives: Mapping[str, Sequence[tuple[str, MemoryEstimate]]] | None = None,
    on_demand: Sequence[tuple[str, MemoryEstimate]] = (),
) -> BudgetCheck:
    """Check the ``always`` tiers (``tiers``) plus the largest ``on_demand`` tier against
    the budget; pure.

    On-demand tiers take turns (the planner evicts idle ones to load another), so the
    stack is admissible when the tiers that always run and any one on-demand tier fit
    together: the largest is the one that must. When over, the message names each tier
    counted with its estimate, the sum and the budget, then what would make it fit:
    the fewest tiers to drop (largest first), making an always tier on-demand, smaller
    variants from ``alternatives`` (tier -> [(label, estimate)], e.g. a smaller quant),
    and the KV cache that a shorter context would shrink.
    """
    always = tuple(tiers)
    largest = max(on_demand, key=lambda r: r[1].total) if on_demand else None
    rows = always + ((largest,) if largest is not None else ())
    total = sum(e.total for _, e in rows)
    if total <= budget_bytes:
        if on_demand and largest is not None:
            msg = (
                f"{len(always)} always tier(s) and the largest of {len(on_demand)} on-demand "
                f"tier(s) ('{largest[0]}') need {gib(total)} of the {gib(budget_bytes)} memory "
                "budget"
            )
        else:
            msg = f"{len(rows)} tier(s) need {gib(total)} of the {gib(budget_bytes)} memory budget"
        return BudgetCheck(True, total, budget_bytes, rows, msg)
    over = total - budget_bytes
    drop = _fewest_to_drop(rows, over)
    suggestions: list[str] = []
    if drop:
        freed = sum(e.total for n, e in rows if n in drop)
        names = ", ".join(f"'{n}'" for n in drop)
        suggestions.append(f"drop {names} (frees {gib(freed)})")
    if len(always) > 1 or (always and largest is not None):
        # An always tier made on-demand leaves the sum (it counts only if it is the
        # largest on-demand one).
        biggest = max(always, key=lambda r: r[1].total)
        suggestions.append(f"make '{biggest[0]}' load: on-demand")
    for name, options in sorted((alternatives or {}).items()):
        current = next((e for n, e in rows if n == name), None)
        if current is None:
            continue
        for label, alt in options:
            saved = current.total - alt.total
            if saved > 0:
                fits = " -- enough on its own" if saved >= over else ""
                suggestions.append(f"use {label} for '{name}' (saves {gib(saved)}{fits})")
    kv = sum(e.kv_cache for _, e in rows)
    if kv:
        suggestions.append(
            f"shorten 'context' or lower 'concurrency' (KV caches take {gib(kv)} in all)"
        )
    suggestions.append("raise spec.memory.budget if the machine can really spare it")
    width = max(len(n) for n, _ in rows) if rows else 5
    if largest is not None:
        head = (
            f"the always tiers and the largest on-demand tier need {gib(total)} together, "
            f"over the memory budget of {gib(budget_bytes)} by {gib(over)}; nothing was started"
        )
    else:
        head = (
            f"the tiers need {gib(total)} together, over the memory budget of "
            f"{gib(budget_bytes)} by {gib(over)}; nothing was started"
        )
    lines = [head]
    lines += [
        f"  {n:<{width}}  {e.describe()}"
        + ("  (on-demand, the largest)" if largest is not None and n == largest[0] else "")
        for n, e in rows
    ]
    lines.append(f"  {'sum':<{width}}  {gib(total)} > budget {gib(budget_bytes)}")
    lines.append("to fit: " + "; or ".join(suggestions))
    return BudgetCheck(False, total, budget_bytes, rows, "\n".join(lines), drop, tuple(suggestions))


# ``idleTimeout: auto``, by the machine's memory (the MLX Inference Server's classes):
# a small machine frees memory sooner.
AUTO_IDLE_CLASSES: tuple[tuple[float, float], ...] = ((24.0, 180.0), (64.0, 300.0))
AUTO_IDLE_LARGEST = 600.0


def auto_idle_timeout(memory_bytes: int) -> float:
    """Seconds idle before an on-demand tier stops, for ``idleTimeout: auto``: under
    24 GB 3 min, 24-63 GB 5 min, 64 GB and up 10 min."""
    gb = memory_bytes / 1e9
    for below, seconds in AUTO_IDLE_CLASSES:
        if gb < below:
            return seconds
    return AUTO_IDLE_LARGEST


def _fewest_to_drop(rows: Sequence[tuple[str, MemoryEstimate]], over: int) -> tuple[str, ...]:
    """The fewest tiers whose removal frees ``over`` bytes: take the largest first."""
    dropped: list[str] = []
    freed = 0
    for name, est in sorted(rows, key=lambda r: r[1].total, reverse=True):
        if freed >= over:
            break
        dropped.append(name)
        freed += est.total
    return tuple(dropped) if freed >= over and len(dropped) < len(rows) else ()


# --- throughput ---------------------------------------------------------------------


@dataclass(frozen=True)
class ThroughputEstimate:
    """Generation speed on a machine: measured there, or scaled from another by bandwidth."""

    generation_tps: float
    prompt_tps: float | None
    estimated: bool
    basis: str


def estimate_throughput(
    variant: Variant, profile_id: str | None, bandwidth_gbps: float | None
) -> ThroughputEstimate | None:
    """Tok/s of ``variant`` on a machine; None without any measurement to start from.

    A measurement on the same profile is returned as is. Otherwise the measured
    generation speed of the profile with the closest bandwidth is scaled by the
    bandwidth ratio (decoding is bound by memory bandwidth); the result is flagged as an
    estimate, and prompt speed (compute-bound) is not extrapolated.
    """
    from mlxctl.capacity.hardware import bandwidth_for_profile

    if not variant.benchmarks:
        return None
    if profile_id in variant.benchmarks:
        b = variant.benchmarks[profile_id]
        return ThroughputEstimate(
            b.generation_tps, b.prompt_tps, False, f"measured on {profile_id}"
        )
    refs = []
    for ref_id, bench in sorted(variant.benchmarks.items()):
        ref_bw = bandwidth_for_profile(ref_id)
        if ref_bw is not None:
            refs.append((ref_id, bench, ref_bw.gbps))
    if not refs or bandwidth_gbps is None:
        ref_id, bench = sorted(variant.benchmarks.items())[0]
        return ThroughputEstimate(
            bench.generation_tps,
            None,
            True,
            f"measured on {ref_id}; this machine's bandwidth unknown",
        )
    ref_id, bench, ref_gbps = min(refs, key=lambda r: abs(math.log(bandwidth_gbps / r[2])))
    ratio = bandwidth_gbps / ref_gbps
    if math.isclose(ratio, 1.0):
        basis = f"measured on {ref_id}, same memory bandwidth"
        return ThroughputEstimate(bench.generation_tps, bench.prompt_tps, False, basis)
    return ThroughputEstimate(
        round(bench.generation_tps * ratio, 1),
        None,
        True,
        f"estimate: {bench.generation_tps} tok/s on {ref_id} "
        f"x {bandwidth_gbps:g}/{ref_gbps:g} GB/s",
    )


def _int(cfg: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
