"""The gateway, two designs side by side: LiteLLM's proxy server (tuned) and mlxctl's own
ASGI app around ``litellm.Router`` (:mod:`mlxctl.gateway`), both in front of the same real
``mlx_lm.server`` serving the tiny test model on 127.0.0.1.

Measures, per design: start time (spawn -> ``/health/liveliness`` 200), added latency over
a direct call (requests interleaved direct / proxy / ours, p50 and p99, 1-token and
64-token chat completions), streaming time to first byte, resident memory after 100 and
after N requests (default 10 000), and the status each design answers to the error
cases of issue #10 (missing key, wrong key, unknown model, ``"stop": 123``; a design that
forwards the last one kills the backend's generation thread, so it runs last and the
runner reports whether the tier still served afterwards).

    uv run python benchmarks/gateway_bench.py [--pairs 200] [--requests 10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
import contextlib

from _shared import free_port, write_results

KEY = "sk-bench-key"
PY = Path(sys.executable)
MSG = [{"role": "user", "content": "Hello world, how are you?"}]
ENV = {
    **os.environ,
    "LITELLM_MASTER_KEY": KEY,
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
}


def proxy_config(port: int) -> dict[str, Any]:
    """LiteLLM's proxy, tuned: no callbacks, no spend/error logs, no cooldown, no retries."""
    return {
        "model_list": [
            {
                "model_name": "fast",
                "litellm_params": {
                    "model": "openai/default_model",
                    "api_base": f"http://127.0.0.1:{port}/v1",
                    "api_key": "none",
                },
            }
        ],
        "litellm_settings": {
            "drop_params": True,
            "request_timeout": 600,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "turn_off_message_logging": True,
            "telemetry": False,
        },
        "router_settings": {"num_retries": 0, "disable_cooldowns": True},
        "general_settings": {
            "master_key": "os.environ/LITELLM_MASTER_KEY",
            "disable_spend_logs": True,
            "disable_error_logs": True,
            "background_health_checks": False,
        },
    }


def ours_config(port: int, *, fast_path: bool) -> dict[str, Any]:
    return {
        "routes": [{"name": "fast", "port": port, "served_model": "default_model"}],
        "retries": 0,
        "fast_path": fast_path,
    }


