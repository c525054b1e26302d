"""The offline demo model converts from its GGUF and answers under mlx-lm and vllm-mlx;
the tiny test model loads and generates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from tests.integration.conftest import free_port, wait_for

from mlxctl.sources.demo import DEMO_GGUF_SHA256, DEMO_MODEL_ID, ensure_demo_model
from mlxctl.sources.gguf_convert import SOURCE_MARKER, read_source_marker

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
VLLM_MLX = str(Path(sys.executable).with_name("vllm-mlx"))


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    model_dir = ensure_demo_model(models)
    assert model_dir == models / DEMO_MODEL_ID
    return model_dir


def test_demo_model_converts_once(demo_model: Path) -> None:
    marker = read_source_marker(demo_model)
    assert marker is not None and marker["sha256"] == DEMO_GGUF_SHA256
    assert {"model.safetensors", "config.json", "tokenizer.json", SOURCE_MARKER} <= {
        p.name for p in demo_model.iterdir()
    }
    # Nothing half-written beside it, and the second call is a no-op.
    assert [p.name for p in demo_model.parent.iterdir()] == [DEMO_MODEL_ID]
    before = (demo_model / "model.safetensors").stat().st_mtime_ns
    started = time.monotonic()
    assert ensure_demo_model(demo_model.parent) == demo_model
    assert time.monotonic() - started < 0.5
    assert (demo_model / "model.safetensors").stat().st_mtime_ns == before


def test_demo_model_answers_under_mlx_lm(demo_model: Path) -> None:
    from mlx_lm import generate, load

    model, tokenizer = load(str(demo_model))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    answer = generate(model, tokenizer, prompt, max_tokens=20)  # greedy by default
    assert "Paris" in answer, answer


@dataclass
class VllmServer:
    base: str
    log: Path
    proc: subprocess.Popen[bytes]

    def ready(self) -> dict[str, object] | None:
        """The /health body once the model is loaded; fails at once if the server died."""
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            pytest.fail(f"vllm-mlx exited with {self.proc.returncode}:\n{tail}")
        try:
            body = httpx.get(f"{self.base}/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) and body.get("model_loaded") is True else None


@pytest.fixture
def vllm_mlx_server(demo_model: Path, tmp_path: Path) -> Iterator[VllmServer]:
    """vllm-mlx serving the demo model; stopped by the process group this test started."""
    port = free_port()
    log = tmp_path / "vllm-mlx.log"
    cmd = [VLLM_MLX, "serve", str(demo_model), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--served-model-name", "demo", "--offline"]
    with log.open("w") as handle:
        proc = subprocess.Popen(
            cmd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        yield VllmServer(f"http://127.0.0.1:{port}", log, proc)
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group we started, wait, SIGKILL as a fallback; check nothing is left."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    members = _group_members(pgid)
    if proc.poll() is None:
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(10)
    _, alive = psutil.wait_procs(members, timeout=10)
    for member in alive:
        member.kill()
    assert not [p for p in alive if p.is_running()], "vllm-mlx left processes behind"


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def test_demo_model_answers_under_vllm_mlx(vllm_mlx_server: VllmServer) -> None:
    health = wait_for(vllm_mlx_server.ready, timeout=120, what="vllm-mlx /health")
    assert health["model_name"] == "demo"
    response = httpx.post(
        f"{vllm_mlx_server.base}/v1/chat/completions",
        json={
            "model": "demo",
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 20,
            "temperature": 0,
        },
        timeout=120,
    )
    response.raise_for_status()
    answer = response.json()["choices"][0]["message"]["content"]
    assert "Paris" in answer, answer


def test_tiny_model_loads_and_generates(tiny_model: Path) -> None:
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(tiny_model))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False
    )
    steps = list(stream_generate(model, tokenizer, prompt, max_tokens=1))
    assert len(steps) == 1
    assert 0 <= steps[0].token < tokenizer.vocab_size
