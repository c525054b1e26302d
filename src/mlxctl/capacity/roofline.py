"""The physical limit of decoding: tok/s <= memory bandwidth / bytes read per token; pure.

Each decode step reads every weight once (for all the sequences in the batch) and each
sequence's own KV cache. With ``B`` sequences decoding together at ``context`` tokens::

    bytes per step    = weights + B x kv_bytes(context)
    ceiling (tok/s)   = B x bandwidth / bytes per step

At ``B = 1`` this is the familiar ``bandwidth / (weights + KV cache)``. The ceiling
counts only what must be read; activations, dequantization and the runtime's own
overhead lower what is reached (good quantized kernels on Metal reach ~55-58%).
For a mixture-of-experts model only the active experts are read per token, so the true
ceiling is higher than this figure (which counts all the weights): it says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxctl.capacity.memory import KvLayout, kv_cache_bytes

GB = 10**9  # bandwidth is published in GB/s (10^9 bytes)


@dataclass(frozen=True)
class Bandwidth:
    """A machine's memory bandwidth and where the figure comes from."""

    gbps: float | None
    source: str  # "hardware profile m4-pro-48", "--bandwidth", or why it is unknown
    estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"gbps": self.gbps, "source": self.source, "estimated": self.estimated}


@dataclass(frozen=True)
class Ceiling:
    weights_bytes: int
    kv_bytes: int  # one sequence's KV cache at the context
    context: int
    bandwidth: Bandwidth
    moe: bool = False

    def bytes_per_step(self, concurrency: int = 1) -> int:
        return self.weights_bytes + concurrency * self.kv_bytes

    def tok_s(self, concurrency: int = 1) -> float | None:
        """Aggregate decode tok/s the bandwidth allows at ``concurrency``; None if unknown."""
        if self.bandwidth.gbps is None or self.bandwidth.gbps <= 0:
            return None
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        return concurrency * self.bandwidth.gbps * GB / self.bytes_per_step(concurrency)

    def to_dict(self, levels: tuple[int, ...] = (1,)) -> dict[str, Any]:
        return {
            "weights_bytes": self.weights_bytes,
            "kv_bytes_per_sequence": self.kv_bytes,
            "context_tokens": self.context,
            "bytes_per_token": self.bytes_per_step(1),
            "bandwidth": self.bandwidth.to_dict(),
            "moe_counts_all_experts": self.moe,
            "tok_s": {str(c): self.tok_s(c) for c in levels},
        }


def ceiling(
    weights_bytes: int, layout: KvLayout | None, context: int, bandwidth: Bandwidth, *, moe: bool
) -> Ceiling:
    """The ceiling for a model of ``weights_bytes`` whose KV cache holds ``context`` tokens.

    Without a known attention layout the KV cache is left out (the ceiling is then an
    upper bound that is a little too high, never too low)."""
    if weights_bytes <= 0:
        raise ValueError("weights_bytes must be positive")
    kv = kv_cache_bytes(layout, max(context, 1)) if layout is not None else 0
    return Ceiling(weights_bytes, kv, context, bandwidth, moe)


def share(measured_tps: float | None, limit_tps: float | None) -> float | None:
    """``measured / limit`` (0.42 is 42% of the physical limit); None when either is unknown."""
    if measured_tps is None or limit_tps is None or limit_tps <= 0:
        return None
    return measured_tps / limit_tps


def bandwidth_of(
    stated_gbps: float | None,
    profile_gbps: float | None,
    profile_id: str,
    profile_estimated: bool,
    accelerator: str,
) -> Bandwidth:
    """The bandwidth to use: ``--bandwidth`` first, then the hardware profile's, else unknown
    (with how to give it)."""
    if stated_gbps is not None:
        return Bandwidth(stated_gbps, "--bandwidth (stated)")
    if profile_gbps is not None:
        kind = "an estimate from" if profile_estimated else "Apple's published figure for"
        return Bandwidth(profile_gbps, f"{kind} hardware profile {profile_id}", profile_estimated)
    why = {
        "cpu": "this machine's memory bandwidth is not on record (no Apple chip, no table "
        "for this CPU's memory)",
        "cuda": "no table of GPU memory bandwidth yet",
    }.get(accelerator, "no bandwidth on record for this chip")
    return Bandwidth(None, f"unknown: {why}; pass --bandwidth GB/s (e.g. from your memory's spec)")


def is_moe(config: dict[str, Any]) -> bool:
    """Whether a model config describes a mixture of experts (only some weights per token)."""
    text = config.get("text_config")
    cfg = {**config, **text} if isinstance(text, dict) else config
    return any(
        isinstance(cfg.get(key), int) and cfg[key] > 1
        for key in ("num_experts", "num_local_experts", "n_routed_experts")
    )
