"""``mlxctl bench TIER``: streamed chat completions at several concurrencies, through the
gateway and direct to the tier, measured against the memory-bandwidth ceiling.

The statistics are :mod:`mlxctl.capacity.bench_stats` (pure), the ceiling
:mod:`mlxctl.capacity.roofline` (pure); here are the requests (httpx, one thread per
concurrent stream, timed with the clock handed in) and the report, which is saved per
hardware profile and model (:mod:`mlxctl.machine.bench_results`).

Direct requests carry the tier's own key (the tier guard's file, recorded with its
launch), the one the gateway sends: only the user who owns the state directory can.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxctl.app.gateway_client import client_settings
from mlxctl.capacity.bench_stats import LevelSummary, RequestSample, gateway_share, summarize
from mlxctl.capacity.roofline import Bandwidth, Ceiling, bandwidth_of, ceiling, is_moe, share
from mlxctl.errors import MlxctlError, NotFoundError
from mlxctl.machine.interfaces import Clock
from mlxctl.paths import Paths
from mlxctl.spec.stack_set import StackSet

REPORT_VERSION = 1
# Filler for prompts: common English words are about one token each for BPE tokenizers.
_FILLER = (
    "the quick brown fox jumps over a lazy dog while people walk along the river and talk "
    "about weather music books food travel work family friends city park morning"
)
_WORDS = tuple(_FILLER.split())
# (path, concurrency, done, total) after each request.
Progress = Callable[[str, int, int, int], None]


@dataclass(frozen=True)
class Settings:
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    requests: int = 8  # per concurrency level (at least the level)
    prompt_tokens: int = 256
    max_tokens: int = 128
    paths: tuple[str, ...] = ("gateway", "direct")
    timeout: float = 600.0


@dataclass(frozen=True)
class Endpoint:
    path: str  # "gateway" or "direct"
    base_url: str
    key: str
    model: str


@dataclass(frozen=True)
class Target:
    tier: str
    gateway: Endpoint | None
    model_identity: str
    model_display: str
    model_dir: Path | None


def target(paths: Paths, stack: StackSet, tier: str) -> Target:
    """What to benchmark for ``tier``: its gateway endpoint and its model on disk."""
    from mlxctl.app.models import tier_models

    names = [t.spec.name for t in stack.tiers]
    if tier not in names:
        known = ", ".join(names) or "none"
        raise NotFoundError(f"no tier '{tier}' in the stack files (tiers: {known})")
    gateway = None
    if stack.gateway.enabled:
        base, key = client_settings(paths, stack)
        gateway = Endpoint("gateway", base.removesuffix("/v1"), key, tier)
    ref = next((m.model for m in tier_models(stack, paths) if m.tier == tier), None)
    return Target(
        tier=tier,
        gateway=gateway,
        model_identity=ref.identity if ref else f"tier:{tier}",
        model_display=ref.display if ref else tier,
        model_dir=ref.directory if ref else None,
    )


def direct_endpoint(paths: Paths, tier: str) -> Endpoint | None:
    """The running tier itself (its port, key and served model name), from the inventory;
    None when it is not running."""
    from mlxctl.machine.inventory import Inventory
    from mlxctl.runtimes.registry import runtime
    from mlxctl.runtimes.tier_guard import read_key

    record = Inventory(paths.inventory).load().get(tier)
    if record is None or record.role != "tier" or record.pid <= 0:
        return None
    key_file = str(record.launch.get("keyFile") or "")
    try:
        key = read_key(key_file) if key_file else ""
    except OSError:
        key = ""
    kind = str(record.launch.get("runtime", "mlx-lm"))
    served = runtime(kind).served_model_name(tier)
    return Endpoint("direct", f"http://127.0.0.1:{record.port}", key, served)


def model_ceiling(
    model_dir: Path | None, context: int, bandwidth: Bandwidth
) -> tuple[Ceiling | None, str]:
    """The ceiling for the model in ``model_dir`` at ``context`` tokens, or why there is none."""
    from mlxctl.capacity.memory import layout_from_config
    from mlxctl.capacity.model_dir import read_model_dir

    if model_dir is None or not model_dir.is_dir():
        return None, "the model's directory is not on this machine"
    try:
        found = read_model_dir(model_dir)
    except MlxctlError as exc:
        return None, str(exc)
    if found.weights_bytes <= 0:
        return None, f"no weight files in {model_dir}"
    config = dict(found.config)
    layout = layout_from_config(config)
    return ceiling(found.weights_bytes, layout, context, bandwidth, moe=is_moe(config)), ""


def prompt_text(tokens: int, index: int) -> str:
    """About ``tokens`` tokens, different from the first word on for each ``index`` (so
    no prompt cache serves one request from another's prefill)."""
    words = [f"Request {index}:"]
    words += [_WORDS[(index + i) % len(_WORDS)] for i in range(max(tokens - 3, 1))]
    return " ".join(words)


def one_request(
    client: Any, ep: Endpoint, prompt: str, max_tokens: int, clock: Clock
) -> RequestSample:
    """One streamed chat completion, timed chunk by chunk."""
    import httpx

    body = {
        "model": ep.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {ep.key}"} if ep.key else {}
    start = clock.monotonic()
    first: float | None = None
    last = start
    gaps: list[float] = []
    chunks = 0
    usage: dict[str, Any] = {}
    try:
        with client.stream(
            "POST", f"{ep.base_url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                response.read()
                text = " ".join(response.text.split())[:160]
                return RequestSample(False, error=f"HTTP {response.status_code}: {text}")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    return RequestSample(False, error=str(chunk["error"])[:160])
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if (
                        delta.get("content")
                        or delta.get("reasoning_content")
                        or delta.get("reasoning")
                    ):
                        now = clock.monotonic()
                        if first is None:
                            first = now
                        else:
                            gaps.append(now - last)
                        last = now
                        chunks += 1
    except (httpx.HTTPError, ValueError) as exc:
        return RequestSample(False, error=f"{type(exc).__name__}: {exc}"[:160])
    end = clock.monotonic()
    output = _count(usage.get("completion_tokens"), chunks)
    return RequestSample(
        ok=True,
        e2e=end - start,
        ttft=None if first is None else first - start,
        prompt_tokens=_count(usage.get("prompt_tokens"), 0),
        output_tokens=output,
        itl=tuple(gaps),
    )


def _count(value: Any, default: int) -> int:
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else (default)
    )


def run_level(
    ep: Endpoint,
    concurrency: int,
    settings: Settings,
    clock: Clock,
    progress: Progress | None = None,
    offset: int = 0,
) -> LevelSummary:
    """``settings.requests`` requests, ``concurrency`` at a time; the level's summary."""
    import httpx

    total = max(settings.requests, concurrency)
    numbers = itertools.count()
    lock = threading.Lock()
    samples: list[RequestSample] = []

    def worker() -> None:
        timeout = httpx.Timeout(settings.timeout, connect=10.0)
        with httpx.Client(timeout=timeout) as client:
            while True:
                with lock:
                    index = next(numbers)
                if index >= total:
                    return
                prompt = prompt_text(settings.prompt_tokens, offset + index)
                sample = one_request(client, ep, prompt, settings.max_tokens, clock)
                with lock:
                    samples.append(sample)
                    done = len(samples)
                if progress is not None:
                    progress(ep.path, concurrency, done, total)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    start = clock.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)  # short joins: Ctrl-C reaches the main thread
    return summarize(ep.path, concurrency, samples, clock.monotonic() - start)


def warm_up(ep: Endpoint, clock: Clock) -> RequestSample:
    """One short request (loads an on-demand tier; compiles what the first request does)."""
    import httpx

    with httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        return one_request(client, ep, "Hello", 4, clock)


def run(
    paths: Paths,
    stack: StackSet,
    tier: str,
    settings: Settings,
    *,
    clock: Clock,
    hardware: Any,
    stated_bandwidth: float | None = None,
    progress: Progress | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark ``tier``; the report (``--output json``'s document). Saves nothing."""
    say = note or (lambda _line: None)
    chosen = target(paths, stack, tier)
    endpoints: list[Endpoint] = []
    if "gateway" in settings.paths:
        if chosen.gateway is None:
            say("the gateway is disabled: measuring the tier directly only")
        else:
            first = warm_up(chosen.gateway, clock)
            if not first.ok:
                raise MlxctlError(f"the gateway did not answer for '{tier}': {first.error}")
            endpoints.append(chosen.gateway)
    if "direct" in settings.paths:
        direct = direct_endpoint(paths, tier)
        if direct is None:
            say(f"'{tier}' is not running: no direct measurement (start it: mlxctl load {tier})")
        else:
            first = warm_up(direct, clock)
            if first.ok:
                endpoints.append(direct)
            else:
                say(f"the tier did not answer directly: {first.error}")
    if not endpoints:
        raise MlxctlError(f"nothing to measure for '{tier}': neither the gateway nor the tier")
    bandwidth = bandwidth_of(
        stated_bandwidth,
        hardware.bandwidth_gbps,
        hardware.profile_id,
        hardware.bandwidth_estimated,
        hardware.accelerator,
    )
    limit, why = model_ceiling(chosen.model_dir, settings.prompt_tokens, bandwidth)
    runs: list[LevelSummary] = []
    offset = 0
    for level in settings.concurrency:
        for ep in endpoints:
            runs.append(run_level(ep, level, settings, clock, progress, offset))
            offset += max(settings.requests, level)
    return report(chosen, hardware, settings, bandwidth, limit, why, runs, clock.time())


def report(
    chosen: Target,
    hardware: Any,
    settings: Settings,
    bandwidth: Bandwidth,
    limit: Ceiling | None,
    why: str,
    runs: Sequence[LevelSummary],
    measured_at: float,
) -> dict[str, Any]:
    """The report document; pure."""
    run_dicts = []
    for run in runs:
        data = run.to_dict()
        gen = run.metrics.get("generation_tps")
        # Aggregate decode rate while every stream decodes: streams x per-stream median.
        decode = gen.p50 * run.concurrency if gen else None
        cap = limit.tok_s(run.concurrency) if limit else None
        data |= {"decode_tps": decode, "ceiling_tps": cap, "share": share(decode, cap)}
        run_dicts.append(data)
    added: dict[str, dict[str, float | None]] = {}
    for level in settings.concurrency:
        g = next((r for r in runs if r.path == "gateway" and r.concurrency == level), None)
        d = next((r for r in runs if r.path == "direct" and r.concurrency == level), None)
        if g and d:
            added[str(level)] = gateway_share(g, d)
    return {
        "version": REPORT_VERSION,
        "tier": chosen.tier,
        "measured_at": measured_at,
        "model": {
            "identity": chosen.model_identity,
            "display": chosen.model_display,
            "weights_bytes": limit.weights_bytes if limit else 0,
        },
        "hardware": {
            "profile_id": hardware.profile_id,
            "chip": hardware.chip,
            "accelerator": hardware.accelerator,
        },
        "settings": {
            "concurrency": list(settings.concurrency),
            "requests": settings.requests,
            "prompt_tokens": settings.prompt_tokens,
            "max_tokens": settings.max_tokens,
            "paths": list(settings.paths),
        },
        "bandwidth": bandwidth.to_dict(),
        "ceiling": limit.to_dict(settings.concurrency) if limit else None,
        "ceiling_unknown_because": why if limit is None else "",
        "runs": run_dicts,
        "gateway_added": added,
    }


def save(paths: Paths, document: dict[str, Any]) -> Path:
    from mlxctl.machine import bench_results

    return bench_results.save(paths.state, document)


def stored(paths: Paths, profile_id: str | None) -> tuple[list[Any], list[str]]:
    """The results saved on this machine's profile (validated), and the files skipped."""
    from mlxctl.machine import bench_results

    return bench_results.load_all(paths.state, profile_id)


def matches_variant(identity: str, variant: Any, variants: Mapping[str, Any]) -> bool:
    """Whether a benchmarked model (its ModelRef identity) is this catalog ``variant``:
    its hub repo at any revision, its wheel's GGUF, or its local quantization; pure."""
    if variant.repo is not None:
        return identity.startswith(f"hf:{variant.repo}@")
    source = variant.source
    if source is not None and source.pypi_gguf is not None:
        return identity == f"pypi-gguf:{source.pypi_gguf.sha256}"
    if source is not None and source.quantize is not None:
        q = source.quantize
        base = variants.get(q.from_variant)
        if base is None or base.repo is None:
            return False
        return identity.startswith(f"quantized:hf:{base.repo}@") and identity.endswith(
            f":{q.bits}bit-g{q.group_size}"
        )
    return False


def measured_here(model: Any, results: Sequence[Any]) -> dict[str, Any]:
    """The newest stored result of each of ``model``'s catalog variants; pure."""
    found: dict[str, Any] = {}
    for key, variant in model.variants.items():
        mine = [r for r in results if matches_variant(r.model.identity, variant, model.variants)]
        if mine:
            found[key] = max(mine, key=lambda r: r.measured_at)
    return found


def speeds_here(
    paths: Paths, catalog: Any, profile_id: str
) -> tuple[dict[tuple[str, str], Any], list[str]]:
    """This machine's benchmarked single-stream speed of each catalog variant it has run,
    for ``init``'s scoring: (model id, quant) -> ThroughputEstimate; and the result files
    skipped (one line each)."""
    from mlxctl.capacity.memory import ThroughputEstimate

    results, skipped = stored(paths, profile_id)
    speeds: dict[tuple[str, str], Any] = {}
    for model in catalog.models:
        for quant, result in measured_here(model, results).items():
            gen = result.generation_tps()
            if gen:
                basis = f"measured here by mlxctl bench (tier '{result.tier}')"
                speeds[(model.id, quant)] = ThroughputEstimate(
                    gen, result.prompt_tps(), False, basis
                )
    return speeds, skipped
