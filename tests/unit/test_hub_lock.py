"""Hub references offline: the lock file, the stack forms, the ModelRef they resolve to."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mlxctl.desired.state import ModelFile
from mlxctl.errors import MlxctlError, NotFoundError, SpecError
from mlxctl.paths import Paths
from mlxctl.plan.planner import describe_changes
from mlxctl.sources import hub, hub_ref, lockfile
from mlxctl.sources.pin import Pin
from mlxctl.spec.loader import load_stack_set, stack_files
from mlxctl.testing.hub import git_blob_sha1

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
FILES = (
    ModelFile("config.json", 2, None, git_blob_sha1(b"{}")),
    ModelFile("model.safetensors", 3, hashlib.sha256(b"abc").hexdigest(), "c" * 40),
)


def stack(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "laptop.yaml"
    path.write_text(
        "apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: t}\nspec:\n  tiers:\n"
        f"    - name: fast\n      runtime: mlx-lm\n      model: {model}\n"
    )
    return path


def test_the_lock_sits_beside_its_stack_file_and_is_never_read_as_a_stack(tmp_path: Path) -> None:
    path = stack(tmp_path, "{hf: org/tiny}")
    lock = lockfile.lock_path(path)
    assert lock.name == "laptop.lock.yaml"
    lockfile.write_lock(lock, {"org/tiny@main": Pin("org/tiny", "main", COMMIT_A, FILES)})
    assert stack_files([tmp_path]) == [path]
    assert len(load_stack_set([tmp_path]).tiers) == 1


def test_lock_entries_round_trip_and_record_keeps_the_others(tmp_path: Path) -> None:
    lock = tmp_path / "s.lock.yaml"
    one = Pin("org/a", "main", COMMIT_A, FILES)
    two = Pin("org/b", "v1", COMMIT_B, FILES[:1])
    lockfile.record(lock, "org/a@main", one)
    lockfile.record(lock, "org/b@v1", two)
    assert lockfile.read_lock(lock) == {"org/a@main": one, "org/b@v1": two}
    text = lock.read_text()
    assert text.startswith("# Written by mlxctl")
    assert f"sha256: {FILES[1].sha256}" in text
    assert lockfile.prune(lock, ["org/b@v1"]) == ["org/a@main"]
    assert lockfile.read_lock(lock) == {"org/b@v1": two}


def test_an_invalid_lock_file_is_one_spec_error(tmp_path: Path) -> None:
    lock = tmp_path / "s.lock.yaml"
    lock.write_text("kind: Stack\nmodels: {}\n")
    with pytest.raises(SpecError, match=r"s\.lock\.yaml:1:7: kind: is 'Stack', expected 'Lock'$"):
        lockfile.read_lock(lock)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{hf: not-a-repo}", "String should match pattern"),
        ("{gguf: model.bin}", "a GGUF source names a .gguf file"),
        ("{hf: org/tiny, revison: v1}", "unknown key 'revison'"),
    ],
)
def test_model_forms_are_validated_with_one_message(
    tmp_path: Path, model: str, message: str
) -> None:
    stack(tmp_path, model)
    with pytest.raises(SpecError) as caught:
        load_stack_set([tmp_path])
    assert len(caught.value.problems) == 1
    assert message in caught.value.problems[0]


def test_an_unlocked_reference_resolves_offline_to_a_model_to_pin_and_pull(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    paths = Paths(config=tmp_path / "config", state=tmp_path / "state")
    path = stack(tmp_path, "{hf: org/tiny, revision: v1}")
    ref = hub_ref.hub_model_ref(
        "org/tiny", "v1", stack_file=path, paths=paths, display="org/tiny@v1"
    )
    assert (ref.identity, ref.prepare, ref.revision, ref.files) == (
        "hf:org/tiny@v1",
        "hf",
        "v1",
        (),
    )
    assert ref.display.endswith("(not locked yet)")
    assert not hub_ref.present(ref)


def test_a_locked_reference_is_the_commit_snapshot_and_present_only_once_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    paths = Paths(config=tmp_path / "config", state=tmp_path / "state")
    path = stack(tmp_path, "{hf: org/tiny}")
    entry = Pin("org/tiny", "main", COMMIT_A, FILES)
    lockfile.record(lockfile.lock_path(path), "org/tiny@main", entry)
    ref = hub_ref.hub_model_ref("org/tiny", "main", stack_file=path, paths=paths, display="x")
    snapshot = cache / "models--org--tiny" / "snapshots" / COMMIT_A
    assert (ref.identity, ref.directory, ref.files) == (f"hf:org/tiny@{COMMIT_A}", snapshot, FILES)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_bytes(b"{}")
    (snapshot / "model.safetensors").write_bytes(b"abc")
    assert not hub_ref.present(ref)  # the right bytes, but never verified by mlxctl
    assert ref.ledger is not None
    assert hub.missing(Pin("org/tiny", "main", COMMIT_A, FILES), cache, ref.ledger) == list(FILES)


def test_file_verification_uses_sha256_for_lfs_and_the_git_oid_otherwise(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    assert all(hub.file_matches(tmp_path / f.path, f) for f in FILES)
    (tmp_path / "config.json").write_bytes(b"[]")  # same size, other bytes
    assert not hub.file_matches(tmp_path / "config.json", FILES[0])


def test_a_revision_change_reads_as_its_cause() -> None:
    old = {"runtime": "mlx-lm", "model": "org/tiny@main", "revision": COMMIT_A[:12]}
    new = {**old, "revision": COMMIT_B[:12]}
    assert describe_changes(old, new) == f"revision changed: {COMMIT_A[:12]} -> {COMMIT_B[:12]}"


def test_the_disk_check_names_both_numbers() -> None:
    with pytest.raises(hub.HubError) as caught:
        hub.check_disk(3 << 30, 2, Path("/cache"), lambda _p: 1 << 30)
    assert str(caught.value) == (
        "not enough disk space in /cache: 2 file(s) need 3.00 GiB (3221225472 bytes), "
        "1.00 GiB (1073741824 bytes) free"
    )


def test_command_line_references_name_a_repo_and_revision() -> None:
    from mlxctl.app.models import parse_reference

    assert parse_reference("hf:org/tiny") == parse_reference("org/tiny@main")
    assert parse_reference("org/tiny@v1").requested == "v1"
    catalog = parse_reference("qwen3-8b", "8bit")
    assert (catalog.repo, catalog.requested) == ("mlx-community/Qwen3-8B-8bit", "main")
    with pytest.raises(MlxctlError, match="is not a hub model"):
        parse_reference("smollm2-135m-instruct")


def test_stored_models_are_found_by_repo_commit_prefix_branch_or_name(tmp_path: Path) -> None:
    from mlxctl.app.models import StoredModel, find_stored

    def stored(kind: str, name: str, revision: str, refs: tuple[str, ...] = ()) -> StoredModel:
        return StoredModel(kind, name, revision, tmp_path, 1, True, True, refs=refs)

    a = stored("hub", "org/tiny", COMMIT_A, ("main",))
    b = stored("hub", "org/tiny", COMMIT_B)
    demo = stored("converted", "smollm2-135m-instruct", "")
    models = [a, b, demo]
    assert find_stored("org/tiny", models) == [a, b]
    assert find_stored("org/tiny@main", models) == [a]
    assert find_stored(f"org/tiny@{COMMIT_B[:7]}", models) == [b]
    assert find_stored("smollm2-135m-instruct", models) == [demo]
    with pytest.raises(NotFoundError):
        find_stored("org/other", models)


def test_a_lock_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    entry = Pin("org/a", "main", COMMIT_A, FILES)
    with pytest.raises(MlxctlError, match=r"^cannot write the lock file .*s.lock.yaml: "):
        lockfile.record(blocked / "s.lock.yaml", "org/a@main", entry)
