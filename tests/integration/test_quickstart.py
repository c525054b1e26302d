"""The README's first command, for real: the demo model behind the LiteLLM gateway.

The bundled demo stack pins ports 4000, 8001 and 8002. A user who ran the quickstart
(the README's first command) still has those servers up when running the tests (the
second), so the test installs the bundled stack itself with free ports, and
quickstart keeps a demo.yaml that is already there (unit-tested in test_cli).
"""

from __future__ import annotations

import json
import re
import time

import httpx
from tests.integration.conftest import Mlxctl, free_ports

from mlxctl.cli.ops_cmds import bundled_stack


def ask(port: int, key: str, model: str, question: str) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 30,
            "temperature": 0,
        },
        timeout=120,
    )


def demo_stack_on_ports(gateway: int, chat: int, chat_vllm: int) -> str:
    """The bundled demo stack with its three ports replaced (each exactly once)."""
    text = bundled_stack("demo.yaml").read_text()
    for bundled, free in ((4000, gateway), (8001, chat), (8002, chat_vllm)):
        pattern = rf"\bport: {bundled}\b"
        assert len(re.findall(pattern, text)) == 1, pattern
        text = re.sub(pattern, f"port: {free}", text)
    return text


def test_quickstart_serves_the_demo_model_through_the_gateway(mlxctl: Mlxctl) -> None:
    port, chat_port, vllm_port = free_ports(3)
    stacks = mlxctl.home / "config" / "stacks"
    stacks.mkdir(parents=True)
    (stacks / "demo.yaml").write_text(demo_stack_on_ports(port, chat_port, vllm_port))
    result = mlxctl.run("quickstart", timeout=900)
    assert result.returncode == 0, result.stderr
    assert "converged" in result.stderr
    curl = next(line for line in result.stdout.splitlines() if line.startswith("curl "))
    key = re.search(r"Bearer ([^']+)'", curl)
    assert key is not None and f"http://127.0.0.1:{port}/" in curl
    status = json.loads(mlxctl.run("status", str(stacks), "-o", "json").stdout)
    assert status["gateway"]["health"] == "ready" and status["gateway"]["sync"] == "Synced"
    gateway_pid = status["gateway"]["pid"]

    for tier in ("chat", "chat-vllm"):
        answer = ask(port, key.group(1), tier, "What is the capital of France?")
        assert answer.status_code == 200, answer.text
        assert "Paris" in answer.json()["choices"][0]["message"]["content"]
        assert answer.json()["model"] == tier  # the name asked for, not the served one
    # vllm-mlx keeps the gateway's connection open, and closes it after 5 idle seconds:
    # the next request must not trip over the closed connection.
    time.sleep(6)
    again = ask(port, key.group(1), "chat-vllm", "What is the capital of France?")
    assert again.status_code == 200 and again.json()["model"] == "chat-vllm", again.text
    gateway_log = (mlxctl.home / "state" / "logs" / "gateway.log").read_text()
    assert "did not answer" not in gateway_log  # answered on the fast path, not by retry

    # The gateway pins each name to its tier's model: no other model can be loaded.
    other = ask(port, key.group(1), "/some/other/model", "hi")
    assert other.status_code == 404 and "chat, chat-vllm" in other.text
    # Without the key, or with a wrong one, nothing: 401.
    anonymous = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    assert anonymous.status_code == 401 and "chat" not in anonymous.text
    wrong = httpx.get(
        f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=10
    )
    assert wrong.status_code == 401 and "chat" not in wrong.text

    # Restarting a tier (an args edit) does not restart the gateway (its routes may be
    # reloaded in place: the tier's context is known once its model is converted).
    demo = stacks / "demo.yaml"
    text = demo.read_text()
    edited = text.replace("max-tokens: 512}", "max-tokens: 256}", 1)
    assert edited != text
    demo.write_text(edited)
    again = mlxctl.run("reconcile", "--once", str(stacks), timeout=600)
    assert again.returncode == 0, again.stderr
    planned = again.stderr.split("Plan:")[0]
    assert "chat: restart" in planned and "gateway: restart" not in planned
    status = json.loads(mlxctl.run("status", str(stacks), "-o", "json").stdout)
    assert status["gateway"]["pid"] == gateway_pid
