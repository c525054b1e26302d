"""One model across machines (issue 20, docs/multi-host.md "One model across machines"),
on a LAN of network namespaces (tests/integration/lan.py).

Hosts ``a`` and ``b`` each run their own controller (``mlxctl reconcile``, own
MLXCTL_HOME and MLXCTL_HOST) on the same stack files; a third namespace, ``client``,
plays a client on the LAN. Tier ``big`` is distributed over ``a`` (rank 0) and ``b``
(rank 1) on MLX's ring backend (the tiny test model: 4 attention heads, 2 KV heads,
divided by 2 ranks), with a fallback to ``small``, a single-host tier on ``a``.

Killing one rank (SIGKILL by PID, rank 1 on ``b``) restarts the group on both members
as a new generation, ``status`` on both shows which rank failed, and ``a``'s clients
are served by the fallback meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import Mlxctl, events, mlxctl_on, ready_pid, wait_for
from tests.integration.lan import IP, Lan

KEY = "sk-lan-distributed-key"
GATEWAY_PORT = 4000  # each namespace has its own ports
MSG = [{"role": "user", "content": "hi"}]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def stack_text(lan: Lan, model: Path) -> str:
    spec: dict[str, Any] = {
        "hosts": [{"name": n, "address": lan[n].address} for n in ("a", "b")],
        "gateway": {"host": "0.0.0.0", "port": GATEWAY_PORT, "masterKey": "${env:LAN_KEY}"},
        "tiers": [
            {
                "name": "big",
                "runtime": "mlx-lm",
                "model": {"path": str(model)},
                "port": 8001,
                "distributed": {"hosts": ["a", "b"], "backend": "ring"},
                "fallbacks": ["small"],
            },
            {
                "name": "small",
                "host": "a",
                "runtime": "mlx-lm",
                "model": {"path": str(model)},
                "port": 8002,
            },
        ],
    }
    doc = {"apiVersion": "mlxctl/v1", "kind": "Stack", "metadata": {"name": "home"}, "spec": spec}
    return json.dumps(doc, indent=2) + "\n"


def chat(base: str, model: str) -> tuple[int, str]:
    """One chat completion from this thread (a client on the LAN): status and the tier
    that answered."""
    import httpx

    try:
        answer = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": model, "messages": MSG, "max_tokens": 2},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
    except httpx.HTTPError as exc:
        return 0, type(exc).__name__
    return answer.status_code, answer.headers.get("x-mlxctl-tier", "")


def group(ctl: Mlxctl) -> dict[str, Any]:
    status = ctl.status()
    big = next(t for t in status["tiers"] if t["name"] == "big")
    return dict(big["group"])


def netns_pids(lan: Lan, host: str) -> set[int]:
    listed = subprocess.run([IP, "netns", "pids", lan[host].netns], capture_output=True,
                            text=True, check=False).stdout  # fmt: skip
    return {int(p) for p in listed.split()}


def generation(ctl: Mlxctl) -> int:
    record = ctl.inventory().get("big") or {}
    return int(record.get("generation") or 0)


def test_a_distributed_tier_serves_from_two_hosts_and_heals_as_a_group(
    make_lan: Callable[..., Lan], tiny_model: Path, tmp_path: Path
) -> None:
    lan = make_lan("a", "b", "client")
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "home.yaml").write_text(stack_text(lan, tiny_model))
    a, b = mlxctl_on(lan, "a", stacks), mlxctl_on(lan, "b", stacks)
    for ctl in (a, b):
        ctl.extra_env["LAN_KEY"] = KEY

    started = time.monotonic()
    a.start("reconcile", str(stacks), log=tmp_path / "a.log")
    b.start("reconcile", str(stacks), log=tmp_path / "b.log")
    rank0 = wait_for(lambda: ready_pid(a, name="big"), 180, "rank 0 ready on a")
    rank1 = wait_for(lambda: ready_pid(b, name="big"), 60, "rank 1 ready on b")
    formed = time.monotonic() - started
    # Each member runs its own rank, in its own namespace, as generation 1 of the group.
    assert rank0 in netns_pids(lan, "a") and rank1 in netns_pids(lan, "b")
    assert generation(a) == generation(b) == 1
    assert set(b.inventory()) == {"big", "gateway"}
    # Each member learns that the other serves from its peer watcher (every 0.5 s): a's
    # view of b's rank lags b's own record, so each is waited for.
    for ctl, rank in ((a, 0), (b, 1)):
        seen = wait_for(lambda ctl=ctl: (g := group(ctl))["state"] == "serving" and g, 10,
                        f"rank {rank}'s member to say serving")  # fmt: skip
        assert (seen["rank"], seen["size"]) == (rank, 2), seen

    # A client on the LAN asks a's gateway: rank 0 answers, the tier is the group's.
    base_a = f"http://{lan['a'].address}:{GATEWAY_PORT}"
    wait_for(lambda: lan.call("client", chat, base_a, "big") == (200, "big"), 60, "big via a")
    # One URL per machine: b's gateway (rank 1's machine) relays to rank 0's gateway.
    base_b = f"http://{lan['b'].address}:{GATEWAY_PORT}"
    assert lan.call("client", chat, base_b, "big") == (200, "big")

    # Kill rank 1 by its PID: the group fails on both members and restarts together.
    killed = time.monotonic()
    os.kill(rank1, signal.SIGKILL)
    served: list[tuple[int, str]] = []
    shown = {"a": "", "b": ""}
    deadline = time.monotonic() + 120
    while not (generation(a) == generation(b) == 2 and ready_pid(a, rank0, "big")
               and ready_pid(b, rank1, "big")):  # fmt: skip
        assert time.monotonic() < deadline, (a.inventory().get("big"), b.inventory().get("big"))
        served.append(lan.call("client", chat, base_a, "big"))
        for name, ctl in (("a", a), ("b", b)):
            failed = group(ctl)["failed"]
            shown[name] = shown[name] or failed
    healed = time.monotonic() - killed
    # Both members said which rank failed while the group was down.
    assert shown["a"].startswith("rank 1 on b: SIGKILL"), shown
    assert shown["b"].startswith("rank 1 on b: SIGKILL"), shown
    # a's rank 0 was stopped by its controller as the group's failure (counted).
    crashes = [e for e in events(a) if e.get("kind") == "crash" and e.get("target") == "big"]
    assert crashes and crashes[-1]["cause"].startswith("the group failed: rank 1 on b: SIGKILL")
    # Meanwhile a's clients were answered, by the fallback while the group was down.
    assert served and all(status == 200 for status, _ in served), served
    assert "small" in {tier for _, tier in served}, served
    for ctl in (a, b):
        assert group(ctl)["state"] == "serving"
    assert lan.call("client", chat, base_a, "big") == (200, "big")
    print(f"group formed in {formed:.1f}s; healed {healed:.1f}s after the kill; {len(served)} "
          f"requests meanwhile, by {sorted({t for _, t in served})}")  # fmt: skip
