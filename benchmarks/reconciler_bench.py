"""Measure the reconciler against real servers: how fast mlxctl notices, reports and answers.

Run: ``uv run python benchmarks/reconciler_bench.py [--runs 5] [--json out.json]``

Everything runs on 127.0.0.1 with a tiny random Llama the script builds itself, in a
throw-away MLXCTL_HOME; every process started is stopped by PID at the end. Prints a
table of medians (with min and max) and writes the raw samples as JSON on request.

Measured:
- ``status``: wall time of ``mlxctl status -o json`` with one ready tier (CLI start
  included), against ``python -c pass`` as the interpreter's floor.
- ``diff``: ``mlxctl diff`` on a converged stack (exit 0), whole CLI process.
- ``noop``: ``mlxctl reconcile --once`` on a converged stack (a pass, and the first
  liveness answer of each running server).
- ``controller pass``: one resync of a running controller on that stack, in-process.
- ``crash noticed`` / ``crash healed``: ``kill -9`` of a tier under the controller to
  its ``exit noticed`` event, and to the restarted tier being ready again.
- ``hung server replaced``: a tier frozen with SIGSTOP under the controller, to its
  replacement being ready (3 failed liveness probes, one per resync; ``--hung-intervals``
  picks the resync periods compared).
- ``failed start reported``: a server that dies while loading, to the non-zero exit of
  ``reconcile --once`` (its startup timeout is 600 s).
- ``never deaf``: with a controller running, a stack file saved to the changed tier's
  old server being signalled (its ``restart`` event), and a ``kill -9`` of a ready
  tier to its replacement being spawned (its ``start`` event): once with nothing else
  going on, once while another tier (a real vllm-mlx server, ~15 s to load here) is
  still starting. Before passes were non-blocking the second column was 11.8 s and
  29.3 s.
- ``pass duration``: one pass (load, resolve, observe, plan, apply) in-process, with
  the controller's background health monitor, while a vllm-mlx tier loads and the demo
  model is being converted by a prepare job in the same process: p50 and max.
- ``health lies``: for mlx_lm.server serving the demo model (SmolLM2-135M), the time
  between ``/health`` first answering 200 and a completion first succeeding: a
  controller that trusts ``/health`` calls the server ready this much too early (why
  mlxctl probes with a completion). It grows with the model's size.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from _shared import free_port, write_results

MLXCTL = [sys.executable, "-m", "mlxctl"]


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.stacks = root / "stacks"
        self.stacks.mkdir(parents=True)
        self.env = {**os.environ, "MLXCTL_HOME": str(self.home)}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure the CLI as users run it
        self.started: list[subprocess.Popen[bytes]] = []

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*MLXCTL, *args], env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"mlxctl {' '.join(args)} -> {result.returncode}: {result.stderr}")
        return result

    def inventory(self) -> dict[str, Any]:
        path = self.home / "state" / "inventory.json"
        return dict(json.loads(path.read_text())["services"]) if path.exists() else {}

    def events(self) -> list[dict[str, Any]]:
        path = self.home / "state" / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def write_stack(self, name: str, tiers: list[dict[str, Any]]) -> None:
        doc = {
            "apiVersion": "mlxctl/v1",
            "kind": "Stack",
            "metadata": {"name": "bench"},
            "spec": {"gateway": {"enabled": False}, "tiers": tiers},
        }
        (self.stacks / name).write_text(json.dumps(doc))

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        self.run("down", check=False)
        for rec in self.inventory().values():
            try:
                if abs(psutil.Process(rec["pid"]).create_time() - rec["create_time"]) < 0.05:
                    os.killpg(rec["pgid"], signal.SIGKILL)
            except (psutil.Error, ProcessLookupError):
                pass


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wait_for(predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError("condition not met")


def bench_status_and_noop(b: Bench, model: Path, runs: int) -> dict[str, list[float]]:
    b.write_stack(
        "a.yaml",
        [{"name": "fast", "runtime": "mlx-lm", "model": {"path": str(model)}, "port": free_port()}],
    )
    b.run("reconcile", "--once", str(b.stacks))
    floor = [
        timed(lambda: subprocess.run([sys.executable, "-c", "pass"], env=b.env, check=True))
        for _ in range(runs)
    ]
    status = [timed(lambda: b.run("status", str(b.stacks), "-o", "json")) for _ in range(runs)]
    diff = [timed(lambda: b.run("diff", str(b.stacks), check=False)) for _ in range(runs)]
    noop = [timed(lambda: b.run("reconcile", "--once", str(b.stacks))) for _ in range(runs)]
    passes = controller_pass(b, 30)
    b.run("down")
    return {
        "python -c pass (floor)": floor,
        "status -o json": status,
        "diff (no changes)": diff,
        "reconcile --once (no-op)": noop,
        "controller pass, no-op (in-process)": passes,
    }


def controller_pass(b: Bench, runs: int) -> list[float]:
    """What each resync costs a running controller: load, resolve, observe, plan, on a
    converged stack, in this (warm) process, health read from a background monitor."""
    from mlxctl.paths import default_paths
    from mlxctl.plan.actions import PlanOptions
    from mlxctl.reconcile.context import real_context
    from mlxctl.reconcile.monitor import HealthMonitor
    from mlxctl.reconcile.passes import load_stack, resolve, run_pass

    ctx = real_context(default_paths({"MLXCTL_HOME": str(b.home)}))
    ctx.health = HealthMonitor(ctx.prober, lambda _reason: None)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        result = run_pass(ctx, resolve(ctx, load_stack([b.stacks])), options=PlanOptions())
        samples.append(time.perf_counter() - started)
        if result.plan.has_changes:
            raise RuntimeError(f"not converged: {result.plan.actions}")
    return samples


def ready_pid(b: Bench, other: int | None = None) -> int | None:
    """The ready tier's PID (not ``other``), from the inventory."""
    rec = b.inventory().get("fast")
    if rec and rec.get("ready_at") and rec["pid"] != other:
        return int(rec["pid"])
    return None


