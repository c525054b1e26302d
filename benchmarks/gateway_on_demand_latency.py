"""The latency a held on-demand request adds over its tier's own load, on local fakes.

Two ways a held request learns its tier serves: the tier's port starts listening while
the verdict is ``loading`` (the gateway polls it), or the controller flips a tier that
already listens from ``cold`` to ``ready`` (the gateway's next re-report brings it).
Each run measures from that moment to the answer at the client, with the default
cadences, through the same gateway, fake controller and fake tier as the unit tests.

    PYTHONPATH=src python benchmarks/gateway_on_demand_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.test_gateway_demand import DEADLINE, Setup, running

from mlxctl.gateway.demand import Cadence


async def once(mode: str) -> float:
    """Milliseconds from the tier serving (``mode``: "port" or "verdict") to the answer."""
    folder = Path(tempfile.mkdtemp(prefix="gwb-", dir="/tmp"))
    try:
        setup = Setup(folder / "admin.sock", cadence=Cadence())
        async with running(setup) as s:
            s.controller.say("big", "loading" if mode == "port" else "cold", "loading")
            asking = asyncio.ensure_future(s.ask())
            await s.controller.until(lambda t: t.waiting == 1)
            # Out of step with the re-report cadence: each run lands anywhere in a cycle.
            await asyncio.sleep(0.3 + random.random() * 0.3)
            await s.big.start()
            if mode == "verdict":
                await asyncio.sleep(0.3 + random.random() * 0.3)
                s.controller.say("big", "ready")
            began = time.monotonic()
            status, _, _ = await asyncio.wait_for(asking, DEADLINE)
            assert status == 200
            return (time.monotonic() - began) * 1000
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def main(runs: int) -> None:
    for mode in ("port", "verdict"):
        took = [await once(mode) for _ in range(runs)]
        print(f"{mode}: median {statistics.median(took):.1f} ms, max {max(took):.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args().runs))