class Proc:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log.open("w")
        self.popen = subprocess.Popen(
            argv, env=env or ENV, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.log.close()

    def rss_mb(self) -> float:
        """Resident memory of the process and its children (workers)."""
        proc = psutil.Process(self.popen.pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return round(total / 2**20, 1)


def wait_ready(url: str, proc: Proc, timeout: float = 180) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.popen.poll() is not None:
            raise SystemExit(f"{url} exited; see {proc.log.name}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready after {timeout}s")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def chat(client: httpx.Client, base: str, model: str, max_tokens: int) -> float:
    body = {"model": model, "messages": MSG, "max_tokens": max_tokens, "temperature": 0}
    start = time.perf_counter()
    resp = client.post(f"{base}/v1/chat/completions", json=body)
    took = time.perf_counter() - start
    resp.raise_for_status()
    return took


def ttfb(client: httpx.Client, base: str, model: str) -> float:
    body = {"model": model, "messages": MSG, "max_tokens": 16, "stream": True}
    start = time.perf_counter()
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        lines = resp.iter_lines()
        took = 0.0
        for line in lines:
            if line.startswith("data: {"):
                took = time.perf_counter() - start
                break
        for _ in lines:  # read the stream to its end, as a client does
            pass
    return took


def interleaved(
    targets: dict[str, tuple[str, str]], pairs: int, measure: Callable[..., float]
) -> dict[str, dict[str, float]]:
    """Every target once per round, the order rotating, so drift hits all of them alike."""
    headers = {"Authorization": f"Bearer {KEY}"}
    clients = {name: httpx.Client(headers=headers, timeout=120) for name in targets}
    times: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    for i in range(pairs + 5):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            base, model = targets[name]
            took = measure(clients[name], base, model)
            if i >= 5:  # warm-up rounds are not counted
                times[name].append(took)
    out = {n: {"p50_ms": pct(t, 0.5), "p99_ms": pct(t, 0.99)} for n, t in times.items()}
    for name in names[1:]:
        for q in ("p50_ms", "p99_ms"):
            out[name][f"added_{q}"] = round(out[name][q] - out[names[0]][q], 2)
    return out


async def load(base: str, model: str, count: int, concurrency: int = 4) -> int:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": model, "messages": MSG, "max_tokens": 1}
    failed = 0
    sent = 0
    async with httpx.AsyncClient(headers=headers, timeout=120) as client:

        async def worker() -> None:
            nonlocal failed, sent
            while sent < count:
                sent += 1
                try:
                    r = await client.post(f"{base}/v1/chat/completions", json=body)
                    failed += r.status_code != 200
                except httpx.HTTPError:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


def error_cases(base: str, direct: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {KEY}"}
    ok = {"model": "fast", "messages": MSG, "max_tokens": 1}
    cases = {
        "no key": ({}, ok),
        "wrong key": ({"Authorization": "Bearer wrong"}, ok),
        "unknown model": (auth, {**ok, "model": "no-such-model"}),
        "draft_model": (auth, {**ok, "draft_model": "/tmp/elsewhere"}),
        "stop: 123": (auth, {**ok, "stop": 123}),
    }
    out: dict[str, Any] = {}
    for name, (headers, body) in cases.items():
        r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60)
        out[name] = r.status_code
    time.sleep(1)
    try:
        r = httpx.post(
            f"{direct}/v1/chat/completions",
            json={**ok, "model": "default_model"},
            timeout=10,
        )
        out["tier serves after stop: 123"] = r.status_code == 200
    except httpx.HTTPError:
        out["tier serves after stop: 123"] = False
    return out


def start_backend(model: Path, work: Path) -> tuple[Proc, str]:
    port = free_port()
    argv = [str(PY), "-m", "mlx_lm", "server", "--model", str(model), "--port", str(port)]
    proc = Proc(argv, work / f"mlx-{port}.log")
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/health", proc)
    for _ in range(3):  # the first completions compile; keep them out of the numbers
        chat(httpx.Client(timeout=60), base, "default_model", 1)
    return proc, base


DESIGNS = ("litellm-proxy", "mlxctl-router", "mlxctl-gateway")
VERSIONS = ("litellm", "mlx-lm", "starlette", "uvicorn", "httpx", "aiohttp", "httptools", "uvloop")


def start_gateways(
    backend_port: int, work: Path, designs: tuple[str, ...] = DESIGNS
) -> dict[str, tuple[Proc, str, float]]:
    gateways: dict[str, tuple[Proc, str, float]] = {}
    if "litellm-proxy" in designs:
        start_proxy(backend_port, work, gateways)
    for name, fast_path in (("mlxctl-router", False), ("mlxctl-gateway", True)):
        if name not in designs:
            continue
        port = free_port()
        cfg = work / f"{name}.json"
        cfg.write_text(json.dumps(ours_config(backend_port, fast_path=fast_path)))
        argv = [str(PY), "-m", "mlxctl.gateway", "--config", str(cfg), "--port", str(port)]
        ours = Proc(argv, work / f"{name}.log")
        took = wait_ready(f"http://127.0.0.1:{port}/health/liveliness", ours)
        gateways[name] = (ours, f"http://127.0.0.1:{port}", took)
        # Measured from here on with start-up done: LiteLLM imported and its Router built
        # when the routes need it (the Router design), not at all otherwise.
        wait_log(work / f"{name}.log", "litellm.Router ")
    return gateways


def start_proxy(
    backend_port: int, work: Path, gateways: dict[str, tuple[Proc, str, float]]
) -> None:
    pport = free_port()
    pcfg = work / "proxy.yaml"
    pcfg.write_text(json.dumps(proxy_config(backend_port)))
    argv = [str(PY.parent / "litellm"), "--config", str(pcfg), "--host", "127.0.0.1",
            "--port", str(pport), "--num_workers", "1"]  # fmt: skip
    proxy = Proc(argv, work / "proxy.log")
    gateways["litellm-proxy"] = (proxy, f"http://127.0.0.1:{pport}", 0.0)
    took = wait_ready(f"http://127.0.0.1:{pport}/health/liveliness", proxy)
    gateways["litellm-proxy"] = (proxy, f"http://127.0.0.1:{pport}", took)


def wait_log(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path}: no {text!r} after {timeout}s")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--designs", default=",".join(DESIGNS), help=f"comma-separated, of {', '.join(DESIGNS)}"
    )
    args = parser.parse_args()
    from mlxctl.testing.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    model = build_tiny_model(work / "tiny")
    backend, direct = start_backend(model, work)
    gateways: dict[str, tuple[Proc, str, float]] = {}
    result: dict[str, Any] = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "versions": {p: version(p) for p in VERSIONS},
        # The machine is shared: how busy it was says how far to trust the tails.
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        designs = tuple(d for d in DESIGNS if d in args.designs.split(","))
        gateways = start_gateways(int(direct.rsplit(":", 1)[1]), work, designs)
        targets = {"direct": (direct, "default_model")}
        targets |= {name: (base, "fast") for name, (_, base, _) in gateways.items()}
        for _, base, _ in gateways.values():  # warm each path
            for _ in range(5):
                chat(httpx.Client(headers={"Authorization": f"Bearer {KEY}"}), base, "fast", 1)
        result["start_s"] = {n: round(t, 2) for n, (_, _, t) in gateways.items()}
        result["rss_mb_after_start"] = {n: p.rss_mb() for n, (p, _, _) in gateways.items()}
        print(f"started: {result['start_s']}", flush=True)
        result["tokens_1"] = interleaved(targets, args.pairs, lambda c, b, m: chat(c, b, m, 1))
        result["tokens_64"] = interleaved(
            targets, max(20, args.pairs // 4), lambda c, b, m: chat(c, b, m, 64)
        )
        print(f"1 token: {result['tokens_1']}", flush=True)
        result["stream_ttfb"] = interleaved(targets, max(20, args.pairs // 2), ttfb)
        result["rss_mb_after_100"] = {}
        result[f"rss_mb_after_{args.requests}"] = {}
        result["failed_under_load"] = {}
        for name, (proc, base, _) in gateways.items():
            asyncio.run(load(base, "fast", 100 - 5))
            result["rss_mb_after_100"][name] = proc.rss_mb()
            failed = asyncio.run(load(base, "fast", args.requests - 100))
            result[f"rss_mb_after_{args.requests}"][name] = proc.rss_mb()
            result["failed_under_load"][name] = failed
        # Ours first: it refuses "stop: 123" at the gateway; a design that forwards it
        # kills the backend's generation thread.
        result["errors"] = {
            name: error_cases(gateways[name][1], direct)
            for name in ("mlxctl-gateway", "mlxctl-router", "litellm-proxy")
            if name in gateways
        }
    finally:
        for proc, _, _ in gateways.values():
            proc.stop()
        backend.stop()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(render(result, args.requests, designs))
    if args.json:
        write_results(args.json, "gateway", result)


def render(r: dict[str, Any], n: int, names: tuple[str, ...] = DESIGNS) -> str:
    lines = [f"machine: {r['machine']}; versions: {r['versions']}", ""]
    lines.append(f"{'measure':<34}" + "".join(f"{n:>16}" for n in names))

    def row(label: str, values: dict[str, Any]) -> None:
        lines.append(f"{label:<34}" + "".join(f"{values.get(k, '-')!s:>16}" for k in names))

    row("start -> ready (s)", r["start_s"])
    for key, label in (("tokens_1", "1 token"), ("tokens_64", "64 tokens"),
                       ("stream_ttfb", "stream TTFB")):  # fmt: skip
        d = r[key]
        direct = f"{d['direct']['p50_ms']} / {d['direct']['p99_ms']}"
        lines.append(f"{label + ' direct p50 / p99 (ms)':<34}{direct:>16}")
        row(f"{label} added p50 (ms)", {k: d[k]["added_p50_ms"] for k in names})
        row(f"{label} added p99 (ms)", {k: d[k]["added_p99_ms"] for k in names})
    row("RSS after start (MB)", r["rss_mb_after_start"])
    row("RSS after 100 requests (MB)", r["rss_mb_after_100"])
    row(f"RSS after {n} requests (MB)", r[f"rss_mb_after_{n}"])
    row("failed requests under load", r["failed_under_load"])
    for case in r["errors"]["mlxctl-gateway"]:
        row(case, {k: r["errors"][k][case] for k in names})
    return "\n".join(lines)


if __name__ == "__main__":
    main()
