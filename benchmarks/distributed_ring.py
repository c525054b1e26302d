"""What MLX's ring backend does when one rank of a distributed ``mlx_lm.server`` dies.

Two ranks of ``mlx_lm.server`` on 127.0.0.1, started WITHOUT ``mlx.launch``: each rank
is its own process with ``MLX_RANK`` and ``MLX_HOSTFILE`` (a JSON list, one list of
``ip:port`` per rank, as ``mlx.launch --backend ring`` writes it), the tiny test model
(4 attention heads, 2 KV heads: tensor parallel over 2 ranks). Cases, each run
``--runs`` times on a fresh pair:

- ``serve``: spawn to rank 0's ``/health`` 200 and a first chat completion;
- ``kill-1-idle`` / ``kill-1-gen``: SIGKILL rank 1 while idle / while rank 0 streams a
  long generation; what rank 0 does (exits? ``/health``? the next request?), how fast;
- ``kill-0-idle`` / ``kill-0-gen``: SIGKILL rank 0; whether and when rank 1 exits, its
  exit code and last error line;
- ``stop-1`` / ``stop-0``: SIGSTOP a rank (a hung rank: alive, silent); what the other
  rank does within ``--hang-window`` seconds;
- ``alone-0`` / ``alone-1``: start one rank only (its peer never comes): does it give up,
  when, with what (``--alone-window`` seconds).

``--only`` runs some cases and keeps the others' results already in the JSON file.

Prints a table and writes JSON (default ``results/distributed-ring-linux-2cpu.json``).

    PYTHONPATH=src python benchmarks/distributed_ring.py [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import mlx.core as mx
from _shared import free_port, write_results

CHAT = "/v1/chat/completions"
ONE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
LONG = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000, "stream": True}


@dataclass
class Pair:
    """Two ranks of one ``mlx_lm.server`` group and where they log."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    port: int
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def start_pair(model: Path, work: Path, tag: str) -> Pair:
    """Each rank its own process: ``MLX_RANK``, ``MLX_HOSTFILE``; no ``mlx.launch``."""
    ring = free_port()
    hostfile = work / f"{tag}-hostfile.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{ring}"], [f"127.0.0.1:{ring + 1}"]]))
    port = free_port()
    procs, logs = [], []
    for rank in (0, 1):
        log = work / f"{tag}-rank{rank}.log"
        env = {**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
        argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model)]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        logs.append(log)
    return Pair(procs, logs, port)


def health(url: str, timeout: float = 1.0) -> int | str:
    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code
    except httpx.TimeoutException:
        return "timeout"
    except httpx.HTTPError:
        return "refused"


def wait_serving(pair: Pair, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in pair.procs):
            raise SystemExit(f"a rank exited while starting: {pair.logs}")
        if health(pair.url) == 200:
            r = httpx.post(f"{pair.url}{CHAT}", json=ONE, timeout=60)
            if r.status_code == 200:
                return time.monotonic() - pair.started
        time.sleep(0.05)
    raise SystemExit(f"the pair did not serve within {timeout}s: {pair.logs}")


