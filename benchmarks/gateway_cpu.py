"""The gateway's own CPU per request, and where it goes.

Wall-clock latency on a shared 2-core machine swings with whatever else runs; the CPU
the gateway process spends per request does not. This runner starts a real
``mlx_lm.server`` (the tiny test model) and ``python -m mlxctl.gateway`` in front of
it, sends requests one after the other on one keep-alive connection, and reads the
gateway process's CPU time (user + system, ``psutil``) before and after. A ladder of
request kinds splits the cost without a profiler's distortion:

- ``health``: ``GET /health/liveliness``: the HTTP server, routing and a small JSON answer;
- ``unauthorized``: a completion with a wrong key (401, body never read);
- ``not_found``: a valid body naming an unknown model (404): + body, JSON parse,
  schema validation;
- ``fast``: a 1-token chat completion through the fast path (200): + the backend
  call and the relayed answer;
- ``stream``: the same, streamed (8 tokens).

``--baseline DIR`` starts a second gateway with ``PYTHONPATH=DIR`` (another version of
``mlxctl``, e.g. ``git archive``'d from an older commit) and measures both, rounds
interleaved, so the comparison is not skewed by what else the machine does meanwhile.
``--profile KIND`` runs each gateway under cProfile (``_profiled_gateway.py``) for
that kind and reports its own time grouped by package (cProfile inflates every
figure, so read the shares, not the sums). In-process figures for JSON parsing and
:func:`mlxctl.gateway.requests.check_request` come from ``time.process_time`` around
many calls.

    uv run python benchmarks/gateway_cpu.py [--requests 1000] [--rounds 3] [--profile fast]
        [--baseline DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _shared import free_port, write_results
from gateway_bench import ENV, KEY, MSG, PY, Proc, ours_config, start_backend, wait_log, wait_ready

HERE = Path(__file__).parent
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "fast", "messages": MSG, "max_tokens": 1, "temperature": 0}
KINDS: dict[str, tuple[str, str, dict[str, str], dict[str, Any] | None]] = {
    "health": ("GET", "/health/liveliness", {}, None),
    "unauthorized": ("POST", "/v1/chat/completions", {"Authorization": "Bearer no"}, CHAT),
    "not_found": ("POST", "/v1/chat/completions", AUTH, {**CHAT, "model": "nope"}),
    "fast": ("POST", "/v1/chat/completions", AUTH, CHAT),
    "stream": ("POST", "/v1/chat/completions", AUTH, {**CHAT, "max_tokens": 8, "stream": True}),
}
GROUPS = (
    "uvicorn", "h11", "httptools", "starlette", "pydantic", "httpx", "httpcore", "anyio",
    "h2", "json", "asyncio", "mlxctl",
)  # fmt: skip


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def send(client: httpx.Client, base: str, kind: str) -> None:
    method, path, headers, body = KINDS[kind]
    with client.stream(method, base + path, json=body, headers=headers) as resp:
        for _ in resp.iter_raw():
            pass


def per_request_us(pid: int, base: str, kind: str, count: int) -> float:
    with httpx.Client(timeout=60) as client:
        for _ in range(20):  # warm: connection, caches
            send(client, base, kind)
        before = cpu_seconds(pid)
        for _ in range(count):
            send(client, base, kind)
        return (cpu_seconds(pid) - before) / count * 1e6


def start_gateway(
    backend_port: int, work: Path, name: str, pythonpath: str | None, profile: Path | None
) -> tuple[Proc, str]:
    port = free_port()
    cfg = work / f"routes-{name}.json"
    routes = ours_config(backend_port, fast_path=True)
    routes["routes"][0]["aliases"] = ["gpt-4o-mini"]
    cfg.write_text(json.dumps(routes))
    module = [str(HERE / "_profiled_gateway.py")] if profile else ["-m", "mlxctl.gateway"]
    argv = [str(PY), *module, "--config", str(cfg), "--port", str(port)]
    env = dict(ENV)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    if profile:
        env["MLXCTL_PROFILE_OUT"] = str(profile)
    log = work / f"gateway-{name}.log"
    proc = Proc(argv, log, env)
    wait_ready(f"http://127.0.0.1:{port}/health/liveliness", proc)
    wait_log(log, "litellm.Router ")  # ready, or not needed (no fallbacks): start-up done
    return proc, f"http://127.0.0.1:{port}"


def package(filename: str) -> str:
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins"
    parts = Path(filename).parts
    for group in GROUPS:
        if group in parts:
            return group
    return "other" if "site-packages" in parts else "stdlib"


def profile_kind(base: str, pid: int, out: Path, kind: str, count: int, top: int) -> dict[str, Any]:
    with httpx.Client(timeout=60) as client:
        for _ in range(20):
            send(client, base, kind)
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.2)
        for _ in range(count):
            send(client, base, kind)
        os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    stats = pstats.Stats(str(out))
    by_group: dict[str, float] = {}
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        group = package(filename)
        by_group[group] = by_group.get(group, 0.0) + tottime
        rows.append((tottime, cumtime, calls, f"{group}: {Path(filename).name}:{line} {func}"))
    rows.sort(reverse=True)
    total = sum(by_group.values())
    return {
        "requests": count,
        "profiled_us_per_request": round(total / count * 1e6, 1),
        "own_time_us_per_request_by_package": {
            g: round(t / count * 1e6, 1) for g, t in sorted(by_group.items(), key=lambda x: -x[1])
        },
        "top_functions": [
            {
                "own_us": round(t / count * 1e6, 1),
                "cum_us": round(c / count * 1e6, 1),
                "calls_per_request": round(n / count, 1),
                "where": w,
            }
            for t, c, n, w in rows[:top]
        ],
    }


def in_process(direct: str, iterations: int = 20_000) -> dict[str, float]:
    """In this process, us per call: the JSON parse and schema check of the benchmark's body,
    and renaming the model in a real 1-token answer and in one real stream event."""
    from mlxctl.gateway.answers import StreamRenamer, renamed
    from mlxctl.gateway.requests import check_request, request_adapters

    request_adapters("chat")
    raw = json.dumps(CHAT).encode()
    body = {**CHAT, "model": "default_model"}
    answer = httpx.post(f"{direct}/v1/chat/completions", json=body, timeout=60).content
    with httpx.stream(
        "POST", f"{direct}/v1/chat/completions", json={**body, "stream": True}, timeout=60
    ) as resp:
        event = next(line for line in resp.iter_lines() if line.startswith("data: {"))
    event_bytes = event.encode() + b"\n\n"
    renamer = StreamRenamer("fast")
    out = {}
    for name, call in (
        ("json_loads", lambda: json.loads(raw)),
        ("check_request", lambda: check_request(json.loads(raw), "chat")),
        ("rename_answer", lambda: renamed(answer, "fast")),
        ("rename_stream_event", lambda: renamer.feed(event_bytes)),
    ):
        for _ in range(500):
            call()
        start = time.process_time()
        for _ in range(iterations):
            call()
        out[name] = round((time.process_time() - start) / iterations * 1e6, 1)
    out["check_request"] = round(out["check_request"] - out["json_loads"], 1)
    out["answer_bytes"] = len(answer)
    out["event_bytes"] = len(event_bytes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=1000, help="per kind and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--baseline", default=None, help="PYTHONPATH of a second gateway")
    parser.add_argument("--profile", default=None, help="also profile this kind (e.g. fast)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from mlxctl.testing.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="gateway-cpu-"))
    model = build_tiny_model(work / "tiny")
    backend, direct = start_backend(model, work)
    backend_port = int(direct.rsplit(":", 1)[1])
    paths = {"current": None} | ({"baseline": args.baseline} if args.baseline else {})
    gateways: dict[str, tuple[Proc, str]] = {}
    result: dict[str, Any] = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "requests_per_kind_and_round": args.requests,
        "rounds": args.rounds,
    }
    try:
        for name, path in paths.items():
            gateways[name] = start_gateway(backend_port, work, name, path, None)
        kinds = args.kinds.split(",")
        rounds: dict[str, dict[str, list[float]]] = {g: {k: [] for k in kinds} for g in gateways}
        for _ in range(args.rounds):  # gateways and kinds interleaved: drift hits all alike
            for kind in kinds:
                for name, (proc, base) in gateways.items():
                    us = per_request_us(proc.popen.pid, base, kind, args.requests)
                    rounds[name][kind].append(us)
        result["cpu_us_per_request"] = {
            g: {k: {"median": round(statistics.median(v), 1), "min": round(min(v), 1)}
                for k, v in kinds_.items()}
            for g, kinds_ in rounds.items()
        }  # fmt: skip
        for proc, _ in gateways.values():
            proc.stop()
        gateways = {}
        result["in_process_us"] = in_process(direct)
        if args.profile:
            result[f"profile_{args.profile}"] = {}
            for name, path in paths.items():
                out = work / f"gateway-{name}.prof"
                gateways[name] = start_gateway(backend_port, work, name, path, out)
                proc, base = gateways[name]
                result[f"profile_{args.profile}"][name] = profile_kind(
                    base, proc.popen.pid, out, args.profile, args.requests, args.top
                )
    finally:
        for proc, _ in gateways.values():
            proc.stop()
        backend.stop()
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))
    if args.json:
        write_results(args.json, "gateway_cpu", result)


if __name__ == "__main__":
    main()