def start_controller(b: Bench, model: Path, log: Path, *args: str) -> int:
    """A one-tier stack and a fresh controller on it; returns the tier's PID once ready."""
    b.write_stack(
        "a.yaml",
        [{"name": "fast", "runtime": "mlx-lm", "model": {"path": str(model)}, "port": free_port()}],
    )
    with log.open("wb") as handle:
        controller = subprocess.Popen(
            [*MLXCTL, "reconcile", str(b.stacks), *args], env=b.env, stdout=handle, stderr=handle
        )
    b.started.append(controller)
    return int(wait_for(lambda: ready_pid(b), 120))


def stop_controller(b: Bench) -> None:
    controller = b.started.pop()
    controller.send_signal(signal.SIGTERM)
    controller.wait(30)
    b.run("down")


def bench_crash(b: Bench, model: Path, runs: int) -> dict[str, list[float]]:
    """Each run: a fresh controller and tier (so every crash is a first crash, healed at
    once), then ``kill -9`` and time to the event and to ready again."""
    noticed, healed = [], []
    for run in range(runs):
        pid = start_controller(b, model, b.root / f"controller-{run}.log")
        time.sleep(0.5)
        seen = len(b.events())
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        event = wait_for(
            lambda seen=seen: next((e for e in b.events()[seen:] if e["kind"] == "exit"), None),
            30,
        )
        noticed.append(event["ts"] - killed_at)
        wait_for(lambda pid=pid: ready_pid(b, pid), 120)
        healed.append(b.inventory()["fast"]["ready_at"] - killed_at)
        stop_controller(b)
    return {"crash noticed (kill -9 -> event)": noticed, "crash healed (kill -9 -> ready)": healed}


def bench_hung(b: Bench, model: Path, runs: int, interval: float) -> dict[str, list[float]]:
    """Each run: a fresh controller (resync every ``interval`` s) and tier; the server is
    frozen with SIGSTOP (alive, listening, answering nothing) and timed to its
    replacement being ready. Liveness is probed at each resync; 3 failures replace it."""
    replaced = []
    for run in range(runs):
        log = b.root / f"hung-{interval:g}-{run}.log"
        pid = start_controller(b, model, log, "--interval", f"{interval:g}")
        frozen_at = time.time()
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda pid=pid: ready_pid(b, pid), 20 * interval + 120)
        replaced.append(b.inventory()["fast"]["ready_at"] - frozen_at)
        stop_controller(b)
    return {f"hung server replaced (SIGSTOP -> ready, --interval {interval:g})": replaced}