def last_error(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errs = [ln for ln in lines if "Error" in ln or "[ring]" in ln]
    return (errs or lines or [""])[-1][:160]


class Stream(threading.Thread):
    """A long streaming generation on rank 0: counts chunks, records how it ends."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.chunks = 0
        self.first = threading.Event()
        self.ended: float | None = None
        self.how = ""

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}{CHAT}", json=LONG, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        self.chunks += 1
                        if self.chunks >= 5:
                            self.first.set()
                        if "error" in line:
                            self.how = f"error chunk: {line[:120]}"
            self.how = self.how or f"stream closed cleanly (HTTP {r.status_code})"
        except httpx.ReadTimeout:
            self.how = "read timeout (30 s): the stream hung"
        except httpx.HTTPError as exc:
            self.how = f"{type(exc).__name__}: {exc}"[:160]
        self.ended = time.monotonic()
        self.first.set()


def observe_survivor_0(pair: Pair, t0: float, window: float) -> dict[str, Any]:
    """Rank 1 died or hangs: poll rank 0's process and ``/health`` for ``window`` s."""
    first_503: float | None = None
    timeouts = 0
    codes: list[Any] = []
    exited: float | None = None
    while time.monotonic() - t0 < window:
        if pair.procs[0].poll() is not None:
            exited = time.monotonic() - t0
            break
        code = health(pair.url)
        codes.append(code)
        if code == "timeout":
            timeouts += 1
        if code == 503 and first_503 is None:
            first_503 = time.monotonic() - t0
            break
        time.sleep(0.05)
    out: dict[str, Any] = {
        "rank0_exit_s": None if exited is None else round(exited, 3),
        "rank0_exit_code": pair.procs[0].returncode,
        "health_503_after_s": None if first_503 is None else round(first_503, 3),
        "health_codes_seen": sorted({str(c) for c in codes}),
        "health_timeouts": timeouts,
    }
    if exited is None:
        start = time.monotonic()
        try:
            r = httpx.post(f"{pair.url}{CHAT}", json=ONE, timeout=10)
            out["next_request"] = f"HTTP {r.status_code} {r.text[:80]}"
        except httpx.TimeoutException:
            out["next_request"] = "timeout (10 s)"
        except httpx.HTTPError as exc:
            out["next_request"] = type(exc).__name__
        out["next_request_s"] = round(time.monotonic() - start, 3)
        out["rank0_alive_after"] = pair.procs[0].poll() is None
    out["rank0_last_error"] = last_error(pair.logs[0])
    return out


def observe_survivor_1(pair: Pair, t0: float, window: float) -> dict[str, Any]:
    """Rank 0 died or hangs: does rank 1 exit, how fast, with what?"""
    try:
        code: int | None = pair.procs[1].wait(window)
        after: float | None = round(time.monotonic() - t0, 3)
    except subprocess.TimeoutExpired:
        code, after = None, None
    return {
        "rank1_exit_s": after,
        "rank1_exit_code": code,
        "rank1_last_error": last_error(pair.logs[1]),
    }


def alone(rank: int, model: Path, work: Path, run: int, window: float) -> dict[str, Any]:
    """One rank started, its peer never: does it give up, when, how?"""
    pair = start_pair(model, work, f"alone-{rank}-{run}")
    other = pair.procs[1 - rank]
    os.kill(other.pid, signal.SIGKILL)  # killed at once: it never joins the ring
    other.wait()
    try:
        code: int | None = pair.procs[rank].wait(window)
        after: float | None = round(time.monotonic() - pair.started, 3)
    except subprocess.TimeoutExpired:
        code, after = None, None
    pair.stop()
    return {
        "exit_s": after,
        "exit_code": code,
        "last_error": last_error(pair.logs[rank]),
    }


def one_case(case: str, model: Path, work: Path, run: int, window: float) -> dict[str, Any]:
    if case.startswith("alone"):
        return alone(int(case[-1]), model, work, run, window)
    pair = start_pair(model, work, f"{case}-{run}")
    try:
        serve_s = wait_serving(pair)
        if case == "serve":
            return {"serve_s": round(serve_s, 3)}
        victim = int(case.split("-")[1])
        stream = None
        if case.endswith("-gen"):
            stream = Stream(pair.url)
            stream.start()
            stream.first.wait(30)
        sig = signal.SIGSTOP if case.startswith("stop") else signal.SIGKILL
        t0 = time.monotonic()
        os.kill(pair.procs[victim].pid, sig)
        if victim == 1:
            out = observe_survivor_0(pair, t0, window)
        else:
            out = observe_survivor_1(pair, t0, window)
        if stream is not None:
            stream.join(35)
            out["stream_chunks"] = stream.chunks
            out["stream_end"] = stream.how
            out["stream_end_s"] = None if stream.ended is None else round(stream.ended - t0, 3)
        return out
    finally:
        pair.stop()


CASES = (
    "serve",
    "kill-1-idle",
    "kill-1-gen",
    "kill-0-idle",
    "kill-0-gen",
    "stop-1",
    "stop-0",
    "alone-0",
    "alone-1",
)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each number over the runs; the distinct values of everything else."""
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r.get(key) for r in rows]
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if nums and len(nums) == len(values):
            out[key] = {
                "median": round(statistics.median(nums), 3),
                "min": min(nums),
                "max": max(nums),
            }
        else:
            distinct = []
            for v in values:
                if v not in distinct:
                    distinct.append(v)
            out[key] = distinct[0] if len(distinct) == 1 else distinct
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hang-window", type=float, default=10.0)
    parser.add_argument("--alone-window", type=float, default=60.0)
    parser.add_argument("--only", default=",".join(CASES))
    default = Path(__file__).parent / "results" / "distributed-ring-linux-2cpu.json"
    parser.add_argument("--json", type=Path, default=default)
    args = parser.parse_args()

    from mlxctl.testing.tiny_model import build_tiny_model

    results: dict[str, Any] = {}
    if args.only != ",".join(CASES) and args.json.exists():
        results = json.loads(args.json.read_text()).get("distributed_ring", {})
    results["mlx"] = mx.__version__
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model")
        for case in args.only.split(","):
            window = {"stop": args.hang_window, "alone": args.alone_window}.get(
                case.split("-")[0], 15.0
            )
            rows = [one_case(case, model, work, run, window) for run in range(args.runs)]
            load = round(os.getloadavg()[0], 2)
            results[case] = {"runs": rows, "summary": summarize(rows), "load_after": load}
            print(f"\n== {case} ({args.runs} runs, load {load:.1f})")
            for key, value in results[case]["summary"].items():
                print(f"  {key:22} {value}")
    write_results(args.json, "distributed_ring", results)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
