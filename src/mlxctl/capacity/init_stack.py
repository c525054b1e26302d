"""``mlxctl init``: choose tiers for a machine and explain every choice.

Each intent has two tier roles (``balanced``: standard + fast; ``agents``: agent +
fast; ``coding``: coder + complete). Every catalog variant with measurements is a
candidate; each role scores it as

    score = w_quality x quality + w_speed x speed + w_tools x tools + w_memory x memory

and the pair of tiers with the highest summed score whose SUMMED memory estimate fits
the budget wins. ``docs/init.md`` documents each term; :func:`generate_stack` is pure
(the catalog and the machine are passed in), :func:`render_stack_yaml` writes the
commented YAML.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from mlxctl.capacity.hardware import HardwareProfile, profile_for_memory
from mlxctl.capacity.memory import (
    GIB,
    MemoryEstimate,
    ThroughputEstimate,
    budget_bytes,
    check_budget,
    default_budget_bytes,
    estimate_catalog_variant,
    estimate_throughput,
    gib,
)
from mlxctl.catalog.entries import Catalog, CatalogModel
from mlxctl.errors import AdmissionError

Intent = Literal["balanced", "agents", "coding"]
INTENTS: tuple[str, ...] = get_args(Intent)
REFERENCE_MEMORY_GIB = (16, 24, 36, 48, 64, 96, 128, 192)
# Speeds are ranked on an M4 Pro (273 GB/s) when the machine is only a stated memory size:
# the profile with the most measurements in the benchmark data.
REFERENCE_BANDWIDTH_GBPS = 273.0
GATEWAY_PORT = 4000
MAX_TOKENS = 4096

# Quality (docs/init.md): half the measured pass rate of the benchmark's prompt suite (or,
# unmeasured, a heuristic pass rate from the parameter count), half a capacity term from
# the parameter count, because the small suite saturates (most models pass 85-98%).
HEURISTIC_BASE = 0.70
HEURISTIC_PER_DOUBLING = 0.08
HEURISTIC_RANGE = (0.30, 0.95)
OLDER_GENERATION_PENALTY = 0.05
OLDER_FAMILIES = frozenset({"qwen2.5", "qwen2.5-coder", "smollm2"})
CODER_BONUS = 0.05
CAPACITY_FULL_AT_B = 70.0  # capacity = (log2(params_b) + 1) / (log2(70) + 1), clipped to 0-1
QUANT_PENALTY = {"4bit": 0.03, "6bit": 0.015, "8bit": 0.0, "bf16": 0.0}
DEFAULT_QUANT_PENALTY = 0.03


@dataclass(frozen=True)
class Weights:
    quality: float
    speed: float
    tools: float
    memory: float


@dataclass(frozen=True)
class Role:
    """One tier ``init`` fills, and how it scores candidates."""

    name: str
    purpose: str
    weights: Weights
    context: int
    concurrency: int
    needs_tool_parser: bool = False
    coding: bool = False
    min_quality: float = 0.0
    serve_tools: bool = False


_STANDARD = Role(
    "standard", "the best all-round model that fits", Weights(0.65, 0.25, 0.05, 0.05), 32768, 1
)
_FAST = Role(
    "fast",
    "quick answers: the fastest model of decent quality",
    Weights(0.25, 0.60, 0.05, 0.10),
    16384,
    1,
    min_quality=0.45,
)
_AGENT = Role(
    "agent",
    "tool-calling agents: the best model with a vllm-mlx tool-call parser",
    Weights(0.50, 0.25, 0.20, 0.05),
    32768,
    2,
    needs_tool_parser=True,
    serve_tools=True,
)
_SUBAGENT = Role(
    "fast",
    "sub-agents and routing: fast, with tool calling",
    Weights(0.25, 0.55, 0.10, 0.10),
    16384,
    2,
    needs_tool_parser=True,
    min_quality=0.45,
    serve_tools=True,
)
_CODER = Role(
    "coder",
    "code chat and coding agents: the best coding model",
    Weights(0.65, 0.20, 0.10, 0.05),
    32768,
    1,
    coding=True,
    serve_tools=True,
)
_COMPLETE = Role(
    "complete",
    "inline completion: the fastest model that codes decently",
    Weights(0.25, 0.65, 0.0, 0.10),
    8192,
    1,
    coding=True,
    min_quality=0.45,
)
ROLES: Mapping[str, tuple[Role, Role]] = {
    "balanced": (_STANDARD, _FAST),
    "agents": (_AGENT, _SUBAGENT),
    "coding": (_CODER, _COMPLETE),
}


@dataclass(frozen=True)
class Candidate:
    """One catalog variant scored for one role."""

    role: Role
    model: CatalogModel
    quant: str
    context: int
    memory: MemoryEstimate
    quality: float
    quality_basis: str
    tps: float
    speed_basis: str
    tools: float
    speed: float

    def score(self, budget: int) -> float:
        w = self.role.weights
        mem = max(0.0, 1 - self.memory.total / budget)
        return (
            w.quality * self.quality + w.speed * self.speed + w.tools * self.tools + w.memory * mem
        )

    def breakdown(self, budget: int) -> str:
        w = self.role.weights
        mem = max(0.0, 1 - self.memory.total / budget)
        return (
            f"score {self.score(budget):.2f} = {w.quality:g} x quality {self.quality:.2f} "
            f"({self.quality_basis}) + {w.speed:g} x speed {self.speed:.2f} "
            f"({self.tps:g} tok/s, {self.speed_basis}) + {w.tools:g} x tools {self.tools:g} "
            f"+ {w.memory:g} x memory {mem:.2f}"
        )


@dataclass(frozen=True)
class TierChoice:
    role: Role
    candidate: Candidate
    runtime: str
    args: Mapping[str, str | int | bool]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Explanation:
    header: tuple[str, ...]
    tiers: Mapping[str, tuple[str, ...]]

    def lines(self) -> list[str]:
        out = list(self.header)
        for name, lines in self.tiers.items():
            out.append(f"{name}:")
            out.extend(f"  {line}" for line in lines)
        return out


class GeneratedStack(NamedTuple):
    """What :func:`generate_stack` returns: the stack mapping and why it looks so."""

    stack: dict[str, Any]
    explanations: Explanation


def capacity(parameters_b: float) -> float:
    """(log2(params_b) + 1) / (log2(70) + 1), clipped to 0-1: 0.5B -> 0, 8B -> 0.56, 70B -> 1."""
    value = (math.log2(max(parameters_b, 1e-3)) + 1) / (math.log2(CAPACITY_FULL_AT_B) + 1)
    return min(max(value, 0.0), 1.0)


def pass_rate(model: CatalogModel, *, coding: bool) -> tuple[float, str]:
    """The measured pass rate (coding category for coding roles), else the heuristic."""
    if model.quality is not None:
        cats = model.quality.by_category
        if coding and "coding" in cats:
            return cats["coding"], f"measured coding pass {cats['coding']:g}"
        return model.quality.overall_pass_rate, f"measured pass {model.quality.overall_pass_rate:g}"
    rate = HEURISTIC_BASE + HEURISTIC_PER_DOUBLING * math.log2(max(model.parameters_b, 0.05))
    if model.family in OLDER_FAMILIES:
        rate -= OLDER_GENERATION_PENALTY
    if coding and "coding" in model.tags:
        rate += CODER_BONUS
    rate = min(max(rate, HEURISTIC_RANGE[0]), HEURISTIC_RANGE[1])
    return rate, f"heuristic pass {rate:.2f}"


def quality_of(model: CatalogModel, quant: str, *, coding: bool) -> tuple[float, str]:
    """0.5 x pass rate + 0.5 x capacity - quant penalty: a documented heuristic, 0-1."""
    rate, basis = pass_rate(model, coding=coding)
    cap = capacity(model.parameters_b)
    penalty = QUANT_PENALTY.get(quant, DEFAULT_QUANT_PENALTY)
    basis += f", capacity {cap:.2f} ({model.parameters_b:g}B)"
    if penalty:
        basis += f", {quant} -{penalty:g}"
    return max(0.0, 0.5 * rate + 0.5 * cap - penalty), basis


def speed_score(tps: float) -> float:
    """ln(1 + tok/s) / ln(201), capped at 1: 200 tok/s and more scores 1."""
    return min(math.log1p(tps) / math.log(201), 1.0)


def tools_score(model: CatalogModel) -> float:
    caps = model.capabilities
    if caps.tool_call_parser:
        return 1.0
    return 0.5 if caps.tool_calling else 0.0


def candidates(
    catalog: Catalog,
    role: Role,
    *,
    context: int,
    profile_id: str | None,
    bandwidth: float,
    measured_here: Mapping[tuple[str, str], ThroughputEstimate] | None = None,
) -> list[Candidate]:
    """Every measured catalog variant that meets ``role``'s requirements; pure.

    ``measured_here`` ((model id, quant) -> speed) is this machine's own ``mlxctl bench``
    results: they take the place of the catalog's numbers and of any estimate."""
    out = []
    for model in catalog.models:
        if "demo" in model.tags:
            continue
        if role.needs_tool_parser and not model.capabilities.tool_call_parser:
            continue
        ctx = min(context, model.context_length.value)
        for quant, variant in model.variants.items():
            speed = (measured_here or {}).get((model.id, quant)) or estimate_throughput(
                variant, profile_id, bandwidth
            )
            if speed is None:
                continue  # never measured: not recommended (see docs/init.md)
            quality, qbasis = quality_of(model, quant, coding=role.coding)
            if quality < role.min_quality:
                continue
            memory = estimate_catalog_variant(
                model, quant, context=ctx, concurrency=role.concurrency
            )
            out.append(
                Candidate(
                    role=role, model=model, quant=quant, context=ctx, memory=memory,
                    quality=quality, quality_basis=qbasis, tps=speed.generation_tps,
                    speed_basis=speed.basis, tools=tools_score(model),
                    speed=speed_score(speed.generation_tps),
                )
            )  # fmt: skip
    return sorted(out, key=lambda c: (c.model.id, c.quant))


