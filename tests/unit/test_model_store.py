"""The model store's deletions: exactly the named repo and revision, and partial downloads.

The cache is laid out by hand as huggingface_hub lays it out (blobs, snapshot links,
refs); its own scan and delete strategy run on it for real.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlxctl.app.models import find_stored, gc, list_models, remove, uses
from mlxctl.errors import MlxctlError
from mlxctl.paths import Paths
from mlxctl.sources import hub
from mlxctl.spec.loader import load_stack_set

COMMIT = "c" * 40
OTHER = "d" * 40


def cached(cache: Path, repo: str, commit: str, files: dict[str, bytes]) -> Path:
    """One snapshot of ``repo`` in the cache: blobs by content, links, ``refs/main``."""
    repo_path = hub.repo_dir(repo, cache)
    snap = repo_path / "snapshots" / commit
    (repo_path / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_path / "refs").mkdir(exist_ok=True)
    (repo_path / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo_path / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(os.path.relpath(blob, (snap / name).parent))
    return snap


def store(tmp_path: Path) -> tuple[Paths, dict[str, str]]:
    cache = tmp_path / "hf"
    paths = Paths(config=tmp_path / "config", state=tmp_path / "state")
    return paths, {"HF_HUB_CACHE": str(cache)}


FILES = {"config.json": b"{}", "model.safetensors": b"w" * 4096}


@pytest.mark.parametrize("trial", range(3))
def test_rm_deletes_exactly_the_named_repo_when_others_hold_the_same_commit(
    tmp_path: Path, trial: int
) -> None:
    paths, env = store(tmp_path)
    cache = Path(env["HF_HUB_CACHE"])
    repos = ["org/tiny", *(f"org/tiny{i}" for i in range(2, 7))]
    snaps = {r: cached(cache, r, COMMIT, FILES) for r in repos}
    for victim in repos[1:]:
        models = list_models(paths, None, environ=env, running={})
        named = find_stored(victim, models)
        assert [(m.name, m.revision) for m in named] == [(victim, COMMIT)]
        assert remove(named, paths, environ=env) == sum(len(d) for d in FILES.values())
        assert not hub.repo_dir(victim, cache).exists()
    # The first repo holding the commit (what a cache-wide lookup takes) is untouched.
    assert (snaps["org/tiny"] / "config.json").read_bytes() == b"{}"
    assert [m.name for m in list_models(paths, None, environ=env, running={})] == ["org/tiny"]


def test_rm_of_one_revision_keeps_the_blobs_the_repos_other_snapshots_link(tmp_path: Path) -> None:
    paths, env = store(tmp_path)
    cache = Path(env["HF_HUB_CACHE"])
    cached(cache, "org/tiny", COMMIT, FILES)
    kept = cached(cache, "org/tiny", OTHER, {**FILES, "config.json": b'{"a": 1}'})
    cached(cache, "org/twin", OTHER, FILES)
    models = list_models(paths, None, environ=env, running={})
    remove(find_stored(f"org/tiny@{COMMIT[:8]}", models), paths, environ=env)
    assert (kept / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert not (hub.repo_dir("org/tiny", cache) / "snapshots" / COMMIT).exists()
    assert (hub.repo_dir("org/twin", cache) / "snapshots" / OTHER / "config.json").exists()


def test_a_tier_running_on_the_snapshot_refuses_rm_and_gc_keeps_it(tmp_path: Path) -> None:
    paths, env = store(tmp_path)
    cache = Path(env["HF_HUB_CACHE"])
    used = cached(cache, "org/tiny", COMMIT, FILES)
    cached(cache, "org/tiny2", COMMIT, FILES)
    # Started through a symlinked cache path: the same directory all the same.
    (tmp_path / "link").symlink_to(cache)
    argv = (
        "python",
        "-m",
        "mlx_lm",
        "server",
        "--model",
        f"{tmp_path}/link/{used.relative_to(cache)}",
    )
    live = {"fast": argv}
    models = list_models(paths, None, environ=env, running=live)
    tiny, tiny2 = find_stored("org/tiny", models), find_stored("org/tiny2", models)
    assert tiny[0].running == ("fast",) and tiny2[0].running == ()
    with pytest.raises(MlxctlError, match="used by running tier") as refused:
        remove(tiny, paths, environ=env)
    assert refused.value.exit_code == 4
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: s}\n"
        "spec:\n  gateway: {enabled: false}\n  tiers: []\n"
    )
    result = gc(
        paths,
        load_stack_set([stack_file]),
        delete=True,
        include_foreign=True,
        environ=env,
        running=live,
    )
    assert [m.name for m in result.candidates] == ["org/tiny2"]
    assert (used / "config.json").exists()
    assert not hub.repo_dir("org/tiny2", cache).exists()


def test_uses_compares_directories_not_strings(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "ab"
    a.mkdir()
    b.mkdir()
    assert uses(("--model", str(a)), a) and uses(("--model", f"{a}/"), a)
    assert not uses(("--model", str(b)), a)
    assert not uses(("--model", "a", str(tmp_path / "missing")), a)


def test_interrupted_downloads_are_listed_and_collected_unless_a_download_holds_them(
    tmp_path: Path,
) -> None:
    from filelock import FileLock

    paths, env = store(tmp_path)
    cache = Path(env["HF_HUB_CACHE"])
    cached(cache, "org/tiny", COMMIT, FILES)
    blobs = hub.repo_dir("org/tiny", cache) / "blobs"
    orphan = blobs / f"{'e' * 64}.1a2b3c4d.incomplete"
    orphan.write_bytes(b"x" * 5000)
    busy = blobs / f"{'f' * 64}.incomplete"
    busy.write_bytes(b"y" * 700)
    hub.ledger_path(paths.models, "org/tiny", COMMIT).parent.mkdir(parents=True)
    [partial] = [
        m for m in list_models(paths, None, environ=env, running={}) if m.kind == "incomplete"
    ]
    assert (partial.name, partial.size, partial.pulled_by_mlxctl) == ("org/tiny", 5700, True)
    stack_file = tmp_path / "stack.yaml"
    stack_file.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: s}\n"
        "spec:\n  gateway: {enabled: false}\n  tiers: []\n"
    )
    stack = load_stack_set([stack_file])
    lock = FileLock(str(cache / ".locks" / "models--org--tiny" / f"{'f' * 64}.lock"))
    with lock:  # a download of that blob in progress
        result = gc(paths, stack, delete=True, environ=env, running={})
    assert "incomplete" in [m.kind for m in result.candidates]
    assert not orphan.exists() and busy.exists()
    assert result.freed >= 5000
    # Once no download holds it, it goes too.
    gc(paths, stack, delete=True, environ=env, running={})
    assert not busy.exists()


def test_a_fifo_among_the_refs_is_refused_in_one_line_before_the_scan(tmp_path: Path) -> None:
    import threading

    paths, env = store(tmp_path)
    cache = Path(env["HF_HUB_CACHE"])
    cached(cache, "org/tiny", COMMIT, FILES)
    cached(cache, "org/other", OTHER, FILES)
    models = find_stored("org/tiny", list_models(paths, None, environ=env, running={}))
    os.mkfifo(hub.repo_dir("org/other", cache) / "refs" / "pr")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            remove(models, paths, environ=env)
        except MlxctlError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "models rm hung on a FIFO in refs/"
    [error] = errors
    assert "refs/pr: not a ref" in str(error) and "\n" not in str(error)
    assert (hub.repo_dir("org/tiny", cache) / "snapshots" / COMMIT / "config.json").exists()


def test_rm_of_a_repo_takes_its_partial_downloads_and_a_revision_does_not(tmp_path: Path) -> None:
    paths, env = store(tmp_path)
    cache = Path(env["HF_HUB_CACHE"])
    cached(cache, "org/tiny", COMMIT, FILES)
    partial = hub.repo_dir("org/tiny", cache) / "blobs" / f"{'e' * 64}.1a2b3c4d.incomplete"
    partial.write_bytes(b"x" * 5000)
    models = list_models(paths, None, environ=env, running={})
    assert [m.kind for m in find_stored(f"org/tiny@{COMMIT[:8]}", models)] == ["hub"]
    named = find_stored("org/tiny", models)
    assert sorted(m.kind for m in named) == ["hub", "incomplete"]
    assert remove(named, paths, environ=env) == 5000 + sum(len(d) for d in FILES.values())
    assert not hub.repo_dir("org/tiny", cache).exists()