def tier_specs(model: Path, ports: list[int], *, tokens: int, slow: bool) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = [
        {
            "name": "fast",
            "runtime": "mlx-lm",
            "model": {"path": str(model)},
            "port": ports[0],
            "args": {"max-tokens": tokens},
        }
    ]
    if slow:
        specs.append(
            {"name": "slow", "runtime": "vllm-mlx", "model": {"path": str(model)}, "port": ports[1]}
        )
    return specs


def event_after(b: Bench, target: str, kind: str, result: str, after: float) -> float | None:
    for event in b.events():
        same = (event["target"], event["kind"], event["result"]) == (target, kind, result)
        if same and float(event["ts"]) >= after:
            return float(event["ts"])
    return None


def restart_began(b: Bench, after: float) -> float | None:
    """When the restart of ``fast`` began: its ``restart`` event (``ok`` when the stop is
    begun; the blocking releases before 0.2 recorded ``stopped`` once it had waited)."""
    found = [event_after(b, "fast", "restart", result, after) for result in ("ok", "stopped")]
    times = [t for t in found if t is not None]
    return min(times) if times else None


def slow_starting(b: Bench) -> bool:
    rec = b.inventory().get("slow")
    return bool(rec and rec["pid"] > 0 and rec.get("ready_at") is None)


def bench_never_deaf(b: Bench, model: Path, runs: int) -> dict[str, list[float]]:
    """Each run: a fresh controller and fast tier; save and kill with nothing else going
    on, then again while a vllm-mlx tier is still starting."""
    out: dict[str, list[float]] = {
        "save -> restart begins (idle)": [],
        "save -> restart begins (another tier starting)": [],
        "kill -9 -> replacement started (idle)": [],
        "kill -9 -> replacement started (another tier starting)": [],
    }
    for run in range(runs):
        ports = [free_port(), free_port()]
        tokens = 64
        b.write_stack("a.yaml", tier_specs(model, ports, tokens=tokens, slow=False))
        log = (b.root / f"deaf-{run}.log").open("wb")
        controller = subprocess.Popen(
            [*MLXCTL, "reconcile", str(b.stacks), "--interval", "3600"],
            env=b.env,
            stdout=log,
            stderr=log,
        )
        b.started.append(controller)
        for column, slow in (("idle", False), ("another tier starting", True)):
            pid = int(wait_for(lambda: ready_pid(b), 120))
            if slow:
                b.write_stack("a.yaml", tier_specs(model, ports, tokens=tokens, slow=True))
                wait_for(lambda: slow_starting(b), 60)
            tokens += 1
            saved = time.time()
            b.write_stack("a.yaml", tier_specs(model, ports, tokens=tokens, slow=slow))
            began = wait_for(lambda s=saved: restart_began(b, s), 60)
            pid = int(wait_for(lambda p=pid: ready_pid(b, p), 120))
            killed = time.time()
            os.kill(pid, signal.SIGKILL)
            spawned = wait_for(lambda k=killed: event_after(b, "fast", "start", "started", k), 60)
            if slow and not slow_starting(b):
                # Expected of a blocking controller (it waited for that tier first).
                print(f"note: run {run}: the vllm-mlx tier was ready before the measures ended")
            out[f"save -> restart begins ({column})"].append(began - saved)
            out[f"kill -9 -> replacement started ({column})"].append(spawned - killed)
        stop_controller(b)
    return out


