"""How long a distributed tier is down when one of its ranks dies, with mlxctl healing it.

Two hosts as network namespaces on one bridge (``tests/integration/lan.py``), each with
its own controller (``mlxctl reconcile``) on the same stack: tier ``big`` distributed
over ``a`` (rank 0) and ``b`` (rank 1) on MLX's ring (the tiny test model), falling
back to ``small``, a single-host tier on ``a``. A client in a third namespace asks
``a``'s gateway for ``big`` every 0.1 s. Each run builds a fresh LAN and state (so
every kill is the group's first failure: no crash-loop backoff), waits until the
group serves, then SIGKILLs one rank (rank 1 and rank 0 in turn) and measures:

- ``other_noticed``: the kill to the crash event on the member whose rank was not
  killed (rank 0's member stops it; rank 1's sees it exit on its own);
- ``both_started``: the kill to the later of the two members' starts of the next
  generation;
- ``serving``: the kill to the first answer from ``big`` again to a request sent after
  the kill (through ``a``'s gateway; the fallback answered meanwhile), and to both ranks
  recorded ready;
- ``failed``: requests that got no 200 meanwhile (the fallback should answer them).

Needs root (network namespaces). Prints a table and writes JSON (default
``results/distributed-heal-linux-2cpu.json``).

    PYTHONPATH=src:. python benchmarks/distributed_heal.py [--runs 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from _shared import write_results
from tests.integration.conftest import Mlxctl, events, mlxctl_on, ready_pid, wait_for
from tests.integration.lan import Lan, lan_of
from tests.integration.test_distributed import GATEWAY_PORT, KEY, chat, stack_text


class Client(threading.Thread):
    """Asks ``a``'s gateway for ``big`` every ``gap`` seconds from the client namespace:
    (sent, answered, status, tier that answered)."""

    def __init__(self, lan: Lan, base: str, gap: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.lan, self.base, self.gap = lan, base, gap
        self.answers: list[tuple[float, float, int, str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            sent = time.monotonic()
            status, tier = self.lan.call("client", chat, self.base, "big")
            self.answers.append((sent, time.monotonic(), status, tier))
            self.done.wait(self.gap)


def event_time(ctl: Mlxctl, kind: str, after_wall: float) -> float | None:
    """Wall-clock time of the first ``kind`` event for ``big`` after ``after_wall``."""
    for event in events(ctl):
        if event.get("target") == "big" and event["kind"] == kind and event["ts"] >= after_wall:
            return float(event["ts"])
    return None


def one_run(model: Path, work: Path, victim: int) -> dict[str, Any]:
    with lan_of(("a", "b", "client"), work) as lan:
        stacks = work / "stacks"
        stacks.mkdir()
        (stacks / "home.yaml").write_text(stack_text(lan, model))
        ctls = {h: mlxctl_on(lan, h, stacks) for h in ("a", "b")}
        for ctl in ctls.values():
            ctl.extra_env["LAN_KEY"] = KEY
            ctl.start("reconcile", str(stacks), log=work / f"{ctl.home.parent.name}.log")
        a, b = ctls["a"], ctls["b"]
        began = time.monotonic()
        pids = {
            "a": wait_for(lambda: ready_pid(a, name="big"), 180, "rank 0 ready"),
            "b": wait_for(lambda: ready_pid(b, name="big"), 60, "rank 1 ready"),
        }
        base = f"http://{lan['a'].address}:{GATEWAY_PORT}"
        wait_for(lambda: lan.call("client", chat, base, "big") == (200, "big"), 60, "big")
        formed = time.monotonic() - began
        client = Client(lan, base)
        client.start()
        time.sleep(1.0)
        host, other = ("b", "a") if victim == 1 else ("a", "b")
        wall, mono = time.time(), time.monotonic()
        os.kill(pids[host], signal.SIGKILL)
        new = {
            h: wait_for(lambda h=h: ready_pid(ctls[h], pids[h], "big"), 180, f"{h} ready again")
            for h in ("a", "b")
        }
        both_ready = time.monotonic() - mono

        # Sent after the kill (one sent before may still be answered by the old group).
        def served_again() -> bool:
            return any(t > mono and s == 200 and x == "big" for t, _, s, x in client.answers)

        wait_for(served_again, 60, "big answering again")
        client.done.set()
        client.join(70)
        after = [(end - mono, s, tier) for t, end, s, tier in client.answers if t > mono]
        serving = next(t for t, s, tier in after if s == 200 and tier == "big")
        starts = [event_time(c, "start", wall) for c in ctls.values()]
        noticed = event_time(ctls[other], "crash", wall)
        generations = {h: ctls[h].inventory()["big"]["generation"] for h in ("a", "b")}
        return {
            "victim": f"rank {victim} on {host}",
            "formed_s": round(formed, 2),
            "other_noticed_s": None if noticed is None else round(noticed - wall, 3),
            "both_started_s": round(max(s for s in starts if s) - wall, 3) if all(starts) else None,
            "serving_s": round(serving, 3),
            "both_ready_s": round(both_ready, 3),
            "requests": len(after),
            "by_fallback": sum(1 for _, s, tier in after if s == 200 and tier == "small"),
            "failed": sum(1 for _, s, _ in after if s != 200),
            "generations": generations,
            "new_pids": new,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    default = Path(__file__).parent / "results" / "distributed-heal-linux-2cpu.json"
    parser.add_argument("--json", type=Path, default=default)
    args = parser.parse_args()

    from mlxctl.testing.tiny_model import build_tiny_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model")
        for run in range(args.runs):
            row = one_run(model, Path(tmp) / f"run{run}", victim=1 if run % 2 == 0 else 0)
            row["load"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(json.dumps(row))
    keys = ("other_noticed_s", "both_started_s", "serving_s", "both_ready_s", "formed_s")
    summary: dict[str, Any] = {}
    print(f"\n{'victim':12} " + " ".join(f"{k:>16}" for k in keys) + "  failed/requests")
    for victim in ("rank 1", "rank 0", "all"):
        mine = [r for r in rows if victim == "all" or r["victim"].startswith(victim)]
        if not mine:
            continue
        med = {k: statistics.median(r[k] for r in mine if r[k] is not None) for k in keys}
        span = {k: (min(r[k] for r in mine), max(r[k] for r in mine)) for k in keys}
        failed = sum(r["failed"] for r in mine)
        total = sum(r["requests"] for r in mine)
        summary[victim] = {"runs": len(mine), "median": med, "min_max": span,
                           "failed": failed, "requests": total}  # fmt: skip
        print(f"{victim:12} " + " ".join(f"{med[k]:>16.2f}" for k in keys) + f"  {failed}/{total}")
    write_results(args.json, "distributed_heal", {"runs": rows, "summary": summary})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
