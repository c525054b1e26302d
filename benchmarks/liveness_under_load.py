"""Do the servers answer their liveness probe while they generate? (Why a short resync is safe.)

Run: ``uv run python benchmarks/liveness_under_load.py [--max-tokens 1500] [--json out.json]``

For each runtime (mlx_lm.server, vllm-mlx), serves the offline demo model on 127.0.0.1,
starts one long generation, and meanwhile sends ``GET /health`` once a second with
the controller's 5 s probe timeout. A probe that failed, or took long, during a
generation would make the controller replace a busy server as if it were hung.
Prints each probe's latency (median and max) and the failures; every server started
is stopped by its process group.
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
import threading
import time
from pathlib import Path
from typing import Any

from _shared import free_port, write_results

PROBE_TIMEOUT = 5.0  # mlxctl.observe.gather.PROBE_TIMEOUT


def request(
    port: int, method: str, path: str, body: dict[str, Any] | None, timeout: float
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body) if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def server_argv(runtime: str, model: Path, port: int) -> tuple[list[str], str]:
    python = Path(sys.executable)
    if runtime == "mlx-lm":
        argv = [str(python), "-m", "mlx_lm", "server", "--model", str(model)]
        return [*argv, "--port", str(port), "--max-tokens", "8192"], "default_model"
    argv = [str(python.parent / "vllm-mlx"), "serve", str(model), "--port", str(port)]
    return [*argv, "--served-model-name", "demo", "--max-tokens", "8192"], "demo"


def measure(runtime: str, model: Path, max_tokens: int, log: Path) -> dict[str, Any]:
    port = free_port()
    argv, name = server_argv(runtime, model, port)
    with log.open("w") as handle:
        proc = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if request(port, "POST", "/v1/chat/completions", chat, 30)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{runtime} never became ready; see {log}")
        long = {
            "model": name,
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
            "max_tokens": max_tokens,
            "temperature": 1.0,
        }
        done: dict[str, Any] = {}

        def generate() -> None:
            started = time.monotonic()
            _, body = request(port, "POST", "/v1/chat/completions", long, 1200)
            done["seconds"] = time.monotonic() - started
            done["tokens"] = json.loads(body)["usage"]["completion_tokens"]

        worker = threading.Thread(target=generate)
        worker.start()
        time.sleep(1)
        latencies: list[float] = []
        failures: list[str] = []
        while worker.is_alive():
            started = time.monotonic()
            try:
                request(port, "GET", "/health", None, PROBE_TIMEOUT)
                latencies.append(time.monotonic() - started)
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{type(exc).__name__} after {time.monotonic() - started:.1f}s")
            time.sleep(1)
        worker.join()
        return {
            "generation_s": round(done["seconds"], 1),
            "tokens": done["tokens"],
            "probes": len(latencies) + len(failures),
            "failed": failures,
            "latency_median_s": statistics.median(latencies) if latencies else None,
            "latency_max_s": max(latencies) if latencies else None,
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=1500)
    parser.add_argument("--json", type=Path, help="write the results here")
    opts = parser.parse_args()
    from mlxctl.sources.demo import ensure_demo_model

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = ensure_demo_model(Path(tmp) / "models")
        for runtime in ("mlx-lm", "vllm-mlx"):
            results[runtime] = measure(
                runtime, model, opts.max_tokens, Path(tmp) / f"{runtime}.log"
            )
    print(
        f"{'runtime':<10} {'generation':>11} {'tokens':>7} {'probes':>7} {'failed':>7} "
        f"{'median':>9} {'max':>9}"
    )
    for runtime, r in results.items():
        print(
            f"{runtime:<10} {r['generation_s']:>10.1f}s {r['tokens']:>7} {r['probes']:>7} "
            f"{len(r['failed']):>7} {r['latency_median_s'] * 1000:>7.1f}ms "
            f"{r['latency_max_s'] * 1000:>7.1f}ms"
        )
    if opts.json:
        write_results(opts.json, "results", results)


if __name__ == "__main__":
    main()
