"""How long clients see errors while the gateway process itself restarts.

A client sends 1-token chat completions back to back through the gateway (one
keep-alive connection, no client retries) while the gateway is replaced, two ways:

- ``stop-then-start``: SIGTERM the old gateway, then start the new one (what a plain
  restart does);
- ``overlap``: start the new gateway on the same port while the old one serves (both
  bind with ``SO_REUSEPORT``), wait until it serves, then SIGTERM the old one (it
  finishes the requests it holds).

Prints, per way, the failed requests and the error window (first to last failure).

    uv run python benchmarks/gateway_restart_window.py [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _shared import BackToBack, free_port, write_results

KEY = "sk-restart-bench"
ENV = {**os.environ, "LITELLM_MASTER_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
BODY = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            argv, env=ENV, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes], wait: bool = True) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        if wait:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_log(path: Path, text: str, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while path.read_text().count(text) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{path}: no {text!r} #{count} after {timeout}s")
        time.sleep(0.02)


def one_run(way: str, config: Path, port: int, work: Path) -> dict[str, Any]:
    log = work / f"{way}.log"
    log.write_text("")
    argv = [sys.executable, "-m", "mlxctl.gateway", "--config", str(config), "--port", str(port)]
    old = spawn(argv, log)
    wait_log(log, "litellm.Router ", 1)  # ready, or not needed: start-up done
    client = BackToBack(f"http://127.0.0.1:{port}", KEY, BODY)
    client.start()
    time.sleep(1.0)
    if way == "stop-then-start":
        stop(old)
        new = spawn(argv, log)
        wait_log(log, "serving", 2)
    else:
        new = spawn(argv, log)
        wait_log(log, "serving", 2)
        stop(old)
    time.sleep(1.5)
    client.done.set()
    client.join(30)
    stop(new)
    return client.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway restart error window")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from mlxctl.testing.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="gateway-restart-"))
    model = build_tiny_model(work / "tiny")
    backend_port, port = free_port(), free_port()
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model)]
    backend = spawn([*argv, "--port", str(backend_port)], work / "mlx.log")
    config = work / "routes.json"
    config.write_text(
        json.dumps(
            {"routes": [{"name": "fast", "port": backend_port, "served_model": "default_model"}]}
        )
    )
    results: dict[str, list[dict[str, Any]]] = {"stop-then-start": [], "overlap": []}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                body = {**BODY, "model": "default_model"}
                url = f"http://127.0.0.1:{backend_port}/v1/chat/completions"
                if httpx.post(url, json=body, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for _ in range(args.runs):
            for way in results:
                results[way].append(one_run(way, config, port, work))
                print(way, results[way][-1], flush=True)
    finally:
        stop(backend)
    print(f"{'way':<18}{'failed requests':>18}{'error window (s)':>18}")
    for way, runs in results.items():
        failed = "/".join(str(r["failed"]) for r in runs)
        window = "/".join(str(r["window_s"]) for r in runs)
        print(f"{way:<18}{failed:>18}{window:>18}")
    if args.json:
        write_results(args.json, "restart_window", results)


if __name__ == "__main__":
    main()
