"""The decode ceiling: tok/s <= bandwidth / bytes read per token, as decision tables."""

from __future__ import annotations

import pytest

from mlxctl.capacity.memory import KvLayout
from mlxctl.capacity.roofline import Bandwidth, bandwidth_of, ceiling, is_moe, share

GB = 10**9
# An 8B model's KV layout (Llama 3.1 8B: 32 layers x 8 KV heads x head_dim 128).
LLAMA8B = KvLayout(full_layers=32, kv_heads=8, head_dim=128)


@pytest.mark.parametrize(
    ("weights", "layout", "context", "gbps", "concurrency", "expected"),
    [
        # 4.5 GB per token on an M4 Max (546 GB/s): ~120 tok/s (the anchors' roofline).
        (int(4.5 * GB), None, 2048, 546.0, 1, 121.33),
        # the same on an M4 Pro (273 GB/s): half.
        (int(4.5 * GB), None, 2048, 273.0, 1, 60.67),
        # the KV cache is read too: 128 KiB per token x 1000 tokens = 131 MB more.
        (4 * GB, LLAMA8B, 1000, 400.0, 1, 400 * GB / (4 * GB + 131_072_000)),
        # a batch shares one read of the weights: 4 streams, 4x (nearly) the tokens.
        (4 * GB, LLAMA8B, 1000, 400.0, 4, 4 * 400 * GB / (4 * GB + 4 * 131_072_000)),
        # a sliding-window layer reads at most its window.
        (1 * GB, KvLayout(0, 8, 128, sliding_layers=32, sliding_window=512), 4096, 100.0, 1,
         100 * GB / (GB + 32 * 512 * 2 * 2 * 8 * 128)),
    ],
)  # fmt: skip
def test_the_ceiling_divides_bandwidth_by_the_bytes_read_per_token(
    weights: int,
    layout: KvLayout | None,
    context: int,
    gbps: float,
    concurrency: int,
    expected: float,
) -> None:
    limit = ceiling(weights, layout, context, Bandwidth(gbps, "test"), moe=False)
    assert limit.tok_s(concurrency) == pytest.approx(expected, rel=1e-3)


def test_an_unknown_bandwidth_gives_no_ceiling_but_still_the_bytes() -> None:
    limit = ceiling(GB, LLAMA8B, 100, Bandwidth(None, "unknown"), moe=False)
    assert limit.tok_s(1) is None
    assert limit.to_dict((1, 2))["bytes_per_token"] == GB + 100 * 131_072
    assert limit.to_dict((1, 2))["tok_s"] == {"1": None, "2": None}


def test_the_ceiling_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        ceiling(0, None, 10, Bandwidth(100.0, "x"), moe=False)
    with pytest.raises(ValueError):
        ceiling(GB, None, 10, Bandwidth(100.0, "x"), moe=False).tok_s(0)


@pytest.mark.parametrize(
    ("measured", "limit", "expected"),
    [(60.0, 120.0, 0.5), (None, 120.0, None), (60.0, None, None), (60.0, 0.0, None)],
)
def test_share_is_measured_over_limit(
    measured: float | None, limit: float | None, expected: float | None
) -> None:
    assert share(measured, limit) == expected


@pytest.mark.parametrize(
    ("stated", "profile", "estimated", "accelerator", "gbps", "source_has"),
    [
        (300.0, 273.0, False, "metal", 300.0, "--bandwidth"),  # the user's figure wins
        (None, 273.0, False, "metal", 273.0, "published figure for hardware profile m4-pro-48"),
        (None, 460.0, True, "metal", 460.0, "an estimate from hardware profile"),
        (None, None, True, "cpu", None, "pass --bandwidth GB/s"),  # Linux CPU: unknown
        (None, None, True, "cuda", None, "no table of GPU memory bandwidth"),
    ],
)
def test_where_the_bandwidth_comes_from(
    stated: float | None,
    profile: float | None,
    estimated: bool,
    accelerator: str,
    gbps: float | None,
    source_has: str,
) -> None:
    bw = bandwidth_of(stated, profile, "m4-pro-48", estimated, accelerator)
    assert bw.gbps == gbps and source_has in bw.source


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"num_experts": 128, "num_experts_per_tok": 8}, True),
        ({"text_config": {"num_local_experts": 16}}, True),
        ({"n_routed_experts": 64}, True),
        ({"num_experts": 1}, False),
        ({"hidden_size": 4096}, False),
    ],
)
def test_mixture_of_experts_is_recognised(config: dict[str, object], expected: bool) -> None:
    assert is_moe(config) is expected
