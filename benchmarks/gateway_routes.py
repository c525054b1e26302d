"""The gateway's routes against real tiers: the latency it adds per route (native and
translated), the queue in front of a one-slot tier, and its memory over 10 000 requests.

Starts, as mlxctl starts them (through its tier guard, each with its own key), two tiers
serving the tiny test model, and ``python -m mlxctl.gateway`` in front of them with the
routes mlxctl renders for them (capacity, context, tokenizer, key file, runtime):

- ``mlx``: ``mlx_lm.server``, which serves only chat completions: the gateway
  **translates** ``POST /v1/messages`` and ``POST /v1/responses`` to a chat completion
  and the answer back (:mod:`mlxctl.gateway.families`); capacity 4;
- ``vllm``: vllm-mlx without continuous batching (its simple engine: ONE generation at a
  time, capacity 1), which serves both routes itself: the gateway relays them
  (**native**).

Sections (``--only``), run in this order:

- ``memory``: the gateway's RSS (psutil) after start, then after 100, 1000 and
  ``--requests`` mixed requests (both tiers, the three routes, streamed and not; 4
  clients at once), and how many failed. First, so that "after 100" means it.
- ``latency``: for each tier and route, 1-token and 64-token answers (whole) and a
  16-token stream's time to its first event and to its first event carrying text
  (vllm-mlx sends one before it generates; the gateway answers only with the tier's
  first token, :func:`mlxctl.gateway.streams.open_stream`), through the gateway and
  direct to the tier. Each round sends every target once, one after the other, in an
  order drawn anew each round, so the machine's load and each tier's idle gaps hit
  direct and gateway calls alike (5 warm-up rounds are not counted). Added = gateway
  percentile minus the direct one. A translated route has no direct twin: it is
  compared with a direct chat completion of the same length (the same prompt,
  ``temperature: 0``; the output tokens each got are recorded).
  Where each process's time goes: its time on a CPU and waiting for one (runnable, not
  running), per request, from ``/proc/PID/schedstat`` (Linux): on a loaded machine the
  gateway's added latency is mostly the second.
- ``queue``: ``--clients`` (16) clients, each sending 1-token requests back to back
  (chat, Messages and Responses in turn) through the gateway to the one-slot tier for
  ``--queue-seconds``: requests, failures, and the wait in the gateway's queue, read
  from its own ``mlxctl_gateway_queue_seconds`` histogram on ``/metrics`` (exact mean;
  p50 / p99 interpolated within its buckets, as Prometheus' ``histogram_quantile``
  does) and from the client (its latency minus the tier's service time, measured
  direct just before, per route).

    PYTHONPATH=src python benchmarks/gateway_routes.py [--rounds 400] [--requests 10000]
        [--clients 16] [--queue-seconds 30] [--only memory,latency,queue] [--gateway-nice N]
        [--json FILE]

Every process it starts is stopped by its PID when it ends: on success, on failure, on
Ctrl-C and on SIGTERM (``_shared.Processes``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from _shared import Processes, free_port, write_results
from gateway_bench import pct, wait_log

KEY = "sk-bench-routes"
PY = sys.executable
GUARD = [PY, "-m", "mlxctl.runtimes.tier_guard"]
PROMPT = "Hello world, how are you?"
ROUTES = ("chat", "messages", "responses")
PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}
Kind = Literal["tokens_1", "tokens_64", "stream"]
KINDS: tuple[Kind, ...] = ("tokens_1", "tokens_64", "stream")
# What each kind of request measures.
MEASURES = {
    "tokens_1": ("tokens_1",),
    "tokens_64": ("tokens_64",),
    "stream": ("stream_ttfb", "stream_ttft"),
}
LABEL = {
    "tokens_1": "1 token",
    "tokens_64": "64 tokens",
    "stream_ttfb": "stream 1st byte",
    "stream_ttft": "stream 1st token",
}
STREAM_TOKENS = 16
# The last event of a finished stream, per route (a stream that stops without it broke).
ENDS = {
    "chat": (b"[DONE]",),
    "messages": (b"message_stop",),
    "responses": (b"response.completed", b"response.incomplete"),
}
WARMUP_ROUNDS = 5
ORDER_SEED = 17
# The chat route's budget over a direct call (issue #10), 1-token completions.
BUDGET_MS = {"p50": 5.0, "p99": 15.0}
VERSIONS = ("mlx", "mlx-lm", "vllm-mlx", "litellm", "starlette", "uvicorn", "aiohttp", "httpx")


def body(route: str, model: str, tokens: int, stream: bool = False) -> dict[str, Any]:
    """The same prompt and length on every route (a translated request becomes exactly
    the chat completion its direct twin sends)."""
    if route == "responses":
        out: dict[str, Any] = {"model": model, "input": PROMPT, "max_output_tokens": tokens}
    else:
        messages = [{"role": "user", "content": PROMPT}]
        out = {"model": model, "messages": messages, "max_tokens": tokens}
    out["temperature"] = 0
    if stream:
        out["stream"] = True
    return out


def output_tokens(route: str, answer: dict[str, Any]) -> int | None:
    usage = answer.get("usage") or {}
    value = usage.get("completion_tokens" if route == "chat" else "output_tokens")
    return value if isinstance(value, int) else None


@dataclass(frozen=True)
class Target:
    """One way to ask: a tier's route, through the gateway or direct."""

    tier: str
    route: str
    via: Literal["gateway", "direct"]
    base: str
    model: str
    key: str

    @property
    def name(self) -> str:
        return f"{self.tier} {self.via} {self.route}"

    @property
    def url(self) -> str:
        return self.base + PATHS[self.route]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Stack:
    work: Path
    gateway: subprocess.Popen[bytes]
    url: str
    tiers: dict[str, tuple[str, str, str]]  # tier -> (base url, served model, tier key)
    path: dict[str, str]  # tier -> "translated" / "native"
    tier_pids: dict[str, int]

    def pids(self) -> dict[str, int]:
        return {"gateway": self.gateway.pid, **self.tier_pids}

    def target(self, tier: str, route: str, via: Literal["gateway", "direct"]) -> Target:
        base, served, key = self.tiers[tier]
        if via == "gateway":
            return Target(tier, route, via, self.url, tier, KEY)
        return Target(tier, route, via, base, served, key)

    def direct_twin(self, target: Target) -> Target:
        """What a gateway target is compared with: the tier's own route, or its chat
        completions when the gateway translates."""
        route = target.route if self.path[target.tier] == "native" else "chat"
        return self.target(target.tier, route, "direct")

    def rss_mb(self) -> float:
        proc = psutil.Process(self.gateway.pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            total += child.memory_info().rss
        return round(total / 2**20, 1)


# -- one request ------------------------------------------------------------------------


def measure(
    client: httpx.Client, target: Target, kind: Kind
) -> tuple[dict[str, float], int | None, bool]:
    """Seconds to the whole answer (``kind``), or for a stream to its first event
    (``stream_ttfb``) and to its first event carrying generated text (``stream_ttft``);
    the output tokens the answer's usage reports (None for a stream); and whether a
    stream finished (text, then its route's last event: vllm-mlx's simple engine closes
    a stream it is too busy for after its first event, which would time as a fast one)."""
    if kind != "stream":
        tokens = 1 if kind == "tokens_1" else 64
        payload = body(target.route, target.model, tokens)
        start = time.perf_counter()
        resp = client.post(target.url, json=payload, headers=target.headers)
        took = time.perf_counter() - start
        if resp.status_code != 200:
            raise SystemExit(f"{target.name}: {resp.status_code} {resp.text[:300]}")
        return {kind: took}, output_tokens(target.route, resp.json()), True
    payload = body(target.route, target.model, STREAM_TOKENS, stream=True)
    first_byte = first_token = None
    last = ""
    start = time.perf_counter()
    with client.stream("POST", target.url, json=payload, headers=target.headers) as resp:
        if resp.status_code != 200:
            raise SystemExit(f"{target.name}: {resp.status_code} {resp.read()[:300]!r}")
        for line in resp.iter_lines():  # read to its end, as a client does
            if not line.startswith("data:"):
                continue
            last = line
            if first_token is None:
                now = time.perf_counter() - start
                first_byte = now if first_byte is None else first_byte
                if carries_text(line[5:]):
                    first_token = now
    complete = first_token is not None and any(end.decode() in last for end in ENDS[target.route])
    end = time.perf_counter() - start
    return {"stream_ttfb": first_byte or end, "stream_ttft": first_token or end}, None, complete


def carries_text(data: str) -> bool:
    """Whether one stream event carries generated text: a chat chunk's content, an
    Anthropic ``content_block_delta``, a Responses ``response.output_text.delta``.
    (vllm-mlx sends a chat stream's ``role`` chunk, Anthropic's ``message_start`` and the
    Responses ``response.created`` before it generates anything.)"""
    try:
        event = json.loads(data)
    except ValueError:
        return False
    if not isinstance(event, dict):
        return False
    if event.get("type") in ("content_block_delta", "response.output_text.delta"):
        return True
    return any(
        isinstance(choice, dict)
        and ((choice.get("delta") or {}).get("content") or choice.get("text"))
        for choice in event.get("choices") or ()
    )


# -- the stack ---------------------------------------------------------------------------


def start_stack(procs: Processes, work: Path) -> Stack:
    from mlxctl.desired.resolve import model_facts
    from mlxctl.runtimes.gateway import GATEWAY_ENV
    from mlxctl.testing.tiny_model import build_tiny_model

    model = build_tiny_model(work / "tiny")
    ports = {name: free_port() for name in ("mlx", "vllm", "gateway")}
    tiers: dict[str, tuple[str, str, str]] = {}
    tier_pids: dict[str, int] = {}
    routes = []
    for name, runtime, served, capacity in (
        ("mlx", "mlx-lm", "default_model", 4),
        ("vllm", "vllm-mlx", "vllm", 1),
    ):
        key_file = work / f"{name}.key"
        key_file.write_text(f"sk-tier-{name}\n")
        key_file.chmod(0o600)
        argv = [*GUARD, runtime]
        if runtime == "vllm-mlx":  # as mlxctl launches it (runtimes.vllm_mlx.argv)
            argv += ["serve", str(model), "--served-model-name", served, "--offline"]
        else:
            argv += ["--model", str(model)]
        argv += ["--host", "127.0.0.1", "--port", str(ports[name])]
        env = {**os.environ, "MLXCTL_TIER_KEY_FILE": str(key_file), "HF_HUB_OFFLINE": "1"}
        tier_pids[name] = procs.start(argv, work / f"{name}.log", env).pid
        tiers[name] = (f"http://127.0.0.1:{ports[name]}", served, f"sk-tier-{name}")
        routes.append(
            {
                "name": name,
                "port": ports[name],
                "served_model": served,
                "runtime": runtime,
                "max_concurrency": capacity,
                "key_file": str(key_file),
                **model_facts(model),
            }
        )
    config = work / "routes.json"
    config.write_text(json.dumps({"routes": routes}))
    env = {**os.environ, **dict(GATEWAY_ENV), "LITELLM_MASTER_KEY": KEY, "LITELLM_LOG": "ERROR"}
    argv = [PY, "-m", "mlxctl.gateway", "--config", str(config), "--port", str(ports["gateway"])]
    gateway = procs.start(argv, work / "gateway.log", env)
    stack = Stack(
        work,
        gateway,
        f"http://127.0.0.1:{ports['gateway']}",
        tiers,
        {"mlx": "translated", "vllm": "native"},
        tier_pids,
    )
    wait_serving(stack, procs)
    wait_log(work / "gateway.log", "litellm.Router ")  # ready, or not needed: start-up done
    return stack


def wait_serving(stack: Stack, procs: Processes, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            for proc, _ in procs.started:
                if proc.poll() is not None:
                    raise SystemExit(
                        f"{proc.args!r} exited {proc.returncode}; logs in {stack.work}"
                    )
            try:
                ok = all(
                    client.post(t.url, json=body("chat", t.model, 1), headers=t.headers).status_code
                    == 200
                    for t in (stack.target(tier, "chat", "direct") for tier in stack.tiers)
                )
                if ok and client.get(f"{stack.url}/health/liveliness").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    raise SystemExit(f"the tiers and the gateway did not serve within {timeout}s")


def all_targets(stack: Stack) -> list[Target]:
    targets = []
    for tier in stack.tiers:
        for route in ROUTES:
            targets.append(stack.target(tier, route, "gateway"))
            twin = stack.direct_twin(targets[-1])
            if twin not in targets:
                targets.append(twin)
    return targets


def warm(stack: Stack) -> None:
    """Every target and kind a few times: first requests compile and fill caches."""
    with httpx.Client(timeout=120) as client:
        for target in all_targets(stack):
            for kind in KINDS:
                for _ in range(3 if kind != "tokens_64" else 1):
                    measure(client, target, kind)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def load_now() -> dict[str, Any]:
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "uptime": uptime()}


def schedstat(pid: int) -> tuple[float, float, float] | None:
    """Seconds on a CPU, seconds waiting for one (runnable, not running), and time
    slices, summed over the process's threads (Linux ``/proc/PID/task/*/schedstat``;
    None elsewhere)."""
    total = [0.0, 0.0, 0.0]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                fields = (task / "schedstat").read_text().split()
                for i in range(3):
                    total[i] += int(fields[i]) / (1e9 if i < 2 else 1)
    except OSError:
        return None
    return total[0], total[1], total[2]


def per_request(
    before: tuple[float, float, float] | None,
    after: tuple[float, float, float] | None,
    requests: float,
) -> dict[str, float] | None:
    """Where a request's time in the gateway process goes: on a CPU, and waiting for
    one (on a loaded machine, what the extra process in the path adds most)."""
    if before is None or after is None or not requests:
        return None
    cpu, wait, slices = (a - b for a, b in zip(after, before, strict=True))
    return {
        "requests": int(requests),
        "cpu_ms": round(cpu / requests * 1000, 3),
        "cpu_wait_ms": round(wait / requests * 1000, 3),
        "time_slices": round(slices / requests, 2),
    }


# -- /metrics ----------------------------------------------------------------------------


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the gateway's ``/metrics``: (name, sorted labels) -> value."""
    resp = httpx.get(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    resp.raise_for_status()
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def histogram(before: Samples, after: Samples, name: str, **labels: str) -> dict[str, Any]:
    """A histogram's observations between two scrapes: count, mean and p50 / p99
    interpolated within the buckets (as Prometheus' ``histogram_quantile``), in ms."""

    def delta(sample: str, extra: dict[str, str]) -> float:
        key = (sample, tuple(sorted({**labels, **extra}.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    bounds = sorted(
        (float(le), le)
        for key in after
        if key[0] == f"{name}_bucket"
        and all(dict(key[1]).get(n) == v for n, v in labels.items())
        and (le := dict(key[1])["le"])
    )
    cumulative = [(b, delta(f"{name}_bucket", {"le": le})) for b, le in bounds]
    count = delta(f"{name}_count", {})
    total = delta(f"{name}_sum", {})
    out: dict[str, Any] = {"count": int(count)}
    if count:
        out["mean_ms"] = round(total / count * 1000, 2)
        for q in (0.5, 0.99):
            out[f"p{round(q * 100)}_ms_bucketed"] = round(_quantile(q, cumulative) * 1000, 2)
        out["cumulative_buckets"] = {
            le: int(c) for (_, le), (_, c) in zip(bounds, cumulative, strict=True)
        }
    return out


def _quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    total = cumulative[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


# -- the sections --------------------------------------------------------------------------


def timed_rounds(
    targets: list[Target], kind: Kind, count: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[int]], dict[str, int]]:
    """``count`` rounds (after the warm-up ones), each target once a round, in an order
    drawn anew each round (seeded: the same orders every run): per measure and target
    the seconds, the output tokens, and the streams that did not finish (left out)."""
    times: dict[str, dict[str, list[float]]] = {
        m: {t.name: [] for t in targets} for m in MEASURES[kind]
    }
    tokens: dict[str, list[int]] = {t.name: [] for t in targets}
    incomplete = {t.name: 0 for t in targets}
    clients = {t.name: httpx.Client(timeout=120) for t in targets}
    shuffle = random.Random(ORDER_SEED)
    try:
        for i in range(count + WARMUP_ROUNDS):
            # A new order every round: a fixed cycle (even rotated) always gives the same
            # target the request a tier gets after its idle stretch, and biases one side
            # (seen here: the gateway's chat on mlx_lm.server 1.2-2.5 ms slower at p50
            # than its Messages and Responses in 5 of 6 runs; 0.05 ms once shuffled).
            for target in shuffle.sample(targets, len(targets)):
                took, got, complete = measure(clients[target.name], target, kind)
                if i < WARMUP_ROUNDS:
                    continue
                if not complete:
                    incomplete[target.name] += 1
                    continue
                for m, seconds in took.items():
                    times[m][target.name].append(seconds)
                if got is not None:
                    tokens[target.name].append(got)
    finally:
        for client in clients.values():
            client.close()
    return times, tokens, incomplete


def requests_between(before: Samples, after: Samples) -> float:
    """API requests the gateway finished between two scrapes (its own counter)."""
    return sum(
        value - before.get(key, 0.0)
        for key, value in after.items()
        if key[0] == "mlxctl_gateway_requests_total"
    )


def latency(stack: Stack, rounds: int) -> dict[str, Any]:
    targets = all_targets(stack)
    counts = {"tokens_1": rounds, "tokens_64": max(20, rounds // 4), "stream": max(20, rounds // 2)}
    out: dict[str, Any] = {"rounds": counts, "targets": {}, "rows": [], "processes": {}}
    out["incomplete_streams"] = {}
    before = scrape(stack)
    for kind in KINDS:
        served = scrape(stack)
        sched = {name: schedstat(pid) for name, pid in stack.pids().items()}
        times, tokens, incomplete = timed_rounds(targets, kind, counts[kind])
        sched_after = {name: schedstat(pid) for name, pid in stack.pids().items()}
        # The requests each process served: the gateway's own count; each tier's, one a
        # round for each of its targets.
        sent = {"gateway": requests_between(served, scrape(stack))}
        for tier in stack.tiers:
            per_round = sum(t.tier == tier for t in targets)
            sent[tier] = (counts[kind] + WARMUP_ROUNDS) * per_round
        out["processes"][kind] = {
            name: per_request(sched[name], sched_after[name], sent[name]) for name in sched
        }
        if any(incomplete.values()):
            out["incomplete_streams"] = incomplete
        for m, by_target in times.items():
            out["targets"][m] = {
                name: {
                    "p50_ms": pct(t, 0.5),
                    "p99_ms": pct(t, 0.99),
                    "n": len(t),
                    "output_tokens_mean": round(sum(tokens[name]) / len(tokens[name]), 1)
                    if tokens[name]
                    else None,
                }
                for name, t in by_target.items()
            }
            print(f"{m}: {json.dumps(out['targets'][m])}", flush=True)
    after = scrape(stack)
    out["gateway_own_time_mean_ms"] = {
        route: histogram(before, after, "mlxctl_gateway_overhead_seconds", route=PATHS[route]).get(
            "mean_ms"
        )
        for route in ROUTES
    }
    for measured, data in out["targets"].items():
        for target in targets:
            if target.via != "gateway":
                continue
            twin = stack.direct_twin(target)
            gw, direct = data[target.name], data[twin.name]
            out["rows"].append(
                {
                    "tier": target.tier,
                    "path": stack.path[target.tier],
                    "route": target.route,
                    "measure": measured,
                    "against": f"direct {twin.route}",
                    "direct_p50_ms": direct["p50_ms"],
                    "direct_p99_ms": direct["p99_ms"],
                    "gateway_p50_ms": gw["p50_ms"],
                    "gateway_p99_ms": gw["p99_ms"],
                    "added_p50_ms": round(gw["p50_ms"] - direct["p50_ms"], 2),
                    "added_p99_ms": round(gw["p99_ms"] - direct["p99_ms"], 2),
                    "tokens_direct": direct["output_tokens_mean"],
                    "tokens_gateway": gw["output_tokens_mean"],
                }
            )
    out["budget"] = budget(out["rows"])
    return out


def budget(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Chat completions, 1 token: added p50 <= 5 ms and p99 <= 15 ms, on each tier."""
    out = {}
    for row in rows:
        if row["route"] == "chat" and row["measure"] == "tokens_1":
            p50, p99 = row["added_p50_ms"], row["added_p99_ms"]
            out[row["tier"]] = {
                "added_p50_ms": p50,
                "added_p99_ms": p99,
                "within": p50 <= BUDGET_MS["p50"] and p99 <= BUDGET_MS["p99"],
            }
    return out


async def _send(client: httpx.AsyncClient, target: Target, tokens: int, stream: bool) -> str | None:
    """One request read to its end: None when it succeeded (200, and a stream that ended
    with its route's last event, not an error event), else what went wrong."""
    payload = body(target.route, target.model, tokens, stream)
    tail = b""
    try:
        async with client.stream("POST", target.url, json=payload, headers=target.headers) as r:
            async for chunk in r.aiter_raw():
                tail = (tail + chunk)[-16384:]  # a Responses stream's last event: ~2 KB
            status = r.status_code
    except httpx.HTTPError as exc:
        return f"{target.name}: {exc!r}"
    if status != 200 or (stream and not any(end in tail for end in ENDS[target.route])):
        kind = "stream" if stream else "whole"
        return f"{target.name} ({kind}): {status} ...{tail[-300:].decode(errors='replace')}"
    return None


def mixed_kinds(stack: Stack) -> Iterator[tuple[Target, int, bool]]:
    """Both tiers, the three routes, streamed (4 tokens) and not (1 token), in turn."""
    kinds = [
        (stack.target(tier, route, "gateway"), 4 if stream else 1, stream)
        for tier in stack.tiers
        for route in ROUTES
        for stream in (False, True)
    ]
    while True:
        yield from kinds


async def mixed(stack: Stack, count: int, concurrency: int = 4) -> list[str]:
    """``count`` mixed requests through the gateway, ``concurrency`` at once; what failed."""
    kinds = mixed_kinds(stack)
    failed: list[str] = []
    sent = 0

    async def worker() -> None:
        nonlocal sent
        async with httpx.AsyncClient(timeout=120) as client:
            while sent < count:
                sent += 1
                target, tokens, stream = next(kinds)
                if (why := await _send(client, target, tokens, stream)) is not None:
                    failed.append(why)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


def memory(stack: Stack, requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {"rss_mb": {"after start": stack.rss_mb()}}
    failed: list[str] = []
    done = 0
    for mark in sorted({100, 1000, requests}):
        if mark > requests:
            continue
        failed += asyncio.run(mixed(stack, mark - done))
        done = mark
        out["rss_mb"][f"after {mark}"] = stack.rss_mb()
        print(f"memory: {out['rss_mb']}, failed {len(failed)}", flush=True)
    out["requests"] = done
    out["failed"] = len(failed)
    out["failures"] = dict(Counter(failed).most_common(10))
    return out


async def _queue_clients(
    stack: Stack, clients: int, seconds: float
) -> tuple[list[tuple[str, float, str | None]], dict[str, float]]:
    results: list[tuple[str, float, str | None]] = []
    peak = {"queued": 0.0, "in_flight": 0.0}
    deadline = time.monotonic() + seconds

    async def client(index: int) -> None:
        async with httpx.AsyncClient(timeout=300) as http:
            turn = index
            while time.monotonic() < deadline:
                target = stack.target("vllm", ROUTES[turn % len(ROUTES)], "gateway")
                turn += 1
                start = time.perf_counter()
                why = await _send(http, target, 1, False)
                results.append((target.route, time.perf_counter() - start, why))

    async def sampler() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            samples = await asyncio.to_thread(scrape, stack)
            for gauge in peak:
                key = (f"mlxctl_gateway_{gauge}_requests", (("tier", "vllm"),))
                peak[gauge] = max(peak[gauge], samples.get(key, 0.0))

    await asyncio.gather(sampler(), *(client(i) for i in range(clients)))
    return results, peak


def queue(stack: Stack, clients: int, seconds: float) -> dict[str, Any]:
    service: dict[str, float] = {}
    with httpx.Client(timeout=120) as http:  # the tier's own time per route, alone
        for route in ROUTES:
            target = stack.target("vllm", route, "direct")
            for _ in range(3):
                measure(http, target, "tokens_1")
            alone = [measure(http, target, "tokens_1")[0]["tokens_1"] for _ in range(30)]
            service[route] = pct(alone, 0.5)
    before = scrape(stack)
    began = time.perf_counter()
    results, peak = asyncio.run(_queue_clients(stack, clients, seconds))
    took = time.perf_counter() - began
    after = scrape(stack)
    latencies = [t for _, t, why in results if why is None]
    waits = [max(0.0, t - service[route] / 1000) for route, t, why in results if why is None]
    failed = [why for _, _, why in results if why is not None]
    return {
        "clients": clients,
        "seconds": round(took, 1),
        "requests": len(results),
        "failed": len(failed),
        "failures": dict(Counter(failed).most_common(10)),
        "requests_per_s": round(len(results) / took, 1),
        "service_p50_ms_direct": service,
        "latency_ms": {"p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99)},
        "wait_ms_client": {"p50": pct(waits, 0.5), "p99": pct(waits, 0.99)},
        "wait_gateway_metric": histogram(
            before, after, "mlxctl_gateway_queue_seconds", tier="vllm"
        ),
        "peak_queued": int(peak["queued"]),
        "peak_in_flight": int(peak["in_flight"]),
    }


# -- the table ---------------------------------------------------------------------------


def render(r: dict[str, Any]) -> str:
    lines = [f"machine: {r['machine']}; python {r['python']}; versions: {r['versions']}"]
    for name, load in r["load"].items():
        lines.append(f"load {name}: {load['uptime']}")
    if "gateway_nice" in r:
        lines.append(f"the gateway ran at nice {r['gateway_nice']} (an experiment)")
    if "memory" in r:
        m = r["memory"]
        lines += ["", "gateway RSS (MB), mixed requests (both tiers, 3 routes, streamed and not)"]
        lines += [f"  {k:<14}{v:>8}" for k, v in m["rss_mb"].items()]
        lines.append(f"  failed: {m['failed']} of {m['requests']}")
        lines += [f"    {n} x {why}" for why, n in m["failures"].items()]
    if "latency" in r:
        lines += [
            "",
            f"{'tier':<5} {'path':<11}{'route':<10}{'measure':<17}{'against':<17}"
            f"{'direct p50/p99':>16}{'gateway p50/p99':>17}{'added p50':>11}"
            f"{'added p99':>11}{'tokens d/g':>12}",
        ]
        for row in r["latency"]["rows"]:
            lines.append(
                f"{row['tier']:<5} {row['path']:<11}{row['route']:<10}"
                f"{LABEL[row['measure']]:<17}{row['against']:<17}"
                f"{row['direct_p50_ms']:>8}/{row['direct_p99_ms']:<7}"
                f"{row['gateway_p50_ms']:>9}/{row['gateway_p99_ms']:<7}"
                f"{row['added_p50_ms']:>+11.2f}{row['added_p99_ms']:>+11.2f}"
                f"{_tokens(row):>12}"
            )
        own = r["latency"]["gateway_own_time_mean_ms"]
        lines.append(f"gateway's own time per request, mean (its /metrics, ms): {own}")
        lines += ["per request, each process (ms; /proc/PID/schedstat): on a CPU / waiting for one"]
        for kind, procs in r["latency"]["processes"].items():
            cells = [
                f"{name} {p['cpu_ms']:.2f} / {p['cpu_wait_ms']:.2f} ({p['requests']})"
                for name, p in procs.items()
                if p is not None
            ]
            lines.append(f"  {LABEL.get(kind, kind):<12}" + ", ".join(cells))
        if r["latency"]["incomplete_streams"]:
            lines.append(f"streams that did not finish: {r['latency']['incomplete_streams']}")
        for tier, b in r["latency"]["budget"].items():
            verdict = "within" if b["within"] else "OVER"
            lines.append(
                f"budget, chat 1 token on {tier} (<= 5 / 15 ms): added p50 "
                f"{b['added_p50_ms']:+.2f}, p99 {b['added_p99_ms']:+.2f}: {verdict}"
            )
    if "queue" in r:
        q = r["queue"]
        g = q["wait_gateway_metric"]
        lines += [
            "",
            f"queue: {q['clients']} clients, one-slot vllm tier, {q['seconds']} s",
            f"  requests {q['requests']}, failed {q['failed']}, {q['requests_per_s']}/s; "
            f"latency p50 {q['latency_ms']['p50']} ms, p99 {q['latency_ms']['p99']} ms",
            f"  wait in the gateway's queue (its metric, {g.get('count')} requests): mean "
            f"{g.get('mean_ms')} ms, p50 ~{g.get('p50_ms_bucketed')}, "
            f"p99 ~{g.get('p99_ms_bucketed')} (bucketed)",
            f"  wait from the client (latency - direct service p50 "
            f"{q['service_p50_ms_direct']}): p50 {q['wait_ms_client']['p50']} ms, "
            f"p99 {q['wait_ms_client']['p99']} ms",
            f"  peak queued {q['peak_queued']}, peak in flight at the tier {q['peak_in_flight']}",
        ]
        lines += [f"    {n} x {why}" for why, n in q["failures"].items()]
    return "\n".join(lines)


def _tokens(row: dict[str, Any]) -> str:
    if row["tokens_direct"] is None:
        return "-"
    return f"{row['tokens_direct']:g}/{row['tokens_gateway']:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=400, help="1-token (64: /4; stream: /2)")
    parser.add_argument("--requests", type=int, default=10_000, help="mixed requests (memory)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queue-seconds", type=float, default=30.0)
    parser.add_argument("--only", default="memory,latency,queue")
    parser.add_argument(
        "--gateway-nice",
        type=int,
        default=None,
        help="an experiment: the gateway's scheduling priority (negative: root only)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sections = args.only.split(",")
    result: dict[str, Any] = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "versions": {p: version(p) for p in VERSIONS},
        "load": {"start": load_now()},
    }
    work = Path(tempfile.mkdtemp(prefix="gateway-routes-"))
    with Processes() as procs:
        stack = start_stack(procs, work)
        if args.gateway_nice is not None:
            psutil.Process(stack.gateway.pid).nice(args.gateway_nice)
            result["gateway_nice"] = args.gateway_nice
        warm(stack)
        result["load"]["ready"] = load_now()
        if "memory" in sections:
            result["memory"] = memory(stack, args.requests)
            result["load"]["after memory"] = load_now()
        if "latency" in sections:
            result["latency"] = latency(stack, args.rounds)
            result["load"]["after latency"] = load_now()
        if "queue" in sections:
            result["queue"] = queue(stack, args.clients, args.queue_seconds)
            result["load"]["after queue"] = load_now()
    print(render(result))
    if args.json:
        write_results(args.json, "gateway_routes", result)


if __name__ == "__main__":
    main()
