"""Pulls from a hub: the real huggingface_hub client against a local hub on 127.0.0.1.

The repositories are built here (the tiny model, a few extra files); the hub is
:mod:`mlxctl.testing.hub`. Fast: a few hundred KB per repo, one 11 MiB file for the
resume test (the client resumes in 10 MiB steps).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tests.integration.conftest import Mlxctl, events, free_port, stack_yaml

from mlxctl.desired.state import ModelFile
from mlxctl.errors import ExitCode
from mlxctl.machine.interfaces import JobProgress
from mlxctl.sources import hub
from mlxctl.sources.lockfile import read_lock
from mlxctl.sources.pin import Pin
from mlxctl.testing.hub import LocalHub

REPO = "org/tiny"


def tiny_repo(the_hub: LocalHub, model: Path, repo: str = REPO, **extra: bytes) -> str:
    """Commit the tiny model plus files a runtime never reads (they must not be fetched)."""
    files: dict[str, bytes | str | Path] = {
        str(p.relative_to(model)): p for p in model.iterdir() if p.is_file()
    }
    files.update({"model.Q4_0.gguf": b"G" * 4096, "consolidated.pth": b"P" * 4096})
    files.update(extra)
    return the_hub.commit(repo, files)


def pin_of(the_hub: LocalHub, repo: str = REPO) -> Pin:
    return hub.resolve_pin(repo, "main")


def test_reconcile_pulls_pins_and_serves_the_snapshot(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    commit = tiny_repo(local_hub, tiny_model)
    stack = mlxctl.write(
        "laptop.yaml", stack_yaml([{"name": "fast", "runtime": "mlx-lm", "model": {"hf": REPO}}])
    )
    result = mlxctl.run("reconcile", "--once", str(mlxctl.stacks), timeout=180)
    assert result.returncode == 0, result.stderr
    # Pinned in the lock file beside the stack file, with every file's digest.
    [entry] = read_lock(stack.with_name("laptop.lock.yaml")).values()
    assert entry.revision == commit
    weights = next(f for f in entry.files if f.path == "model.safetensors")
    assert weights.sha256 == hashlib_sha256(tiny_model / "model.safetensors")
    # Only what a runtime reads was fetched: never the GGUF or the .pth.
    fetched = {r.path.rsplit("/", 1)[-1] for r in local_hub.downloads()}
    assert "model.Q4_0.gguf" not in fetched and "consolidated.pth" not in fetched
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched
    # The server runs on the exact snapshot of the pinned commit.
    snapshot = tmp_path / "hf-cache" / "models--org--tiny" / "snapshots" / commit
    cmdline = mlxctl.inventory()["fast"]["cmdline"]
    assert str(snapshot) in cmdline
    # A second pass downloads nothing and changes nothing.
    before = len(local_hub.downloads())
    again = mlxctl.run("reconcile", "--once", str(mlxctl.stacks), timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(local_hub.downloads()) == before


def hashlib_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_download_cut_off_midway_is_resumed_with_a_range_request(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    big = os.urandom(11 * 1024 * 1024)
    local_hub.commit(REPO, {"config.json": "{}", "model.safetensors": big})
    local_hub.cut_after["model.safetensors"] = 10 * 1024 * 1024 + 4096
    pin = pin_of(local_hub)
    seen: list[JobProgress] = []
    directory = hub.pull(pin, tmp_path / "models", progress=seen.append)
    gets = local_hub.downloads("model.safetensors")
    # The client kept the first 10 MiB and asked only for the rest.
    assert [g.range for g in gets] == [None, "bytes=10485760-"]
    assert (directory / "model.safetensors").read_bytes() == big
    assert seen[-1] == JobProgress("done", pin.size, pin.size)
    assert any(p.step == "downloading model.safetensors" for p in seen)


def test_an_interrupted_pull_fetches_only_what_is_missing(
    local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    tiny_repo(local_hub, tiny_model)
    pin = pin_of(local_hub)

    class Stop(Exception):
        pass

    def stop_after_first(progress: JobProgress) -> None:
        if progress.step.startswith("verified "):
            raise Stop

    with pytest.raises(Stop):
        hub.pull(pin, tmp_path / "models", progress=stop_after_first)
    assert len(local_hub.downloads()) == 1
    hub.pull(pin, tmp_path / "models")
    # Every file exactly once: the one verified before the interruption is not fetched again.
    paths = sorted(r.path.rsplit("/", 1)[-1] for r in local_hub.downloads())
    assert paths == sorted(f.path for f in pin.files)


def test_a_corrupted_file_is_detected_and_fetched_again(
    local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    tiny_repo(local_hub, tiny_model)
    pin = pin_of(local_hub)
    models = tmp_path / "models"
    directory = hub.pull(pin, models)
    ledger = hub.ledger_path(models, REPO, pin.revision)
    assert hub.verified(pin.files, directory, ledger)
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # same size, one byte different
    weights.resolve().write_bytes(bytes(data))
    # Not trusted any more (it changed since it was verified) ...
    assert not hub.verified(pin.files, directory, ledger)
    # ... and the next pull hashes it, finds the mismatch and fetches it again.
    hub.pull(pin, models)
    assert len(local_hub.downloads("model.safetensors")) == 2
    assert weights.read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert hub.verified(pin.files, directory, ledger)


def test_a_hub_that_serves_other_bytes_than_pinned_fails_and_keeps_nothing(
    local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    tiny_repo(local_hub, tiny_model)
    pin = pin_of(local_hub)
    # The lock says one sha256; the bytes served are different (same size).
    bad = [
        ModelFile(f.path, f.size, "0" * 64 if f.sha256 else None, f.blob)
        if f.path == "model.safetensors"
        else f
        for f in pin.files
    ]
    tampered = Pin(pin.repo, pin.requested, pin.revision, tuple(bad))
    # The hub's HEAD already names another digest: refused before a byte is fetched.
    with pytest.raises(
        hub.HubError, match=r"model.safetensors: the hub's digest .* not the pinned"
    ):
        hub.pull(tampered, tmp_path / "models")
    assert local_hub.downloads("model.safetensors") == []
    snapshot = hub.snapshot_dir(REPO, pin.revision, Path(os.environ["HF_HUB_CACHE"]))
    assert not (snapshot / "model.safetensors").exists()  # nothing half-trusted left behind


def test_too_little_disk_is_refused_before_any_download(
    local_hub: LocalHub, tiny_model: Path, tmp_path: Path
) -> None:
    tiny_repo(local_hub, tiny_model)
    pin = pin_of(local_hub)
    with pytest.raises(hub.HubError) as caught:
        hub.pull(pin, tmp_path / "models", free=lambda _path: 1000)
    message = str(caught.value)
    assert "not enough disk space" in message
    assert f"need {pin.size / (1 << 20):.1f} MiB ({pin.size} bytes)" in message
    assert "1000 bytes) free" in message
    assert "\n" not in message
    assert local_hub.downloads() == []


def test_missing_repo_and_revision_are_one_line_with_exit_7(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path
) -> None:
    tiny_repo(local_hub, tiny_model)
    missing_repo = mlxctl.run("models", "pull", "hf:org/nope")
    assert missing_repo.returncode == ExitCode.NOT_FOUND
    assert missing_repo.stderr.strip().splitlines() == [
        "error: repository org/nope not found on the hub (check the name; a private repo needs "
        "HF_TOKEN)"
    ]
    missing_rev = mlxctl.run("models", "pull", f"hf:{REPO}@v9")
    assert missing_rev.returncode == ExitCode.NOT_FOUND
    assert missing_rev.stderr.strip().splitlines() == [
        f"error: {REPO} has no revision 'v9' (a branch, tag or commit)"
    ]


def test_a_gated_repo_needs_a_token_which_is_never_printed(
    mlxctl: Mlxctl,
    local_hub: LocalHub,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tiny_repo(local_hub, tiny_model)
    token = "hf_secretTOKEN123"
    local_hub.gate(REPO, token)
    refused = mlxctl.run("models", "pull", f"hf:{REPO}")
    assert refused.returncode == ExitCode.APPLY_FAILED
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {REPO} is gated: accept its terms on the hub and set HF_TOKEN "
        "(a token with access to it)"
    )
    monkeypatch.setenv("HF_TOKEN", token)
    allowed = mlxctl.run("models", "pull", f"hf:{REPO}", "-o", "json")
    assert allowed.returncode == 0, allowed.stderr
    assert token not in allowed.stdout + allowed.stderr
    assert all(r.authorized for r in local_hub.downloads())


def test_an_unreachable_hub_is_one_line(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_repo(local_hub, tiny_model)
    local_hub.down = True
    result = mlxctl.run("models", "pull", f"hf:{REPO}")
    assert result.returncode == ExitCode.APPLY_FAILED
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line == f"error: the hub answered HTTP 503 for {REPO}; try again later"
    assert "Traceback" not in result.stderr
    # No hub at all (nothing listens): one line too.
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    refused = mlxctl.run("models", "pull", f"hf:{REPO}")
    assert refused.returncode == ExitCode.APPLY_FAILED
    assert refused.stderr.strip().splitlines() == [
        f"error: cannot reach the hub for {REPO}: ConnectError: [Errno 111] Connection refused"
    ]


def test_pull_json_reports_progress_and_the_snapshot(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path
) -> None:
    commit = tiny_repo(local_hub, tiny_model)
    result = mlxctl.run("models", "pull", f"hf:{REPO}", "-o", "json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    progress = [r for r in records if r["kind"] == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] > 0
    assert records[-1]["kind"] == "pulled"
    assert records[-1]["revision"] == commit
    assert records[-1]["path"].endswith(f"snapshots/{commit}")


def test_models_ls_rm_and_gc(mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path) -> None:
    commit = tiny_repo(local_hub, tiny_model)
    local_hub.commit("org/other", {"config.json": "{}", "model.safetensors": b"o" * 2048})
    local_hub.commit("org/foreign", {"config.json": "{}", "model.safetensors": b"f" * 1024})
    mlxctl.write(
        "laptop.yaml", stack_yaml([{"name": "fast", "runtime": "mlx-lm", "model": {"hf": REPO}}])
    )
    assert mlxctl.run("reconcile", "--once", str(mlxctl.stacks), timeout=180).returncode == 0
    assert mlxctl.run("models", "pull", "hf:org/other").returncode == 0
    # Another tool's download into the same shared cache.
    from huggingface_hub import snapshot_download

    snapshot_download(
        "org/foreign", endpoint=local_hub.endpoint, cache_dir=os.environ["HF_HUB_CACHE"]
    )

    def ls() -> dict[str, dict[str, object]]:
        result = mlxctl.run("models", "ls", str(mlxctl.stacks), "-o", "json")
        assert result.returncode == 0, result.stderr
        return {m["name"]: m for m in json.loads(result.stdout)["models"]}

    models = ls()
    assert set(models) == {REPO, "org/other", "org/foreign"}
    tiny = models[REPO]
    assert (tiny["revision"], tiny["tiers"], tiny["running"]) == (commit, ["fast"], ["fast"])
    assert tiny["verified"] and tiny["pulled_by_mlxctl"] and tiny["refs"] == ["main"]
    assert tiny["size"] == sum(f.size for f in pin_of(local_hub).files)
    assert models["org/other"]["unused"] and models["org/other"]["pulled_by_mlxctl"]
    assert not models["org/foreign"]["pulled_by_mlxctl"]

    refused = mlxctl.run("models", "rm", REPO, str(mlxctl.stacks))
    assert refused.returncode == ExitCode.APPLY_FAILED
    assert "used by running tier(s) fast" in refused.stderr

    dry = mlxctl.run("models", "gc", str(mlxctl.stacks), "-o", "json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert [m["name"] for m in report["models"]] == ["org/other"]
    assert [m["name"] for m in report["not_pulled_by_mlxctl"]] == ["org/foreign"]
    assert set(ls()) == {REPO, "org/other", "org/foreign"}  # a dry run deletes nothing

    assert mlxctl.run("models", "gc", str(mlxctl.stacks), "--yes").returncode == 0
    assert set(ls()) == {REPO, "org/foreign"}
    assert (
        mlxctl.run("models", "gc", str(mlxctl.stacks), "--yes", "--include-foreign").returncode == 0
    )
    assert set(ls()) == {REPO}

    assert mlxctl.run("down").returncode == 0
    removed = mlxctl.run("models", "rm", REPO)
    assert removed.returncode == 0, removed.stderr
    assert ls() == {}


def test_reconcile_reports_a_failed_pull_in_one_line_and_its_event(
    mlxctl: Mlxctl, local_hub: LocalHub, tiny_model: Path
) -> None:
    tiny_repo(local_hub, tiny_model)
    local_hub.gate(REPO, "hf_right")
    mlxctl.write(
        "laptop.yaml", stack_yaml([{"name": "fast", "runtime": "mlx-lm", "model": {"hf": REPO}}])
    )
    result = mlxctl.run("reconcile", "--once", str(mlxctl.stacks), timeout=120)
    assert result.returncode == ExitCode.APPLY_FAILED
    gated = f"{REPO} is gated: accept its terms on the hub and set HF_TOKEN"
    assert any(
        line.startswith("error: fast: preparing") and gated in line
        for line in result.stderr.splitlines()
    ), result.stderr
    assert "Traceback" not in result.stderr
    [failed] = [e for e in events(mlxctl) if e["kind"] == "prepare" and e["result"] == "failed"]
    assert gated in failed["message"]
    assert mlxctl.inventory() == {}  # nothing started on a model that is not there
