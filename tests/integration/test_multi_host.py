"""Several machines from one repo (issue 20, docs/multi-host.md), on a LAN of network
namespaces (tests/integration/lan.py): hosts ``a`` and ``b`` each run their own
controller (``mlxctl reconcile``, own MLXCTL_HOME and MLXCTL_HOST) on the same stack
files, and a third namespace, ``client``, holds the local test hub and plays a client
on the LAN. Nothing listens beyond those namespaces' own addresses and loopbacks.

One stack: tier ``alpha`` on ``a`` and ``beta`` on ``b`` (falling back to ``alpha``),
both tiny models from the hub, pinned in the lock file before the hub moves on; the
gateways listen on the LAN with the key from ``${env:...}``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import Mlxctl, mlxctl_on, ready_pid, wait_for
from tests.integration.lan import Lan

from mlxctl.sources.lockfile import read_lock
from mlxctl.testing.hub import LocalHub

KEY = "sk-lan-test-key"
GATEWAY_PORT = 4000  # each namespace has its own ports
MSG = [{"role": "user", "content": "hi"}]


def stack_text(lan: Lan) -> str:
    spec: dict[str, Any] = {
        "hosts": [{"name": n, "address": lan[n].address} for n in ("a", "b")],
        "gateway": {"host": "0.0.0.0", "port": GATEWAY_PORT, "masterKey": "${env:MLXCTL_LAN_KEY}"},
        "tiers": [
            {"name": "alpha", "host": "a", "runtime": "mlx-lm", "model": {"hf": "org/tiny-a"}},
            {
                "name": "beta",
                "host": "b",
                "runtime": "mlx-lm",
                "model": {"hf": "org/tiny-b"},
                "aliases": ["gpt-4o-mini"],
                "fallbacks": ["alpha"],
            },
        ],
    }
    doc = {"apiVersion": "mlxctl/v1", "kind": "Stack", "metadata": {"name": "home"}, "spec": spec}
    return json.dumps(doc, indent=2) + "\n"


def on(lan: Lan, host: str, stacks: Path, hub: LocalHub) -> Mlxctl:
    ctl = mlxctl_on(lan, host, stacks)
    ctl.extra_env.update(
        {
            "MLXCTL_LAN_KEY": KEY,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_CACHE": str(lan[host].dir / "hf-cache"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": "",
            "HF_HUB_OFFLINE": "",
        }
    )
    return ctl


def hosted(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each tier of a ``status -o json`` answer: its host and health."""
    return {t["name"]: (t["host"], t["health"]) for t in status["tiers"]}


def chat(base: str, model: str, key: str | None = KEY) -> tuple[int, str, str]:
    """One chat completion from this thread (a client on the LAN): status, the tier that
    answered, the model name the answer carries."""
    import openai

    client = openai.OpenAI(api_key=key or "none", base_url=f"{base}/v1", max_retries=0,
                           timeout=60)  # fmt: skip
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=MSG, max_tokens=2
        )
    except openai.APIStatusError as exc:
        return exc.status_code, "", ""
    finally:
        client.close()
    return raw.status_code, raw.headers.get("x-mlxctl-tier", ""), raw.parse().model


def models(base: str) -> dict[str, dict[str, Any]]:
    import httpx

    answer = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    return {m["id"]: m for m in answer.json()["data"]}


def snapshots(lan: Lan, host: str) -> dict[str, list[str]]:
    cache = lan[host].dir / "hf-cache"
    return {
        repo.name: sorted(p.name for p in (repo / "snapshots").iterdir())
        for repo in sorted(cache.glob("models--*"))
    }