def best_pair(
    first: Sequence[Candidate], second: Sequence[Candidate], budget: int
) -> tuple[Candidate, Candidate] | None:
    """The two distinct models with the highest summed score whose SUMMED memory fits."""
    best: tuple[Candidate, Candidate] | None = None
    best_score = -1.0
    for a in first:
        if a.memory.total > budget:
            continue
        sa = a.score(budget)
        for b in second:
            if b.model.id == a.model.id or a.memory.total + b.memory.total > budget:
                continue
            total = sa + b.score(budget)
            if total > best_score + 1e-12:
                best, best_score = (a, b), total
    return best


def best_single(pool: Sequence[Candidate], budget: int) -> Candidate | None:
    fitting = [c for c in pool if c.memory.total <= budget]
    return max(fitting, key=lambda c: c.score(budget), default=None)


def _runtime(role: Role, model: CatalogModel, concurrency: int) -> tuple[str, dict[str, Any]]:
    caps = model.capabilities
    if role.serve_tools and caps.tool_call_parser:
        args: dict[str, Any] = {
            "enable-auto-tool-choice": True,
            "tool-call-parser": caps.tool_call_parser,
        }
        if caps.reasoning_parser:
            args["reasoning-parser"] = caps.reasoning_parser
        if concurrency > 1:
            # vllm-mlx crashes in Metal under concurrent requests without it (#159).
            args["continuous-batching"] = True
            args["max-num-seqs"] = concurrency
        return "vllm-mlx", args
    return "mlx-lm", {"max-tokens": MAX_TOKENS}


