"""What clients see while ``mlxctl reconcile --once`` restarts the gateway process.

For each mlxctl given (``--mlxctl LABEL=PATH``, e.g. an older checkout's and this
one's), runs interleaved: a fresh state directory, a stack with one mlx-lm tier (the
tiny test model) and a gateway whose remote fallback's key is ``${env:...}``;
``reconcile --once``; then a client sends 1-token chat completions back to back
through the gateway (one keep-alive connection, **no client retries**: every
connection error counts) while the key's value changes and ``reconcile --once``
restarts the gateway (same port, same URL and key for clients); then ``down``.

Prints per mlxctl the failed requests, the error window (first to last failure) and
how long the restart's ``reconcile --once`` took; writes JSON with ``--json``.

    uv run python benchmarks/gateway_restart_mlxctl.py \
        --mlxctl before=/path/to/old/.venv/bin/mlxctl --mlxctl now=.venv/bin/mlxctl \
        [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _shared import BackToBack, free_port, write_results

BODY = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
KEY_ENV = "BENCH_REMOTE_KEY"


def stack(model: Path, tier_port: int, gw_port: int) -> str:
    remote = {"name": "backup", "model": "openai/gpt-4o-mini",
              "apiBase": "http://127.0.0.1:9/v1", "apiKey": "${env:" + KEY_ENV + "}"}  # fmt: skip
    tier = {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(model)},
            "port": tier_port, "fallbacks": ["backup"]}  # fmt: skip
    spec = {"gateway": {"port": gw_port, "remotes": [remote]}, "tiers": [tier]}
    doc = {"apiVersion": "mlxctl/v1", "kind": "Stack", "metadata": {"name": "bench"}, "spec": spec}
    return json.dumps(doc, indent=2)


def one_run(mlxctl: str, model: Path, work: Path) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    stacks = home / "stacks"
    stacks.mkdir()
    tier_port, gw_port = free_port(), free_port()
    (stacks / "stack.yaml").write_text(stack(model, tier_port, gw_port))
    env = {**os.environ, "MLXCTL_HOME": str(home), KEY_ENV: "value-0"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([mlxctl, *args], env=env, capture_output=True, text=True,
                              timeout=600, check=False)  # fmt: skip

    try:
        first = run("reconcile", "--once", str(stacks))
        if first.returncode != 0:
            raise SystemExit(f"{mlxctl}: first reconcile failed: {first.stderr[-500:]}")
        key = run("gateway", "key", str(stacks)).stdout.strip()
        client = BackToBack(f"http://127.0.0.1:{gw_port}", key, BODY)
        client.start()
        time.sleep(1.0)
        env[KEY_ENV] = "value-1"
        began = time.monotonic()
        second = run("reconcile", "--once", str(stacks))
        took = time.monotonic() - began
        if second.returncode != 0:
            raise SystemExit(f"{mlxctl}: restart reconcile failed: {second.stderr[-500:]}")
        time.sleep(1.5)
        client.done.set()
        client.join(30)
        return {**client.summary(), "reconcile_s": round(took, 2)}
    finally:
        down = run("down")  # every process this state directory owns, by identity
        if down.returncode != 0:
            print(f"{mlxctl} down failed, stop {home}'s servers: {down.stderr[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway restart through mlxctl")
    parser.add_argument("--mlxctl", action="append", required=True, help="LABEL=PATH")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from mlxctl.testing.tiny_model import build_tiny_model

    tools = dict(item.split("=", 1) for item in args.mlxctl)
    work = Path(tempfile.mkdtemp(prefix="gateway-restart-mlxctl-"))
    model = build_tiny_model(work / "tiny")
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in tools}
    for _ in range(args.runs):
        for label, path in tools.items():
            results[label].append(one_run(path, model, work))
            print(label, results[label][-1], flush=True)
    print(f"{'mlxctl':<10} {'failed requests':<24} {'error window (s)':<30} reconcile (s), median")
    for label, runs in results.items():
        failed = "/".join(str(r["failed"]) for r in runs)
        window = "/".join(str(r["window_s"]) for r in runs)
        took = statistics.median(r["reconcile_s"] for r in runs)
        print(f"{label:<10} {failed:<24} {window:<30} {took:.2f}")
    if args.json:
        write_results(args.json, "restart_through_mlxctl", results)


if __name__ == "__main__":
    main()
