"""On-demand tiers measured against real processes: what loading on demand costs over the
model's own load, what a swap costs, how the thrash guard behaves, how exactly idle
tiers unload, that memory stays within the budget, and ``mlxctl status`` with a
controller running.

Run: ``PYTHONPATH=src python benchmarks/on_demand.py [--runs 5] [--alt-seconds 40]
[--residencies 0,5,15] [--before ff93b20] [--only standalone,cold,...] [--json FILE]``

Everything runs on 127.0.0.1 with the tiny random Llama (built here), a real controller
(``mlxctl reconcile``), the real gateway and real ``mlx_lm.server`` tiers, each
session in a throw-away MLXCTL_HOME; every process started is stopped by PID. A tiny
tier is estimated at ~1.0009 GiB, so a 1.5 GiB budget holds one tier and 2.5 GiB two.

Measured (medians of ``--runs``, min and max alongside):

- ``standalone``: ``mlx_lm.server`` started directly with the command line mlxctl
  gives it, spawn to the first streamed token of a 1-token request (connection
  refused retried every 10 ms): the model's own load. And SIGTERM to exit after a
  request: the model's own stop.
- ``cold``: a request to a cold on-demand tier through the gateway (controller
  running), send to first token; minus the standalone load measured just before it
  (pairs: the machine's load drifts): mlxctl's own cost (goal <= 150 ms). The same
  runs give the idle-unload error: the tier's exit after the answer's last byte,
  minus ``idleTimeout`` (2 s).
- ``swap``: two tiers of which one fits, ``minResidency: 0s``: a request to the
  unloaded one, send to first token; minus (standalone stop + standalone load),
  measured just before it (goal <= 200 ms). Both also give the time from the request
  to the tier's spawn (its ``start`` event): mlxctl's part, free of the load's noise.
- ``alternating``: 8 clients, each asking the two tiers in turn (1-token answers),
  for ``--alt-seconds`` per ``minResidency`` value: swaps (tier starts), requests
  answered, p50/p99 latency, failed requests (goal 0).
- ``cpu``: one client sending 1-token requests back to back to a loaded on-demand
  tier for 10 s: the controller's CPU (each request's start and end changes the
  demand the gateway reports), against 10 s of no traffic.
- ``memory``: three tiers, a budget that holds two, requests a b c a b c a (four
  evictions); every ~50 ms the estimates of the tiers whose processes are alive
  (inventory) and their RSS (psutil, process tree) are summed: never over the budget.
- ``status``: ``mlxctl status -o json`` as a whole process, with a controller running
  (one always tier and the gateway, a stack the older version reads too, in the
  default stacks directory: the command's quick form, no path); with
  ``--before REV`` the same with that commit's sources on PYTHONPATH (a temporary
  ``git worktree``, removed afterwards), controller included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _shared import free_port, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "on-demand-linux-2cpu.json"
GIB = 1 << 30
MSG = [{"role": "user", "content": "hi"}]
IDLE = 2.0


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def first_token(
    client: httpx.Client, url: str, model: str, key: str | None = None, retry: bool = False
) -> tuple[float, float]:
    """Stream a 1-token answer: (seconds to the first ``data:`` event, to its end), timed
    from now. ``retry``: a refused connection is tried again every 10 ms (a server that
    is starting)."""
    body = {"model": model, "messages": MSG, "max_tokens": 1, "stream": True}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    began = time.perf_counter()
    while True:
        try:
            with client.stream("POST", url, json=body, headers=headers) as resp:
                if resp.status_code != 200:
                    raise RuntimeError(f"{model}: {resp.status_code} {resp.read()[:300]!r}")
                first = None
                for line in resp.iter_lines():
                    if first is None and line.startswith("data:"):
                        first = time.perf_counter() - began
                if first is None:
                    raise RuntimeError(f"{model}: a stream without data")
                return first, time.perf_counter() - began
        except httpx.ConnectError:
            if not retry:
                raise
            time.sleep(0.01)


def med(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": round(med(samples), 4),
        "min": round(min(samples), 4) if samples else None,
        "max": round(max(samples), 4) if samples else None,
        "n": len(samples),
        "samples": [round(s, 4) for s in samples],
    }


# -- standalone: the model's own load and stop ------------------------------------------


def standalone_once(model: Path, client: httpx.Client) -> tuple[float, float]:
    """``mlx_lm.server`` started directly: (spawn to first token, SIGTERM to exit)."""
    port = free_port()
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    began = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        first_token(client, url, "default_model", retry=True)
        load = time.perf_counter() - began
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        return load, time.perf_counter() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def standalone(model: Path, runs: int) -> dict[str, Any]:
    loads, stops = [], []
    with httpx.Client(timeout=120) as client:
        for _ in range(runs):
            load, stop = standalone_once(model, client)
            loads.append(load)
            stops.append(stop)
    return {"load_to_first_token_s": summary(loads), "stop_s": summary(stops)}


# -- a controller session -----------------------------------------------------------------


class Session:
    """A throw-away MLXCTL_HOME, a stack, a controller and the gateway."""

    def __init__(self, root: Path, pythonpath: str | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="home-", dir=root))
        # The default stacks directory: ``mlxctl status`` needs no path (its quick form).
        self.stacks = self.home / "config" / "stacks"
        self.stacks.mkdir(parents=True)
        self.env = {**os.environ, "MLXCTL_HOME": str(self.home)}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # the CLI as users run it
        if pythonpath is not None:
            self.env["PYTHONPATH"] = pythonpath
        self.controller: subprocess.Popen[bytes] | None = None
        self.gw_port = free_port()
        self.url = f"http://127.0.0.1:{self.gw_port}"
        self.key = ""

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "mlxctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"mlxctl {' '.join(args)} -> {result.returncode}: {result.stderr}")
        return result

    def write(self, tiers: list[dict[str, Any]], memory: dict[str, Any] | None) -> None:
        spec: dict[str, Any] = {"gateway": {"port": self.gw_port}, "tiers": tiers}
        if memory is not None:
            spec["memory"] = memory
        doc = {"apiVersion": "mlxctl/v1", "kind": "Stack", "metadata": {"name": "bench"}}
        (self.stacks / "stack.yaml").write_text(json.dumps({**doc, "spec": spec}, indent=2))

    def start(self) -> None:
        log = (self.home / "controller.log").open("wb")
        self.controller = subprocess.Popen(
            [sys.executable, "-m", "mlxctl", "reconcile", str(self.stacks)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def key() -> str:
            got = self.run("gateway", "key", str(self.stacks), check=False)
            return got.stdout.strip() if got.returncode == 0 else ""

        self.key = wait_for(key, 60, "the gateway key", step=0.2)
        wait_for(self.serving, 60, "the gateway", step=0.1)

    def serving(self) -> bool:
        try:
            r = httpx.get(f"{self.url}/v1/models", headers=self.auth, timeout=5)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def inventory(self) -> dict[str, Any]:
        path = self.home / "state" / "inventory.json"
        try:
            return dict(json.loads(path.read_text())["services"])
        except (OSError, ValueError, KeyError):
            return {}

    def events(self) -> list[dict[str, Any]]:
        path = self.home / "state" / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def pid(self, name: str) -> int | None:
        record = self.inventory().get(name)
        if not record or not record.get("ready_at") or record.get("stop_requested_at"):
            return None
        return int(record["pid"]) if pid_alive(int(record["pid"])) else None

    def spawned(self, name: str, after: float) -> float:
        """When the controller spawned ``name`` after ``after`` (its start event, wall clock)."""
        starts = [
            e["ts"]
            for e in self.events()
            if e["kind"] == "start" and e["target"] == name and e["ts"] >= after
        ]
        return float(min(starts))

    def ask(self, model: str) -> None:
        body = {"model": model, "messages": MSG, "max_tokens": 1}
        r = httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=self.auth, timeout=300)
        if r.status_code != 200:
            raise RuntimeError(f"{model}: {r.status_code} {r.text[:300]}")

    def close(self) -> None:
        if self.controller is not None and self.controller.poll() is None:
            self.controller.send_signal(signal.SIGTERM)
            try:
                self.controller.wait(30)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait()
        self.run("down", check=False)
        for rec in self.inventory().values():
            try:
                if abs(psutil.Process(rec["pid"]).create_time() - rec["create_time"]) < 0.05:
                    os.killpg(rec["pgid"], signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, KeyError):
                pass


@contextmanager
def session(root: Path, pythonpath: str | None = None) -> Iterator[Session]:
    s = Session(root, pythonpath)
    try:
        yield s
    finally:
        s.close()


def tier(name: str, model: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "runtime": "mlx-lm",
        "model": {"path": str(model)},
        "port": free_port(),
        "load": "on-demand",
        **extra,
    }


# -- cold requests and idle unloads -------------------------------------------------------


def cold(root: Path, model: Path, runs: int) -> dict[str, Any]:
    """Each run: the model's own load measured standalone, then a cold request through
    mlxctl, back to back (the machine's load drifts; a pair shares it)."""
    ttft, alone, over, idle_error, spawn = [], [], [], [], []
    with session(root) as s, httpx.Client(timeout=300) as client:
        s.write([tier("cold", model, idleTimeout=f"{IDLE:g}s")], {"budget": "1.5GiB"})
        s.start()
        url = f"{s.url}/v1/chat/completions"
        for _ in range(runs):
            wait_for(lambda: "cold" not in s.inventory(), 60, "the tier to be unloaded")
            load, _ = standalone_once(model, client)
            time.sleep(0.3)
            sent = time.time()
            first, _ = first_token(client, url, "cold", s.key)
            ended = time.monotonic()
            pid: int = wait_for(lambda: s.pid("cold"), 10, "the ready tier")
            spawn.append(s.spawned("cold", sent) - sent)
            ttft.append(first)
            alone.append(load)
            over.append(first - load)
            wait_for(lambda p=pid: not pid_alive(p), 60, "the idle unload", step=0.01)
            idle_error.append(time.monotonic() - ended - IDLE)
    return {
        "cold_first_token_s": summary(ttft),
        "standalone_load_s": summary(alone),
        "cold_over_standalone_load_s": summary(over),
        "request_to_spawn_s": summary(spawn),
        "idle_unload_error_s": summary(idle_error),
        "idle_timeout_s": IDLE,
    }


# -- swaps ----------------------------------------------------------------------------------


def swap(root: Path, model: Path, runs: int) -> dict[str, Any]:
    """Each run: the model's own load and stop measured standalone, then a swap through
    mlxctl (a request to the unloaded tier of two, one fits), back to back."""
    ttft, alone, over, spawn = [], [], [], []
    with session(root) as s, httpx.Client(timeout=300) as client:
        tiers = [tier("a", model, idleTimeout="10m"), tier("b", model, idleTimeout="10m")]
        s.write(tiers, {"budget": "1.5GiB", "minResidency": "0s"})
        s.start()
        s.ask("a")
        url = f"{s.url}/v1/chat/completions"
        names = ["b", "a"] * runs
        for name in names[:runs]:
            other = "a" if name == "b" else "b"
            wait_for(lambda o=other: s.pid(o), 60, "the loaded tier")
            load, stop = standalone_once(model, client)
            time.sleep(0.3)
            sent = time.time()
            first, _ = first_token(client, url, name, s.key)
            spawn.append(s.spawned(name, sent) - sent)
            ttft.append(first)
            alone.append(load + stop)
            over.append(first - load - stop)
        starts = sum(1 for e in s.events() if e["kind"] == "start" and e["target"] in ("a", "b"))
    return {
        "swap_first_token_s": summary(ttft),
        "standalone_stop_plus_load_s": summary(alone),
        "swap_over_stop_plus_load_s": summary(over),
        "request_to_spawn_s": summary(spawn),
        "starts": starts,
    }


# -- the alternating workload ---------------------------------------------------------------


class Alternating(threading.Thread):
    """One client asking the two tiers in turn, back to back, 1-token answers, no retries."""

    def __init__(self, s: Session, start_with: int) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.turn = start_with
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=600, headers=self.s.auth) as client:
            while not self.done.is_set():
                model = "ab"[self.turn % 2]
                self.turn += 1
                body = {"model": model, "messages": MSG, "max_tokens": 1}
                began = time.perf_counter()
                try:
                    r = client.post(f"{self.s.url}/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.perf_counter() - began)


def spread(s: dict[str, Any]) -> str:
    """``median ms (min..max)``."""
    return f"{s['median'] * 1000:.0f} ms ({s['min'] * 1000:.0f}..{s['max'] * 1000:.0f})"


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def alternating(root: Path, model: Path, residency: float, seconds: float) -> dict[str, Any]:
    with session(root) as s:
        tiers = [tier("a", model, idleTimeout="10m"), tier("b", model, idleTimeout="10m")]
        s.write(tiers, {"budget": "1.5GiB", "minResidency": f"{residency:g}s"})
        s.start()
        s.ask("a")
        began = time.time()
        clients = [Alternating(s, i) for i in range(8)]
        for c in clients:
            c.start()
        time.sleep(seconds)
        for c in clients:
            c.done.set()
        for c in clients:
            c.join(600)
        ended = time.time()
        starts = [
            e
            for e in s.events()
            if e["kind"] == "start" and e["target"] in ("a", "b") and began <= e["ts"] <= ended
        ]
    latencies = [x for c in clients for x in c.latencies]
    failures = [f for c in clients for f in c.failures]
    return {
        "min_residency_s": residency,
        "seconds": round(ended - began, 1),
        "swaps": len(starts),
        "requests": len(latencies),
        "failed": len(failures),
        "failures": failures[:5],
        "p50_s": round(percentile(latencies, 0.5), 3),
        "p99_s": round(percentile(latencies, 0.99), 3),
        "max_s": round(max(latencies, default=float("nan")), 3),
    }


# -- the controller's CPU under steady traffic --------------------------------------------


def controller_cpu(root: Path, model: Path, seconds: float) -> dict[str, Any]:
    """One client, back-to-back 1-token requests to a loaded on-demand tier: the CPU the
    controller spends meanwhile (each request's start and end is a demand change)."""
    with session(root) as s:
        s.write([tier("steady", model, idleTimeout="10m")], {"budget": "1.5GiB"})
        s.start()
        s.ask("steady")
        time.sleep(2.0)
        assert s.controller is not None
        proc = psutil.Process(s.controller.pid)
        idle_before = proc.cpu_times()
        time.sleep(seconds)
        idle_after = proc.cpu_times()
        body = {"model": "steady", "messages": MSG, "max_tokens": 1}
        count = 0
        before = proc.cpu_times()
        began = time.perf_counter()
        with httpx.Client(timeout=60, headers=s.auth) as client:
            while time.perf_counter() - began < seconds:
                r = client.post(f"{s.url}/v1/chat/completions", json=body)
                count += r.status_code == 200
        took = time.perf_counter() - began
        after = proc.cpu_times()

    def cpu(a: Any, b: Any) -> float:
        return float((b.user - a.user) + (b.system - a.system))

    return {
        "seconds": round(took, 1),
        "requests": count,
        "controller_cpu_s_per_s_busy": round(cpu(before, after) / took, 3),
        "controller_cpu_s_per_s_idle": round(cpu(idle_before, idle_after) / seconds, 3),
    }


# -- memory through an eviction sequence ---------------------------------------------------


class MemorySampler(threading.Thread):
    """Every ~50 ms: the estimates of the tiers whose processes are alive, and their RSS."""

    def __init__(self, s: Session) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.samples: list[tuple[float, int, int, int]] = []  # (t, estimate, rss, tiers)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            estimate = rss = alive = 0
            for rec in self.s.inventory().values():
                if rec.get("role") != "tier" or not pid_alive(int(rec.get("pid") or 0)):
                    continue
                alive += 1
                estimate += int(rec.get("memory_bytes") or 0)
                try:
                    proc = psutil.Process(int(rec["pid"]))
                    rss += sum(p.memory_info().rss for p in [proc, *proc.children(True)])
                except psutil.Error:
                    pass
            self.samples.append((time.monotonic(), estimate, rss, alive))
            self.done.wait(0.05)


def memory(root: Path, model: Path) -> dict[str, Any]:
    budget = 2.5
    with session(root) as s:
        tiers = [tier(n, model, idleTimeout="10m") for n in "abc"]
        s.write(tiers, {"budget": f"{budget:g}GiB", "minResidency": "0s"})
        s.start()
        sampler = MemorySampler(s)
        sampler.start()
        sequence = "abcabca"
        for name in sequence:
            s.ask(name)
        time.sleep(1.0)
        sampler.done.set()
        sampler.join()
        evictions = [
            e["target"]
            for e in s.events()
            if e["kind"] == "stop" and str(e["cause"]).startswith("evicted for")
        ]
    samples = sampler.samples
    limit = int(budget * GIB)
    return {
        "budget_bytes": limit,
        "sequence": " ".join(sequence),
        "evictions": evictions,
        "samples": len(samples),
        "max_estimate_bytes": max(e for _, e, _, _ in samples),
        "max_rss_bytes": max(r for _, _, r, _ in samples),
        "max_tiers_alive": max(n for _, _, _, n in samples),
        "samples_over_budget": sum(1 for _, e, _, _ in samples if e > limit),
        "samples_rss_over_budget": sum(1 for _, _, r, _ in samples if r > limit),
    }


# -- status with a controller running -----------------------------------------------------


def status(root: Path, model: Path, runs: int, pythonpath: str | None) -> dict[str, Any]:
    with session(root, pythonpath) as s:
        always = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(model)}}
        s.write([{**always, "port": free_port()}], None)
        s.start()
        wait_for(lambda: s.pid("fast"), 120, "the always tier")
        s.run("status", "-o", "json")  # warm the file cache
        samples = []
        for _ in range(runs):
            began = time.perf_counter()
            s.run("status", "-o", "json")
            samples.append(time.perf_counter() - began)
        floor = []
        for _ in range(runs):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=s.env, check=True)
            floor.append(time.perf_counter() - began)
    return {"status_s": summary(samples), "python_floor_s": summary(floor)}


