"""A planned restart cuts no request (issue 17): a real controller (``mlxctl reconcile``),
the real gateway and a real ``mlx_lm.server`` tier serving the tiny model, 16 streaming
OpenAI SDK clients, and an ``args`` edit to the tier while they stream.

The planner drains the tier first (verdict ``draining``): the gateway holds its new
requests, the running streams finish, then the restart goes and the held requests are
served by the new process. Every process the test starts is stopped by PID (the
controller) or by ``mlxctl down`` and then by recorded PID (the ``mlxctl`` fixture).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.integration.conftest import (
    Mlxctl,
    events,
    free_ports,
    pid_alive,
    stack_yaml,
    wait_for,
)

pytestmark = pytest.mark.integration
MSG: Any = [{"role": "user", "content": "Hello"}]
CLIENTS = 16
# Streamed tokens per client. Greedy (the server's default temperature, 0): the tiny
# model then never samples its end-of-sequence token and streams until max_tokens, one
# token a chunk (at temperature 1 it ends some answers early with "stop").
TOKENS = 400


class Stream(threading.Thread):
    """One streamed answer read to its end; records its chunks, finish reason and error."""

    def __init__(self, sdk: openai.OpenAI, tokens: int) -> None:
        super().__init__(daemon=True)
        self.sdk, self.tokens = sdk, tokens
        self.first_token = threading.Event()
        self.chunks = 0
        self.finish: str | None = None
        self.tokens_out: int | None = None
        self.ended = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            stream = self.sdk.chat.completions.create(
                model="fast",
                messages=MSG,
                max_tokens=self.tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    self.chunks += 1
                    self.first_token.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    self.finish = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    self.tokens_out = chunk.usage.completion_tokens
                time.sleep(0.001)
        except BaseException as exc:  # kept for the test to report
            self.error = exc
        finally:
            self.ended = time.time()
            self.first_token.set()


def tier(model: Path, port: int, max_tokens: int) -> dict[str, Any]:
    return {
        "name": "fast",
        "runtime": "mlx-lm",
        "model": {"path": str(model)},
        "port": port,
        "concurrency": CLIENTS,  # every stream in flight at the tier at once
        "args": {"max-tokens": max_tokens},
    }


def serving(url: str, key: str) -> bool:
    try:
        r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def live_pid(ctl: Mlxctl, other_than: int | None = None) -> int | None:
    """The tier's ready, live process (not ``other_than``), from the inventory."""
    record = ctl.inventory().get("fast")
    if not record or record.get("ready_at") is None or record.get("stop_requested_at"):
        return None
    pid = int(record["pid"])
    return pid if pid != other_than and pid_alive(pid) else None


def test_an_args_edit_under_16_streams_cuts_none_and_serves_a_request_sent_meanwhile(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    gw_port, port = free_ports(2)
    gateway = {"port": gw_port}
    mlxctl.write("stack.yaml", stack_yaml([tier(tiny_model, port, 512)], gateway=gateway))
    controller = mlxctl.start("reconcile", str(mlxctl.stacks), log=tmp_path / "controller.log")
    url = f"http://127.0.0.1:{gw_port}"

    def key() -> str:
        got = mlxctl.run("gateway", "key", str(mlxctl.stacks))
        return got.stdout.strip() if got.returncode == 0 else ""

    the_key = wait_for(key, 60, "the gateway key")
    wait_for(lambda: serving(url, the_key), 60, "the gateway to serve")
    old = int(wait_for(lambda: live_pid(mlxctl), 60, "the tier ready"))
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=the_key, timeout=120, max_retries=0)

    streams = [Stream(sdk, TOKENS) for _ in range(CLIENTS)]
    for stream in streams:
        stream.start()
    for stream in streams:
        assert stream.first_token.wait(60), "a stream never began"
    assert all(s.error is None for s in streams), [s.error for s in streams if s.error]
    assert sum(1 for s in streams if s.is_alive()) >= CLIENTS // 2, "too few still streaming"

    # The edit: a launch change of the always tier while every stream runs.
    edited = time.time()
    mlxctl.write("stack.yaml", stack_yaml([tier(tiny_model, port, 1024)], gateway=gateway))
    # A request sent during the drain: held by the gateway, answered by the new process.
    time.sleep(1.0)
    assert pid_alive(old), "the old process went before its streams finished"
    during: dict[str, Any] = {}

    def meanwhile() -> None:
        during["sent"] = time.time()
        try:
            during["answer"] = sdk.chat.completions.create(model="fast", messages=MSG, max_tokens=8)
        except BaseException as exc:  # reported below
            during["error"] = exc
        during["done"] = time.time()

    late = threading.Thread(target=meanwhile, daemon=True)
    late.start()

    for stream in streams:
        stream.join(120)
    late.join(120)
    cut = [s for s in streams if s.error is not None or s.finish is None]
    assert not cut, [(s.chunks, s.finish, repr(s.error)) for s in cut]
    assert all((s.finish, s.chunks, s.tokens_out) == ("length", TOKENS, TOKENS) for s in streams), [
        (s.finish, s.chunks, s.tokens_out) for s in streams
    ]
    assert "error" not in during, repr(during.get("error"))
    assert during["answer"].choices[0].message.content is not None

    new = int(wait_for(lambda: live_pid(mlxctl, other_than=old), 60, "the new process"))
    assert new != old and not pid_alive(old)
    restarts = [e for e in events(mlxctl) if e["kind"] == "restart" and e["target"] == "fast"]
    assert len(restarts) == 1, restarts
    [restart] = restarts
    assert restart["cause"].startswith("args changed: max-tokens 512 -> 1024"), restart
    print("\n" + "\n".join(str(e) for e in events(mlxctl) if e["target"] == "fast"))
    # The restart went once the streams had finished (none were cut), and the request
    # sent meanwhile was answered after it: by the new process.
    last_end = max(s.ended for s in streams)
    assert restart["ts"] >= edited and during["done"] >= restart["ts"], (restart, during)
    drain = restart["ts"] - edited
    print(
        f"\n0 of {CLIENTS} streams cut; drain {drain:.2f} s (edit to restart), "
        f"last stream ended {last_end - edited:.2f} s after the edit; "
        f"request sent meanwhile answered {during['done'] - during['sent']:.2f} s later"
    )
    assert controller.poll() is None
