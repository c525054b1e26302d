"""Issue 15, the hub and lock-file boundary, with real processes and the real
huggingface_hub client against a local hub that lies (:mod:`mlxctl.testing.hub`).

A sentinel tree outside the cache, the state directory and the stack directory is
checked after every command: nothing in it is created, changed or removed, whatever
the lock file or the hub says. No server is started (each refusal comes first).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from tests.integration.conftest import Mlxctl, stack_yaml

from mlxctl.errors import ExitCode
from mlxctl.machine.interfaces import JobProgress
from mlxctl.sources import hub
from mlxctl.testing.hub import ENDLESS, LocalHub, git_blob_sha1

REPO = "org/tiny"
WEIGHTS = os.urandom(375 * 1024)
FILES: dict[str, bytes | str | Path] = {
    "config.json": '{"model_type": "llama"}',
    "tokenizer.json": "{}",
    "model.safetensors": WEIGHTS,
}


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under ``root`` with its mode and bytes (directories: empty bytes)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, b"" if path.is_dir() else path.read_bytes())
    return out


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """``tmp_path/outside``: files a hostile name points at, which must survive."""
    root = tmp_path / "outside"
    (root / "victimdir").mkdir(parents=True)
    (root / "victim.json").write_text("precious\n")
    (root / "victimdir" / "keep.txt").write_text("keep\n")
    os.chmod(root / "victimdir", 0o755)
    return root


def outside_untouched(tmp_path: Path, sentinel: Path, before: dict[str, tuple[int, bytes]]) -> None:
    assert tree(sentinel) == before
    # Nothing new beside the cache, the state directory, the stacks and the sentinel.
    assert {p.name for p in tmp_path.iterdir()} <= {"outside", "hf-cache", "home", "stacks"}


def one_error_line(result: object, code: ExitCode) -> str:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == code, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return str(lines[0])


def hostile_lock(commit: str, path: str, size: int = 1) -> str:
    entry = {
        "repo": REPO,
        "requested": "main",
        "revision": commit,
        "files": [{"path": path, "size": size, "blob": git_blob_sha1(b"x")}],
    }
    return json.dumps(
        {"apiVersion": "mlxctl/v1", "kind": "Lock", "models": {f"{REPO}@main": entry}}
    )


# Relative to snapshots/<commit>/ in tmp_path/hf-cache/models--org--tiny: four levels up
# is tmp_path.
UP = "../../../../"


@pytest.mark.parametrize(
    ("path", "revision"),
    [
        (UP + "outside/victim.json", None),  # a relative escape
        ("{outside}/victim.json", None),  # an absolute path
        ("config.json", UP + "outside/victimdir/x"),  # a revision that is a path
        ("{outside}/victim\x00.json", None),  # NUL: was a ValueError traceback
    ],
    ids=["dotdot-path", "absolute-path", "path-revision", "nul-path"],
)
def test_a_hostile_lock_touches_nothing_and_is_one_line_with_exit_3(
    mlxctl: Mlxctl,
    local_hub: LocalHub,
    tmp_path: Path,
    sentinel: Path,
    path: str,
    revision: str | None,
) -> None:
    """Rows 1 and 2: the lock names a file or a revision outside the cache."""
    commit = local_hub.commit(REPO, FILES)
    stack = mlxctl.write(
        "laptop.yaml", stack_yaml([{"name": "fast", "runtime": "mlx-lm", "model": {"hf": REPO}}])
    )
    lock = stack.with_name("laptop.lock.yaml")
    lock.write_text(hostile_lock(revision or commit, path.format(outside=sentinel)))
    before = tree(sentinel)
    runs = [
        ("models", "pull", "-f", str(stack)),
        ("models", "pull", REPO, "-f", str(stack)),
        ("reconcile", "--once", str(mlxctl.stacks)),
        ("diff", str(mlxctl.stacks)),
    ]
    for args in runs:
        result = mlxctl.run(*args, timeout=60)
        outside_untouched(tmp_path, sentinel, before)
        line = one_error_line(result, ExitCode.INVALID_SPEC)
        assert line.startswith(f"error: {lock}:1:"), (args, line)  # file:line:col
    assert local_hub.downloads() == []
    assert not (tmp_path / "hf-cache").exists()


def test_a_corrupt_lock_is_not_every_revision_current(
    mlxctl: Mlxctl, local_hub: LocalHub, tmp_path: Path
) -> None:
    local_hub.commit(REPO, FILES)
    stack = mlxctl.write(
        "laptop.yaml", stack_yaml([{"name": "fast", "runtime": "mlx-lm", "model": {"hf": REPO}}])
    )
    lock = stack.with_name("laptop.lock.yaml")
    lock.write_text("kind: Lock\nmodels: {org/tiny@main: [broken\n")
    line = one_error_line(mlxctl.run("models", "update", "-f", str(stack)), ExitCode.INVALID_SPEC)
    assert line.startswith(f"error: {lock}:")
    assert lock.read_text() == "kind: Lock\nmodels: {org/tiny@main: [broken\n"


@pytest.mark.parametrize(
    "listed", [UP + "outside/victim.json", "/{outside}/victim.json", "a/./b.json"]
)
def test_a_hub_listing_an_escaping_path_is_refused_with_exit_4(
    mlxctl: Mlxctl, local_hub: LocalHub, tmp_path: Path, sentinel: Path, listed: str
) -> None:
    """Row 1 through the hub: its tree names a file outside the snapshot."""
    local_hub.commit(REPO, FILES)
    data = b"other bytes, other size"
    local_hub.extra_tree[REPO] = [
        {
            "type": "file",
            "path": listed.format(outside=sentinel),
            "size": len(data),
            "oid": git_blob_sha1(data),
        }
    ]
    before = tree(sentinel)
    result = mlxctl.run("models", "pull", REPO)
    outside_untouched(tmp_path, sentinel, before)
    line = one_error_line(result, ExitCode.APPLY_FAILED)
    assert "the hub's file listing of org/tiny@" in line and "is refused" in line
    assert local_hub.downloads() == []


def test_a_hub_commit_that_is_a_path_is_refused_with_exit_4(
    mlxctl: Mlxctl, local_hub: LocalHub, tmp_path: Path, sentinel: Path
) -> None:
    """Row 2 through the hub: ``sha`` is not a commit id."""
    local_hub.commit(REPO, FILES)
    local_hub.fake_sha = UP + "outside/victimdir/evilrev"
    before = tree(sentinel)
    result = mlxctl.run("models", "pull", REPO)
    outside_untouched(tmp_path, sentinel, before)
    line = one_error_line(result, ExitCode.APPLY_FAILED)
    assert line.endswith("not a commit id (40 hex digits)")


def test_a_cli_revision_that_is_a_path_is_a_usage_error(
    mlxctl: Mlxctl, local_hub: LocalHub, tmp_path: Path, sentinel: Path
) -> None:
    local_hub.commit(REPO, FILES)
    before = tree(sentinel)
    line = one_error_line(mlxctl.run("models", "pull", f"{REPO}@../../x"), ExitCode.USAGE)
    assert "is not a branch, tag or commit" in line
    outside_untouched(tmp_path, sentinel, before)


def test_another_x_repo_commit_is_one_line_and_leaves_no_stray_snapshot(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """Was an AssertionError, with a snapshot of the other commit and refs/<commit> left."""
    local_hub.commit(REPO, FILES)
    pin = hub.resolve_pin(REPO, "main")
    local_hub.fake_repo_commit = "b" * 40
    with pytest.raises(hub.HubError) as caught:
        hub.pull(pin, tmp_path / "home" / "models")
    assert "the hub answered for commit 'bbbbbbbb" in str(caught.value)
    assert "nothing downloaded" in str(caught.value) and "\n" not in str(caught.value)
    repo = tmp_path / "hf-cache" / "models--org--tiny"
    assert not (repo / "snapshots" / ("b" * 40)).exists()
    assert not (repo / "refs").exists()
    assert local_hub.downloads() == []


@pytest.mark.parametrize("extra", [ENDLESS, 1000], ids=["endless", "1000-bytes-too-long"])
def test_a_body_past_the_pinned_size_is_cut_there_and_removed(
    local_hub: LocalHub, tmp_path: Path, extra: int
) -> None:
    """Row 6: an endless body wrote 1.16 GB for a 375 KiB pin; now it stops at the pin."""
    local_hub.commit(REPO, FILES)
    pin = hub.resolve_pin(REPO, "main")
    local_hub.overrun["model.safetensors"] = extra
    seen: list[JobProgress] = []
    started = time.monotonic()
    with pytest.raises(hub.HubError) as caught:
        hub.pull(pin, tmp_path / "home" / "models", progress=seen.append)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "model.safetensors: the hub sent more than the pinned 384000 bytes" in message
    assert "\n" not in message
    # What the hub pushed before the client hung up: the pin, one chunk, socket buffers.
    assert local_hub.sent["model.safetensors"] < 32 * (1 << 20)  # ENDLESS is 64 MiB
    assert all(p.done is None or p.total is None or p.done <= p.total for p in seen)
    blobs = tmp_path / "hf-cache" / "models--org--tiny" / "blobs"
    assert not [b for b in blobs.iterdir() if b.name.endswith(".incomplete")]
    assert not (blobs / hashlib.sha256(WEIGHTS).hexdigest()).exists()
    assert elapsed < 10


def test_pull_progress_moves_every_mebibyte(local_hub: LocalHub, tmp_path: Path) -> None:
    """Was one report per 10 MiB (huggingface_hub's chunk): a pull looked frozen."""
    local_hub.commit(REPO, {"config.json": "{}", "model.safetensors": os.urandom(11 << 20)})
    pin = hub.resolve_pin(REPO, "main")
    seen: list[JobProgress] = []
    hub.pull(pin, tmp_path / "home" / "models", progress=seen.append)
    steps = {p.done for p in seen if p.step == "downloading model.safetensors"}
    assert len(steps) >= 10


def test_a_repo_of_25000_files_is_refused_quickly(local_hub: LocalHub) -> None:
    """Row 11: 100 000 files made the pull quadratic and the lock 8.9 MB."""
    files: dict[str, bytes | str | Path] = {f"shard/f{i:05}.json": "{}" for i in range(25_000)}
    local_hub.commit(REPO, {**files, **FILES})
    started = time.monotonic()
    with pytest.raises(hub.HubError, match="lists more than 20000 files"):
        hub.resolve_pin(REPO, "main")
    assert time.monotonic() - started < 20


def test_an_etag_that_is_a_path_writes_nothing_outside_the_cache(
    local_hub: LocalHub, tmp_path: Path, sentinel: Path
) -> None:
    """huggingface_hub stores a blob as ``blobs/<ETag>``: a hub answering ``../../../x``
    had it written outside the cache (row 2's "nothing written outside the cache")."""
    local_hub.commit(REPO, FILES)
    pin = hub.resolve_pin(REPO, "main")
    local_hub.fake_etag = "../../../outside/evil-blob"
    before = tree(sentinel)
    with pytest.raises(hub.HubError, match=r"the hub's ETag '\.\./\.\./\.\./outside/evil-blob' is"):
        hub.pull(pin, tmp_path / "home" / "models")
    outside_untouched(tmp_path, sentinel, before)
    assert local_hub.downloads() == []


def test_a_hub_that_changes_its_answer_after_the_check_is_not_used(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """The check's HEAD is truthful, huggingface_hub's own HEAD lies: its answer is
    refused before huggingface_hub writes anything where it says."""
    local_hub.commit(REPO, {"config.json": "{}"})
    pin = hub.resolve_pin(REPO, "main")
    local_hub.truthful_heads = 1
    local_hub.fake_etag = "../../../outside-blob"
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(
        hub.HubError, match=r"the hub's ETag '\.\./\.\./\.\./outside-blob' is refused"
    ):
        hub.pull(pin, tmp_path / "home" / "models")
    snapshot = hub.snapshot_dir(pin.repo, pin.revision, tmp_path / "hf-cache")
    assert not (snapshot / "config.json").is_symlink()
    created = {p for p in tmp_path.rglob("*")} - before
    assert not [p for p in created if "outside" in p.name], created
    assert local_hub.downloads() == []
    local_hub.truthful_heads = 1
    local_hub.fake_etag = None
    local_hub.fake_repo_commit = "c" * 40
    with pytest.raises(hub.HubError, match="from another commit"):
        hub.pull(pin, tmp_path / "home" / "models")


def test_models_update_refuses_a_revision_that_is_a_path(
    mlxctl: Mlxctl, local_hub: LocalHub, tmp_path: Path, sentinel: Path
) -> None:
    local_hub.commit(REPO, FILES)
    model = {"hf": REPO, "revision": UP + "outside/victimdir/x"}
    stack = mlxctl.write(
        "laptop.yaml", stack_yaml([{"name": "fast", "runtime": "mlx-lm", "model": model}])
    )
    before = tree(sentinel)
    result = mlxctl.run("models", "update", "-f", str(stack))
    outside_untouched(tmp_path, sentinel, before)
    line = one_error_line(result, ExitCode.INVALID_SPEC)
    assert "is not a branch, tag or commit" in line
    assert not stack.with_name("laptop.lock.yaml").exists()