def bench_pass_while_busy(b: Bench, model: Path) -> dict[str, list[float]]:
    """Pass durations while a vllm-mlx tier loads and the demo model is converted."""
    from mlxctl.paths import default_paths
    from mlxctl.plan.actions import PlanOptions
    from mlxctl.reconcile.context import real_context
    from mlxctl.reconcile.monitor import HealthMonitor
    from mlxctl.reconcile.passes import load_stack, resolve, run_pass

    tiers = tier_specs(model, [free_port(), free_port()], tokens=64, slow=True)[1:]
    tiers.append({"name": "demo", "runtime": "mlx-lm", "model": "smollm2-135m-instruct",
                  "port": free_port()})  # fmt: skip
    b.write_stack("a.yaml", tiers)
    ctx = real_context(default_paths({"MLXCTL_HOME": str(b.home)}))
    ctx.health = HealthMonitor(ctx.prober, lambda _reason: None)
    busy: list[float] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        started = time.perf_counter()
        result = run_pass(ctx, resolve(ctx, load_stack([b.stacks])), options=PlanOptions())
        took = time.perf_counter() - started
        waits = {a.reason for a in result.plan.actions if a.kind == "wait"}
        if waits & {"starting", "preparing"}:
            busy.append(took)
        elif result.converged:
            break
        time.sleep(0.05)
    return {"controller pass while a tier loads and a model prepares": busy}


def bench_failed_start(b: Bench, runs: int) -> dict[str, list[float]]:
    broken = b.root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    samples = []
    for _ in range(runs):
        b.write_stack(
            "a.yaml",
            [
                {
                    "name": "broken",
                    "runtime": "mlx-lm",
                    "model": {"path": str(broken)},
                    "port": free_port(),
                    "startupTimeout": 600,
                }
            ],
        )
        samples.append(timed(lambda: b.run("reconcile", "--once", str(b.stacks), check=False)))
        b.run("down")
    return {"failed start reported (timeout 600 s)": samples}


def bench_health_lies(model: Path, runs: int) -> dict[str, list[float]]:
    gaps = []
    for _ in range(runs):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            health_at = wait_for(
                lambda port=port: _ok(port, "GET", "/health") and time.monotonic(), 120
            )
            ready_at = wait_for(
                lambda port=port: _ok(port, "POST", "/v1/chat/completions") and time.monotonic(),
                120,
            )
            gaps.append(ready_at - health_at)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"mlx-lm /health 200 -> first completion (demo model)": gaps}


def _ok(port: int, method: str, path: str) -> bool:
    body = (
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        if method == "POST"
        else None
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        return conn.getresponse().status == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    parser.add_argument(
        "--hung-intervals",
        default="10",
        help="controller --interval values for the hung-server measure, comma-separated",
    )
    parser.add_argument(
        "--only",
        help="comma-separated measures to run: status,crash,deaf,busy,failed,hung,lies",
    )
    opts = parser.parse_args()
    only = set(opts.only.split(",")) if opts.only else None
    from mlxctl.testing.tiny_model import build_tiny_model

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "tiny")
        for name, fn in (
            ("status", lambda b: bench_status_and_noop(b, model, opts.runs)),
            ("crash", lambda b: bench_crash(b, model, opts.runs)),
            ("deaf", lambda b: bench_never_deaf(b, model, min(opts.runs, 3))),
            ("busy", lambda b: bench_pass_while_busy(b, model)),
            ("failed", lambda b: bench_failed_start(b, min(opts.runs, 3))),
            *(
                (f"hung-{i}", lambda b, i=float(i): bench_hung(b, model, min(opts.runs, 3), i))
                for i in opts.hung_intervals.split(",")
            ),
        ):
            if only is not None and name.split("-")[0] not in only:
                continue
            bench = Bench(root / name)
            try:
                results.update(fn(bench))
            finally:
                bench.cleanup()
        if only is None or "lies" in only:
            from mlxctl.sources.demo import ensure_demo_model

            demo = ensure_demo_model(root / "models")
            results.update(bench_health_lies(demo, min(opts.runs, 3)))
    print(f"{'measure':<62} {'n':>3} {'median':>9} {'min':>9} {'max':>9}")
    for name, samples in results.items():
        print(
            f"{name:<62} {len(samples):>3} {statistics.median(samples):>8.4f}s "
            f"{min(samples):>8.4f}s {max(samples):>8.4f}s"
        )
    if opts.json:
        write_results(opts.json, "samples", results)


if __name__ == "__main__":
    main()
