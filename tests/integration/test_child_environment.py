"""Real servers run with the minimal environment (#11 row 10).

The allow-list in :mod:`mlxctl.machine.environment` must be enough for each runtime
to start: a real ``mlx_lm.server`` serves a completion with it, vllm-mlx, the gateway
and LiteLLM's Router import with it; and what the server really got (read back from the
running process) holds none of mlxctl's secrets.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from tests.integration.conftest import free_port

from mlxctl.machine.environment import child_environment
from mlxctl.machine.interfaces import Identity
from mlxctl.machine.processes import INSTANCE_ENV, STATE_ENV, RealProcessControl
from mlxctl.runtimes import mlx_lm
from mlxctl.runtimes.base import ServerLaunch
from mlxctl.runtimes.gateway import MASTER_KEY_ENV
from mlxctl.runtimes.server_log import LOG_FILE_ENV

SECRETS = {MASTER_KEY_ENV: "sk-gateway-secret", "AWS_SECRET_ACCESS_KEY": "aws-secret"}


def test_mlx_lm_server_serves_with_the_minimal_environment(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    argv = mlx_lm.RUNTIME.argv(  # type: ignore[misc]
        ServerLaunch(Path(sys.executable), tiny_model, port, mlx_lm.DEFAULT_MODEL, {})
    )
    instance = uuid.uuid4().hex
    env = {
        **child_environment(os.environ, {"TIER_SETTING": "1"}),
        INSTANCE_ENV: instance,
        STATE_ENV: str(tmp_path),
    }
    pc = RealProcessControl(str(tmp_path))
    spawned = pc.spawn(argv, env, tmp_path / "fast.log")
    ident = Identity(spawned.pid, spawned.pgid, spawned.create_time, spawned.cmdline, instance)
    try:
        deadline = time.monotonic() + 60
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": mlx_lm.DEFAULT_MODEL, **mlx_lm.READY_PROMPT},
                    timeout=10,
                )
                if answer.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert answer is not None and answer.status_code == 200, (tmp_path / "fast.log").read_text()
        seen = psutil.Process(spawned.pid).environ()
        assert seen["TIER_SETTING"] == "1" and seen[INSTANCE_ENV] == instance
        assert not set(SECRETS) & set(seen)
        # Exactly what it was given, and where its log is (it rotates the file itself).
        assert set(seen) - {INSTANCE_ENV, "TIER_SETTING"} == set(env) - {
            INSTANCE_ENV,
            "TIER_SETTING",
        } | {LOG_FILE_ENV}
    finally:
        pc.stop(ident, grace=5.0)


# vllm-mlx; the gateway (started with the same environment); LiteLLM's Router, which the
# gateway loads when the routes have fallbacks.
@pytest.mark.parametrize("module", ["vllm_mlx.server", "mlxctl.gateway.server", "litellm.router"])
def test_the_other_runtimes_import_with_the_minimal_environment(module: str) -> None:
    env = child_environment(os.environ, {})
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], env=env, capture_output=True, timeout=180
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
