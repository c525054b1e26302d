"""Route changes through mlxctl itself: ``reconcile --once`` rewrites the gateway's routes
file and the running gateway reloads it; requests to the other tiers never fail, and
``mlxctl gateway key --rotate`` takes effect without a restart."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integration.conftest import Mlxctl, free_ports, stack_yaml, wait_for

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "Hello"}]


def tier(name: str, model: Path, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "runtime": "mlx-lm", "model": {"path": str(model)}, "port": port, **extra}


class Hammer(threading.Thread):
    """Requests to one tier back to back; every failure is kept."""

    def __init__(self, url: str, key: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.model = url, key, model
        self.failures: list[str] = []
        self.count = 0
        self.done = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(headers=headers, timeout=30) as client:
            while not self.done.is_set():
                body = {"model": self.model, "messages": MSG, "max_tokens": 1}
                try:
                    r = client.post(f"{self.url}/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.count += 1


def models(url: str, key: str) -> set[str]:
    r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return {m["id"] for m in r.json()["data"]} if r.status_code == 200 else set()


def test_adding_and_removing_a_tier_reroutes_without_a_restart_or_a_failure(
    mlxctl: Mlxctl, tiny_model: Path
) -> None:
    gw_port, fast_port, extra_port = free_ports(3)
    gateway = {"port": gw_port}
    base = [tier("fast", tiny_model, fast_port)]
    mlxctl.write("stack.yaml", stack_yaml(base, gateway=gateway))
    stacks = str(mlxctl.stacks)
    first = mlxctl.run("reconcile", "--once", stacks)
    assert first.returncode == 0, first.stderr
    key = mlxctl.run("gateway", "key", stacks).stdout.strip()
    url = f"http://127.0.0.1:{gw_port}"
    config = mlxctl.home / "state" / "gateway" / "config.json"
    assert config.stat().st_mode & 0o777 == 0o600
    pid = mlxctl.status()["gateway"]["pid"]

    hammer = Hammer(url, key, "fast")
    hammer.start()
    try:
        grown = [
            tier("fast", tiny_model, fast_port, aliases=["gpt-4o-mini"], fallbacks=["extra"]),
            tier("extra", tiny_model, extra_port),
        ]
        mlxctl.write("stack.yaml", stack_yaml(grown, gateway=gateway))
        planned = mlxctl.run("diff", stacks).stdout
        assert "reload routes" in planned and "routes changed: + extra, + gpt-4o-mini" in planned
        assert "0 to restart" in planned
        added = mlxctl.run("reconcile", "--once", stacks)
        assert added.returncode == 0, added.stderr
        wait_for(lambda: {"extra", "gpt-4o-mini"} <= models(url, key), 10, "the new routes")
        extra = {"model": "extra", "messages": MSG, "max_tokens": 1}
        answer = httpx.post(f"{url}/v1/chat/completions", json=extra,
                            headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "extra"  # the name asked for, not "default_model"
        alias = httpx.post(f"{url}/v1/chat/completions", json={**extra, "model": "gpt-4o-mini"},
                           headers={"Authorization": f"Bearer {key}"}, timeout=30)  # fmt: skip
        assert alias.status_code == 200 and alias.json()["model"] == "gpt-4o-mini", alias.text

        mlxctl.write("stack.yaml", stack_yaml(base, gateway=gateway))
        removed = mlxctl.run("reconcile", "--once", stacks)
        assert removed.returncode == 0, removed.stderr
        wait_for(lambda: models(url, key) == {"fast"}, 10, "the routes without extra")
        time.sleep(0.5)
    finally:
        hammer.done.set()
        hammer.join(30)
    assert hammer.failures == [] and hammer.count > 10
    assert mlxctl.status()["gateway"]["pid"] == pid  # reloaded in place, never restarted
    kinds = [(e["kind"], e["target"]) for e in map(json.loads, events_lines(mlxctl))]
    assert kinds.count(("reconfigure", "gateway")) == 2 and ("restart", "gateway") not in kinds

    # A rotated key: the old one is refused, the new one serves, same process.
    rotated = mlxctl.run("gateway", "key", "--rotate", stacks)
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    assert new_key != key and new_key not in rotated.stderr
    wait_for(lambda: models(url, new_key) == {"fast"}, 5, "the rotated key")
    assert models(url, key) == set()
    assert mlxctl.status()["gateway"]["pid"] == pid
    assert os.stat(mlxctl.home / "state" / "gateway" / "master_key").st_mode & 0o777 == 0o600


def events_lines(ctl: Mlxctl) -> list[str]:
    path = ctl.home / "state" / "events.jsonl"
    return path.read_text().splitlines() if path.exists() else []