def test_two_hosts_each_run_their_own_tiers_route_to_each_other_and_fail_over(
    make_lan: Callable[..., Lan], tiny_model: Path, tmp_path: Path
) -> None:
    lan = make_lan("a", "b", "client")
    hub = LocalHub(lan["client"].address)
    lan.call("client", hub.start)
    lan.before_down.insert(0, hub.stop)  # stopped last, once the controllers are gone
    first_a = hub.commit_dir("org/tiny-a", tiny_model)
    first_b = hub.commit_dir("org/tiny-b", tiny_model)
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "home.yaml").write_text(stack_text(lan))
    a, b = on(lan, "a", stacks, hub), on(lan, "b", stacks, hub)

    # The lock file pins both tiers (from either machine); then the hub moves on.
    locked = a.run("models", "update", "-f", str(stacks / "home.yaml"))
    assert locked.returncode == 0, locked.stderr
    pins = {e.repo: e.revision for e in read_lock(stacks / "home.lock.yaml").values()}
    assert pins == {"org/tiny-a": first_a, "org/tiny-b": first_b}
    extra = {"generation_config.json": b'{"temperature": 0.5}'}
    files = {p.name: p for p in tiny_model.iterdir() if p.is_file()}
    for repo in ("org/tiny-a", "org/tiny-b"):
        hub.commit(repo, {**files, **extra})

    a.start("reconcile", str(stacks), log=tmp_path / "a.log")
    b.start("reconcile", str(stacks), log=tmp_path / "b.log")
    wait_for(lambda: ready_pid(a, name="alpha"), 120, "alpha ready on a")
    beta_pid = wait_for(lambda: ready_pid(b, name="beta"), 120, "beta ready on b")

    # Each controller started only its own tier (and its gateway).
    assert set(a.inventory()) == {"alpha", "gateway"}
    assert set(b.inventory()) == {"beta", "gateway"}
    assert a.inventory()["alpha"]["pid"] in netns_pids(lan, "a")
    assert beta_pid in netns_pids(lan, "b")
    on_a, on_b = a.status(), b.status()
    assert on_a["host"] == "a" and on_b["host"] == "b"
    assert hosted(on_a) == {"alpha": ("a", "ready"), "beta": ("b", "elsewhere")}
    assert hosted(on_b) == {"alpha": ("a", "elsewhere"), "beta": ("b", "ready")}
    # Each pulled only its own tier's model, at the locked commit (not the hub's main).
    assert snapshots(lan, "a") == {"models--org--tiny-a": [first_a]}
    assert snapshots(lan, "b") == {"models--org--tiny-b": [first_b]}

    base_a = f"http://{lan['a'].address}:{GATEWAY_PORT}"
    wait_for(lambda: lan.call("client", chat, base_a, "alpha")[0] == 200, 60, "a's gateway")
    # A client on the LAN asks a's gateway for b's tier: served by b, named as asked.
    assert lan.call("client", chat, base_a, "gpt-4o-mini") == (200, "beta", "gpt-4o-mini")
    assert lan.call("client", chat, base_a, "beta", None)[0] == 401
    listed = lan.call("client", models, base_a)
    assert (listed["beta"]["host"], listed["beta"]["state"]) == ("b", "loaded")
    assert (listed["alpha"]["host"], listed["alpha"]["state"]) == ("a", "loaded")

    # b's tier dies: b heals it; meanwhile a's clients are served by the fallback on a.
    os.kill(beta_pid, signal.SIGKILL)
    served: list[tuple[int, str, str]] = []
    deadline = time.monotonic() + 120
    while ready_pid(b, other_than=beta_pid, name="beta") is None:
        assert time.monotonic() < deadline, "b did not heal beta"
        served.append(lan.call("client", chat, base_a, "gpt-4o-mini"))
    assert served and all(s[0] == 200 and s[2] == "gpt-4o-mini" for s in served), served
    assert any(s[1] == "alpha" for s in served), served
    wait_for(lambda: lan.call("client", chat, base_a, "beta")[1] == "beta", 60, "beta again")


def netns_pids(lan: Lan, host: str) -> set[int]:
    import subprocess

    from tests.integration.lan import IP

    listed = subprocess.run([IP, "netns", "pids", lan[host].netns], capture_output=True,
                            text=True, check=False).stdout  # fmt: skip
    return {int(p) for p in listed.split()}


pytestmark = pytest.mark.timeout(420)