@contextmanager
def checkout(rev: str, root: Path) -> Iterator[Path]:
    where = root / f"src-{rev}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
        check=True,
        capture_output=True,
    )
    try:
        yield where / "src"
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
            check=False,
            capture_output=True,
        )


# -- the machine -----------------------------------------------------------------------


def versions() -> dict[str, Any]:
    from importlib.metadata import version

    def git(*args: str) -> str:
        got = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return got.stdout.strip()

    return {
        "mlxctl_commit": git("rev-parse", "--short", "HEAD"),
        "mlxctl_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "mlx": version("mlx"),
        "mlx_lm": version("mlx-lm"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "memory_bytes": psutil.virtual_memory().total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--alt-seconds", type=float, default=40.0)
    parser.add_argument("--residencies", default="0,5,15")
    parser.add_argument("--before", default="ff93b20", help="a commit for the status 'before'")
    parser.add_argument("--only", default=None, help="cold,swap,alt,cpu,memory,status")
    parser.add_argument("--json", type=Path, default=RESULTS)
    opts = parser.parse_args()
    only = set(opts.only.split(",")) if opts.only else None

    def wanted(name: str) -> bool:
        return only is None or name in only

    out: dict[str, Any] = {"versions": versions(), "load_before": os.getloadavg()}
    rows: list[tuple[str, str, str]] = []

    def loaded(section: dict[str, Any]) -> dict[str, Any]:
        """The section, with the machine's load average when it ended."""
        section["load_after"] = [round(x, 2) for x in os.getloadavg()]
        return section

    def row(name: str, value: str, goal: str = "") -> None:
        rows.append((name, value, goal))
        print(f"  {name}: {value}", flush=True)

    from mlxctl.testing.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="mlxctl-on-demand-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "models" / "tiny")
        alone = loaded(standalone(model, opts.runs))
        out["standalone"] = alone
        load = alone["load_to_first_token_s"]["median"]
        stop = alone["stop_s"]["median"]
        row("standalone load, spawn to first token", f"{load * 1000:.0f} ms")
        row("standalone stop, SIGTERM to exit", f"{stop * 1000:.0f} ms")
        if wanted("cold"):
            c = out["cold"] = loaded(cold(root, model, opts.runs))
            row("cold request, send to first token", f"{c['cold_first_token_s']['median']:.3f} s")
            over = c["cold_over_standalone_load_s"]
            row(
                "cold request minus standalone load",
                spread(over),
                "<= 150 ms",
            )
            row(
                "cold request, send to the tier's spawn (mlxctl's part)",
                spread(c["request_to_spawn_s"]),
            )
            idle = c["idle_unload_error_s"]
            row(
                f"idle unload: exit after last byte minus idleTimeout ({IDLE:g} s)",
                spread(idle),
            )
        if wanted("swap"):
            w = out["swap"] = loaded(swap(root, model, opts.runs))
            row("swap A -> B, send to first token", f"{w['swap_first_token_s']['median']:.3f} s")
            over = w["swap_over_stop_plus_load_s"]
            row(
                "swap minus (A's stop + B's load)",
                spread(over),
                "<= 200 ms",
            )
            row("swap, send to B's spawn (A drained and stopped)", spread(w["request_to_spawn_s"]))
        if wanted("alt"):
            out["alternating"] = []
            for residency in (float(r) for r in opts.residencies.split(",")):
                a = loaded(alternating(root, model, residency, opts.alt_seconds))
                out["alternating"].append(a)
                row(
                    f"alternating, 8 clients, minResidency {residency:g}s",
                    f"{a['swaps']} swaps / {a['seconds']:.0f} s, {a['requests']} answered, "
                    f"p50 {a['p50_s']:.2f} s, p99 {a['p99_s']:.2f} s, {a['failed']} failed",
                    "0 failed",
                )
        if wanted("cpu"):
            u = out["controller_cpu"] = loaded(controller_cpu(root, model, 10.0))
            row(
                "controller CPU, 1 client back to back (1-token) vs idle",
                f"{u['controller_cpu_s_per_s_busy'] * 100:.0f}% of a core "
                f"({u['requests']} requests / {u['seconds']:.0f} s) vs "
                f"{u['controller_cpu_s_per_s_idle'] * 100:.0f}% idle",
            )
        if wanted("memory"):
            m = out["memory"] = loaded(memory(root, model))
            row(
                "memory through a b c a b c a (budget 2.5 GiB, 2 fit)",
                f"max estimate {m['max_estimate_bytes'] / GIB:.3f} GiB, max RSS "
                f"{m['max_rss_bytes'] / GIB:.3f} GiB, {m['samples_over_budget']}/"
                f"{m['samples']} samples over, evictions {','.join(m['evictions'])}",
                "never over",
            )
        if wanted("status"):
            now = out["status"] = loaded(status(root, model, max(opts.runs, 10), None))
            row(
                "mlxctl status -o json, controller running",
                f"{now['status_s']['median'] * 1000:.0f} ms "
                f"(python floor {now['python_floor_s']['median'] * 1000:.0f} ms)",
                "<= 150 ms",
            )
            if opts.before:
                with checkout(opts.before, root) as src:
                    before = loaded(status(root, model, max(opts.runs, 10), str(src)))
                out["status_before"] = {"commit": opts.before, **before}
                row(
                    f"  the same at {opts.before} (before)",
                    f"{before['status_s']['median'] * 1000:.0f} ms",
                )
    out["load_after"] = os.getloadavg()
    print()
    print(f"{'measure':<62} {'value':<70} goal")
    for name, value, goal in rows:
        print(f"{name:<62} {value:<70} {goal}")
    print(f"load average before {out['load_before']}, after {out['load_after']}")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        if only is not None and opts.json.exists():
            # A partial run replaces its sections of the last full run's results.
            previous = json.loads(opts.json.read_text()).get("on_demand", {})
            out = {**previous, **out, "partial_rerun": sorted(only)}
        write_results(opts.json, "on_demand", out)


if __name__ == "__main__":
    main()