def generate_stack(
    hardware_or_memory: HardwareProfile | int | float,
    intent: str = "balanced",
    budget: float | str | None = None,
    *,
    catalog: Catalog,
    name: str | None = None,
    measured_here: Mapping[tuple[str, str], ThroughputEstimate] | None = None,
) -> GeneratedStack:
    """Choose the tiers for a machine (a profile, or a memory size in GiB); pure.

    Raises :class:`~mlxctl.errors.AdmissionError` when not even one tier fits.
    """
    if intent not in ROLES:
        raise ValueError(f"intent must be one of {', '.join(INTENTS)}")
    hw = (
        hardware_or_memory
        if isinstance(hardware_or_memory, HardwareProfile)
        else profile_for_memory(float(hardware_or_memory))
    )
    memory = hw.model_memory_bytes
    budget_b = budget_bytes(memory, budget)
    bandwidth = hw.bandwidth_gbps or REFERENCE_BANDWIDTH_GBPS
    profile = hw.profile_id if hw.bandwidth_gbps else None
    roles = ROLES[intent]
    # Two tiers at the roles' contexts; else two with shorter contexts; else one tier.
    chosen: tuple[Candidate, ...] | None = None
    pools: list[list[Candidate]] = []
    scale_used = 1
    for want_pair in (True, False):
        for scale in (1, 2, 4, 8):
            pools = [
                candidates(
                    catalog,
                    r,
                    context=max(4096, r.context // scale),
                    profile_id=profile,
                    bandwidth=bandwidth,
                    measured_here=measured_here,
                )
                for r in roles
            ]
            if want_pair:
                chosen = best_pair(pools[0], pools[1], budget_b)
            else:
                single = best_single(pools[0], budget_b)
                chosen = (single,) if single else None
            if chosen is not None:
                scale_used = scale
                break
        if chosen is not None:
            break
    if chosen is None:
        raise AdmissionError(
            f"no measured catalog model fits a memory budget of {gib(budget_b)}; "
            "raise --budget or use the offline demo model (model: smollm2-135m-instruct)"
        )
    tiers, choices = [], []
    for cand in chosen:
        runtime, args = _runtime(cand.role, cand.model, cand.role.concurrency)
        notes: list[str] = []
        if scale_used > 1:
            notes.append(f"context reduced to {cand.context} tokens so that the tiers fit")
        choices.append(TierChoice(cand.role, cand, runtime, args, tuple(notes)))
        tiers.append(
            {
                "name": cand.role.name,
                "runtime": runtime,
                "model": cand.model.id,
                "quant": cand.quant,
                "args": args,
                "context": cand.context,
                "concurrency": cand.role.concurrency,
            }
        )
    check = check_budget([(c.role.name, c.candidate.memory) for c in choices], budget_b)
    assert check.fits, check.message
    budget_value: float | str = (
        budget if budget is not None else math.floor(budget_b / memory * 100) / 100
    )
    stated = hw.chip == profile_for_memory(1).chip
    stack_name = name or (f"mac-{round(memory / GIB)}gb" if stated else hw.profile_id)
    stack = {
        "apiVersion": "mlxctl/v1",
        "kind": "Stack",
        "metadata": {"name": stack_name},
        "spec": {
            "gateway": {"port": GATEWAY_PORT},
            "memory": {"budget": budget_value},
            "tiers": tiers,
        },
    }
    return GeneratedStack(
        stack, _explain(hw, intent, budget_b, check.total, choices, chosen, pools)
    )


def _explain(
    hw: HardwareProfile,
    intent: str,
    budget: int,
    total: int,
    choices: Sequence[TierChoice],
    chosen: Sequence[Candidate],
    pools: Sequence[Sequence[Candidate]],
) -> Explanation:
    default = budget == default_budget_bytes(hw.model_memory_bytes)
    if hw.bandwidth_gbps:
        machine = f"{hw.chip}, {hw.profile_id}, {hw.bandwidth_gbps:g} GB/s"
    elif hw.chip == profile_for_memory(1).chip:
        machine = f"{round(hw.model_memory_bytes / GIB)} GiB of unified memory (chip unspecified)"
    else:
        machine = f"{hw.chip}, {hw.profile_id}, memory bandwidth unknown"
    speeds = (
        f"speeds for this machine's {hw.bandwidth_gbps:g} GB/s: measured, or scaled by "
        "memory bandwidth"
        if hw.bandwidth_gbps
        else f"speeds ranked on an M4 Pro ({REFERENCE_BANDWIDTH_GBPS:g} GB/s): measured there "
        "or scaled by bandwidth"
    )
    header = (
        f"mlxctl init --intent {intent}: {machine}",
        f"memory budget {gib(budget)}"
        + (" (default: all but max(4 GiB, 25%) of memory, left to macOS)" if default else ""),
        f"the tiers together need {gib(total)} of it (estimates: docs/memory.md)",
        "tiers chosen together for the highest summed score that fits (docs/init.md);",
        speeds,
    )
    tiers: dict[str, tuple[str, ...]] = {}
    taken = {c.model.id for c in chosen}
    for choice, pool in zip(choices, pools, strict=False):
        cand = choice.candidate
        source = cand.model.variants[cand.quant].repo or "a GGUF in a PyPI wheel"
        lines = [
            f"{choice.role.name}: {choice.role.purpose}",
            f"{cand.model.id} {cand.quant} ({source}): {cand.breakdown(budget)}",
            f"memory {cand.memory.describe()}",
        ]
        if choice.runtime == "vllm-mlx":
            lines.append(
                f"vllm-mlx: tool calls parsed with '{cand.model.capabilities.tool_call_parser}'"
            )
        lines.extend(choice.notes)
        runner = max(
            (c for c in pool if c.model.id not in taken and c.memory.total <= budget),
            key=lambda c: c.score(budget),
            default=None,
        )
        if runner is not None:
            beside = total - cand.memory.total  # what the other chosen tiers need
            others = ", ".join(f"'{c.role.name}'" for c in choices if c is not choice)
            misfit = (
                f"; does not fit beside {others}: {gib(runner.memory.total + beside)} together"
                if others and runner.memory.total + beside > budget
                else ""
            )
            lines.append(
                f"runner-up: {runner.model.id} {runner.quant} "
                f"(score {runner.score(budget):.2f}, {gib(runner.memory.total)}{misfit})"
            )
        tiers[choice.role.name] = tuple(lines)
    return Explanation(header, tiers)


def render_stack_yaml(generated: GeneratedStack) -> str:
    """The stack as YAML, with the explanations as comments."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    stack, why = generated
    doc = CommentedMap()
    doc["apiVersion"] = stack["apiVersion"]
    doc["kind"] = stack["kind"]
    doc["metadata"] = CommentedMap(stack["metadata"])
    spec = CommentedMap()
    gateway = CommentedMap(stack["spec"]["gateway"])
    memory = CommentedMap(stack["spec"]["memory"])
    gateway.fa.set_flow_style()
    memory.fa.set_flow_style()
    spec["gateway"] = gateway
    spec["memory"] = memory
    tiers = CommentedSeq()
    for i, tier in enumerate(stack["spec"]["tiers"]):
        item = CommentedMap(tier)
        args = CommentedMap(tier["args"])
        args.fa.set_flow_style()
        item["args"] = args
        tiers.append(item)
        lines = why.tiers.get(tier["name"], ())
        if lines:
            tiers.yaml_set_comment_before_after_key(i, before="\n".join(lines), indent=4)
    spec["tiers"] = tiers
    doc["spec"] = spec
    doc.yaml_set_start_comment("\n".join(why.header))
    yaml = YAML()
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    buffer = io.StringIO()
    yaml.dump(doc, buffer)
    return buffer.getvalue()


def reference_stacks(catalog: Catalog) -> dict[str, str]:
    """``stacks/mac-<N>gb.yaml`` for every reference memory size (balanced intent)."""
    out = {}
    for size in REFERENCE_MEMORY_GIB:
        generated = generate_stack(size, "balanced", None, catalog=catalog, name=f"mac-{size}gb")
        out[f"mac-{size}gb.yaml"] = render_stack_yaml(generated)
    return out
