"""The second hop of several machines (docs/multi-host.md): what a request for a tier on
another machine pays for going through this machine's gateway first.

Two hosts on a LAN of network namespaces (``tests/integration/lan.py``; root is needed):
``b`` runs ``mlx_lm.server`` (the tiny test model) on its loopback and mlxctl's gateway
in front of it; ``a`` runs mlxctl's gateway with the tier as a route to ``b``'s gateway
(a peer route: the master key, the hop mark, over the veth LAN). Each machine's clients
call their own gateway on loopback, as users do, so the targets are:

- ``direct``: a client on ``b`` -> the tier on ``b``'s loopback;
- ``gateway b``: a client on ``b`` -> ``b``'s gateway (loopback) -> the tier;
- ``lan -> gateway b``: a client on ``a`` -> ``b``'s gateway over the LAN -> the tier;
- ``gateway a -> b``: a client on ``a`` -> ``a``'s gateway (loopback) -> ``b``'s gateway
  over the LAN -> the tier (the second hop).

Requests are interleaved (every target once per round, the order rotating; five
warm-up rounds not counted), each timed inside a thread of this process that lives in
the client's namespace; p50 and p99 of 1-token and 64-token chat completions and a
stream's time to first byte (the first ``data: {`` line).

    sudo python benchmarks/multi_host.py [--pairs 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _shared import write_results
from gateway_bench import MSG, pct
from tests.integration.lan import Lan, LanUnavailable

KEY = "sk-bench-key"
PY = sys.executable
TIER_PORT = 8001
GATEWAY_PORT = 4000  # each namespace has its own ports
TARGETS = ("direct", "gateway b", "lan -> gateway b", "gateway a -> b")
VERSIONS = ("mlx-lm", "starlette", "uvicorn", "aiohttp", "httpx")

_local = threading.local()


def client() -> httpx.Client:
    """This thread's client (one per namespace thread, keep-alive, as an SDK holds one)."""
    if getattr(_local, "client", None) is None:
        _local.client = httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    return _local.client  # type: ignore[no-any-return]


def chat(base: str, model: str, max_tokens: int) -> float:
    body = {"model": model, "messages": MSG, "max_tokens": max_tokens, "temperature": 0}
    start = time.perf_counter()
    resp = client().post(f"{base}/v1/chat/completions", json=body)
    took = time.perf_counter() - start
    resp.raise_for_status()
    return took


def ttfb(base: str, model: str) -> float:
    body = {"model": model, "messages": MSG, "max_tokens": 16, "stream": True}
    start = time.perf_counter()
    took = 0.0
    with client().stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                took = time.perf_counter() - start
                break
        for _ in lines:  # to its end, as a client reads it
            pass
    return took


def ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait(lan: Lan, host: str, url: str, timeout: float = 180) -> float:
    start = time.monotonic()
    while not lan.call(host, ready, url):
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{url} (on {host}) not ready after {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - start


def wait_log(path: Path, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path}: no {text!r} after {timeout}s")
        time.sleep(0.2)


def start(lan: Lan, work: Path, model: Path) -> dict[str, tuple[str, str, str]]:
    """The tier and both gateways; the targets: name -> (client's host, base URL, model)."""
    b = lan["b"]
    env = {**os.environ, "LITELLM_MASTER_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_TELEMETRY": "False"}  # fmt: skip
    tier = [PY, "-m", "mlx_lm", "server", "--model", str(model), "--port", str(TIER_PORT)]
    lan.start("b", tier, log=work / "tier.log", env=env)
    route = {"name": "fast", "port": TIER_PORT, "served_model": "default_model", "host": "b"}
    peer = {"name": "fast", "port": GATEWAY_PORT, "served_model": "fast", "host": "b",
            "max_concurrency": 4096, "peer": f"http://{b.address}:{GATEWAY_PORT}"}  # fmt: skip
    for host, routes in (("b", [route]), ("a", [peer])):
        config = work / f"gateway-{host}.json"
        config.write_text(json.dumps({"routes": routes, "retries": 0}))
        argv = [PY, "-m", "mlxctl.gateway", "--config", str(config), "--host", "0.0.0.0",
                "--port", str(GATEWAY_PORT)]  # fmt: skip
        lan.start(host, argv, log=work / f"gateway-{host}.log", env=env)
    wait(lan, "b", f"http://127.0.0.1:{TIER_PORT}/health")
    for host in ("a", "b"):
        wait(lan, host, f"http://127.0.0.1:{GATEWAY_PORT}/health/liveliness")
        wait_log(work / f"gateway-{host}.log", "litellm.Router ")  # ready, or not needed
    local = f"http://127.0.0.1:{GATEWAY_PORT}"
    return {
        "direct": ("b", f"http://127.0.0.1:{TIER_PORT}", "default_model"),
        "gateway b": ("b", local, "fast"),
        "lan -> gateway b": ("a", f"http://{b.address}:{GATEWAY_PORT}", "fast"),
        "gateway a -> b": ("a", local, "fast"),
    }


def interleaved(
    lan: Lan, targets: dict[str, tuple[str, str, str]], pairs: int, measure: Callable[..., float]
) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    for i in range(pairs + 5):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            host, base, model = targets[name]
            took = lan.call(host, measure, base, model)
            if i >= 5:  # warm-up rounds are not counted
                times[name].append(took)
    out = {n: {"p50_ms": pct(t, 0.5), "p99_ms": pct(t, 0.99)} for n, t in times.items()}
    for name in names:
        for base_name in ("direct", "gateway b"):
            if name != base_name and names.index(name) > names.index(base_name):
                for q in ("p50_ms", "p99_ms"):
                    out[name][f"over {base_name} {q}"] = round(out[name][q] - out[base_name][q], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from mlxctl.testing.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="multi-host-bench-"))
    model = build_tiny_model(work / "tiny")
    lan = Lan(("a", "b"), work / "lan")
    result: dict[str, Any] = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "versions": {p: version(p) for p in VERSIONS},
        "pairs": args.pairs,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        try:
            lan.up()
        except LanUnavailable as exc:
            raise SystemExit(f"network namespaces cannot be made here: {exc}") from None
        targets = start(lan, work, model)
        for _ in range(3):  # the first completions compile; keep them out of the numbers
            for host, base, name in targets.values():
                lan.call(host, chat, base, name, 1)
        result["tokens_1"] = interleaved(lan, targets, args.pairs, lambda b, m: chat(b, m, 1))
        print(f"1 token: {result['tokens_1']}", flush=True)
        result["tokens_64"] = interleaved(
            lan, targets, max(20, args.pairs // 4), lambda b, m: chat(b, m, 64)
        )
        result["stream_ttfb"] = interleaved(lan, targets, max(20, args.pairs // 2), ttfb)
    finally:
        lan.down()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(render(result))
    if args.json:
        write_results(args.json, "multi_host", result)


def render(r: dict[str, Any]) -> str:
    lines = [f"machine: {r['machine']}; versions: {r['versions']}", ""]
    head = f"{'ms':<30}" + "".join(f"{t:>18}" for t in TARGETS)
    for key, label in (("tokens_1", "1 token"), ("tokens_64", "64 tokens"),
                       ("stream_ttfb", "stream first byte")):  # fmt: skip
        d = r[key]
        lines += [head if key == "tokens_1" else "", f"{label}:"]
        for q, name in (("p50_ms", "p50"), ("p99_ms", "p99")):
            lines.append(f"{'  ' + name:<30}" + "".join(f"{d[t][q]:>18}" for t in TARGETS))
            for over in ("direct", "gateway b"):
                key_q = f"over {over} {q}"
                lines.append(
                    f"{'  ' + name + ' added over ' + over:<30}"
                    + "".join(f"{d[t].get(key_q, '-')!s:>18}" for t in TARGETS)
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
