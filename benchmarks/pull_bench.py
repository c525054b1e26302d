"""What a verified pull costs: the real huggingface_hub client against the local test hub.

Measures, for a repo of one large random weights file plus small files:
- a first pull (download + sha256 verification), and huggingface_hub's
  ``snapshot_download`` of the same repo alone (download, no verification): the
  difference is what verifying costs;
- a second pull of a pulled model (the ledger says verified: no hashing, no download);
- ``present`` (the check each reconcile pass makes) on a pulled model;
- re-verifying after the ledger is lost (every file hashed again, nothing downloaded).

Loopback has no network latency: download figures are the client's and disk's
ceiling, not a hub's. ``uv run python benchmarks/pull_bench.py [--mib 256] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    from huggingface_hub import snapshot_download

    from mlxctl.desired.state import ModelRef
    from mlxctl.sources import hub, hub_ref
    from mlxctl.testing.hub import LocalHub

    samples: dict[str, list[float]] = {
        k: [] for k in ("pull", "snapshot_download", "pull_again", "present", "reverify")
    }
    with LocalHub() as the_hub:
        env = {"HF_ENDPOINT": the_hub.endpoint}
        big = os.urandom(args.mib << 20)
        the_hub.commit("bench/model", {"config.json": "{}", "model.safetensors": big})
        for _ in range(args.runs):
            root = Path(tempfile.mkdtemp(prefix="pull-bench-"))
            try:
                cache, models = root / "cache", root / "models"
                pin = hub.resolve_pin("bench/model", "main", environ=env)
                t = time.perf_counter()
                directory = hub.pull(pin, models, environ=env, cache=cache)
                samples["pull"].append(time.perf_counter() - t)
                t = time.perf_counter()
                snapshot_download(
                    "bench/model", endpoint=the_hub.endpoint, cache_dir=root / "plain"
                )
                samples["snapshot_download"].append(time.perf_counter() - t)
                t = time.perf_counter()
                hub.pull(pin, models, environ=env, cache=cache)
                samples["pull_again"].append(time.perf_counter() - t)
                ledger = hub.ledger_path(models, pin.repo, pin.commit)
                ref = ModelRef(
                    source="hf",
                    identity="x",
                    directory=directory,
                    display="x",
                    files=pin.files,
                    ledger=ledger,
                )
                t = time.perf_counter()
                for _ in range(100):
                    assert hub_ref.present(ref)
                samples["present"].append((time.perf_counter() - t) / 100)
                ledger.unlink()
                t = time.perf_counter()
                hub.pull(pin, models, environ=env, cache=cache)
                samples["reverify"].append(time.perf_counter() - t)
            finally:
                shutil.rmtree(root, ignore_errors=True)
    size = args.mib << 20
    result: dict[str, Any] = {"mib": args.mib, "runs": args.runs, "samples": samples}
    print(f"repo: one {args.mib} MiB weights file + config.json; {args.runs} runs, medians")
    for key, values in samples.items():
        median = statistics.median(values)
        rate = (
            f"  ({size / median / (1 << 20):.0f} MiB/s)"
            if key in ("pull", "snapshot_download", "reverify")
            else ""
        )
        unit = f"{median * 1000:.2f} ms" if median < 1 else f"{median:.2f} s"
        print(f"  {key:18} {unit}{rate}")
        result[key] = median
    if args.json:
        write_results(args.json, "pull", result)


if __name__ == "__main__":
    main()
