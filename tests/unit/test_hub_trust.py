"""Issue 15, the hub and lock-file boundary, offline: a lock file, a cache ``refs/`` file
or the hub's listing is refused in one line before it names anything outside the cache.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from mlxctl.desired.state import ModelFile
from mlxctl.errors import ExitCode, SpecError
from mlxctl.paths import Paths
from mlxctl.sources import hub, lockfile
from mlxctl.sources.hf_cache import hf_snapshot
from mlxctl.sources.pin import Pin
from mlxctl.testing.hub import git_blob_sha1

COMMIT = "a" * 40
BLOB = git_blob_sha1(b"{}")


def lock_text(path: str = "config.json", revision: str = COMMIT, size: int = 2) -> str:
    return (
        "apiVersion: mlxctl/v1\nkind: Lock\nmodels:\n  org/tiny@main:\n"
        "    repo: org/tiny\n    requested: main\n"
        f"    revision: {revision}\n"
        "    files:\n"
        f"    - {{path: {path}, size: {size}, blob: {BLOB}}}\n"
    )


def one_line(exc: SpecError) -> str:
    assert exc.exit_code == ExitCode.INVALID_SPEC
    assert len(exc.problems) == 1 and "\n" not in str(exc)
    return str(exc)


@pytest.mark.parametrize(
    ("path", "revision", "where"),
    [
        ("/home/me/.bashrc", COMMIT, ":9:14: models.org/tiny@main.files[0].path: "),
        ("../../x", COMMIT, ":9:14: models.org/tiny@main.files[0].path: "),
        ('"a\\0b"', COMMIT, ":9:14: models.org/tiny@main.files[0].path: "),
        ("config.json", "../../victimdir/x", ":7:15: models.org/tiny@main.revision: "),
        ("config.json", "/srv/shared/x", ":7:15: models.org/tiny@main.revision: "),
    ],
)
def test_a_hostile_lock_entry_is_one_spec_error_at_file_line_col(
    tmp_path: Path, path: str, revision: str, where: str
) -> None:
    lock = tmp_path / "s.lock.yaml"
    lock.write_text(lock_text(path, revision))
    with pytest.raises(SpecError) as caught:
        lockfile.read_lock(lock)
    assert one_line(caught.value).startswith(f"{lock}{where}")


def test_a_lock_entry_needs_a_digest_and_a_bounded_file_count(tmp_path: Path) -> None:
    lock = tmp_path / "s.lock.yaml"
    lock.write_text(lock_text().replace(f", blob: {BLOB}", ""))
    with pytest.raises(SpecError, match="sha256 or its git blob id"):
        lockfile.read_lock(lock)
    many = "".join(
        f"    - {{path: f{i}.json, size: 2, blob: {BLOB}}}\n"
        for i in range(lockfile.MAX_PINNED_FILES + 1)
    )
    lock.write_text(lock_text().rsplit("    - ", 1)[0] + many)
    with pytest.raises(SpecError, match="at most 2000 items"):
        lockfile.read_lock(lock)


def test_a_lock_file_is_read_like_a_stack_file(tmp_path: Path) -> None:
    """Row 7 for the lock: a FIFO, a device, a huge file, bad UTF-8: one line, no hang."""
    fifo = tmp_path / "fifo.lock.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match=r"not a regular file \(a FIFO\); refused$"):
        lockfile.read_lock(fifo)
    zero = tmp_path / "zero.lock.yaml"
    zero.symlink_to("/dev/zero")
    with pytest.raises(SpecError, match="a character device"):
        lockfile.read_lock(zero)
    big = tmp_path / "big.lock.yaml"
    big.write_bytes(b"#" * (lockfile.MAX_LOCK_BYTES + 1))
    with pytest.raises(SpecError, match="over the 4194304 allowed"):
        lockfile.read_lock(big)
    latin = tmp_path / "latin.lock.yaml"
    latin.write_bytes(b"kind: Lock\n# caf\xe9\n")
    with pytest.raises(SpecError, match=r"latin\.lock\.yaml:2: not UTF-8"):
        lockfile.read_lock(latin)


def test_writing_a_lock_leaves_the_stack_directory_mode_alone(tmp_path: Path) -> None:
    stacks = tmp_path / "dotfiles"
    stacks.mkdir(mode=0o755)
    os.chmod(stacks, 0o755)
    lock = stacks / "laptop.lock.yaml"
    files = (ModelFile("config.json", 2, None, BLOB),)
    entry = Pin("org/tiny", "main", COMMIT, files)
    lockfile.record(lock, "org/tiny@main", entry)
    assert stat.S_IMODE(stacks.stat().st_mode) == 0o755
    assert stat.S_IMODE(lock.stat().st_mode) == 0o644
    assert lockfile.read_lock(lock) == {"org/tiny@main": entry}


def test_a_ref_is_written_without_touching_the_shared_refs_mode(tmp_path: Path) -> None:
    refs = tmp_path / "models--org--tiny" / "refs"
    refs.mkdir(parents=True)
    os.chmod(refs, 0o755)
    files = (ModelFile("config.json", 2, None, BLOB),)
    pin = Pin("org/tiny", "main", COMMIT, files)
    hub._write_ref(pin, tmp_path)
    assert (refs / "main").read_text() == COMMIT
    assert stat.S_IMODE(refs.stat().st_mode) == 0o755


def test_a_cache_ref_that_is_not_a_commit_is_no_snapshot(tmp_path: Path) -> None:
    """Row 7 for ``refs/``: a FIFO, bad UTF-8 or a path in a ref file names nothing."""
    env = {"HF_HUB_CACHE": str(tmp_path)}
    base = tmp_path / "models--org--tiny"
    (base / "refs").mkdir(parents=True)
    ref = base / "refs" / "main"
    for content in (b"\xff\xfe", b"../../../etc", b"a" * 4096):
        ref.write_bytes(content)
        assert hf_snapshot("org/tiny", "main", env) == base
    ref.unlink()
    os.mkfifo(ref)
    assert hf_snapshot("org/tiny", "main", env) == base
    ref.unlink()
    ref.write_text(COMMIT + "\n")
    assert hf_snapshot("org/tiny", "main", env) == base / "snapshots" / COMMIT


def test_the_ledger_is_written_a_logarithmic_number_of_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 11: a pull of N files does O(N) ledger work, not N rewrites of N entries."""
    count = 300
    data = b"{}"
    files = tuple(
        ModelFile(f"f{i:04}.json", len(data), hashlib.sha256(data).hexdigest(), BLOB)
        for i in range(count)
    )
    pin = Pin("org/many", "main", COMMIT, files)
    cache = tmp_path / "cache"
    directory = hub.snapshot_dir(pin.repo, pin.revision, cache)

    def fake_download(pin: Pin, f: ModelFile, *_args: object, **_kw: object) -> Path:
        (directory / f.path).parent.mkdir(parents=True, exist_ok=True)
        (directory / f.path).write_bytes(data)
        return directory / f.path

    writes: list[int] = []
    real = hub._write_ledger

    def counting(path: Path, repo: str, commit: str, stamps: dict[str, list[int]]) -> None:
        writes.append(len(stamps))
        real(path, repo, commit, stamps)

    monkeypatch.setattr(hub, "_download", fake_download)
    monkeypatch.setattr(hub, "_check_remote", lambda *_a: None, raising=False)
    monkeypatch.setattr(hub, "_write_ledger", counting)
    state = Paths(config=tmp_path / "c", state=tmp_path / "s").models
    hub.pull(pin, state, cache=cache, free=lambda _p: 1 << 40)
    assert len(hub.read_ledger(hub.ledger_path(state, pin.repo, pin.revision))) == count
    assert sum(writes) <= 3 * count, writes  # linear work in all (was count**2 / 2)
    assert len(writes) <= 30


def test_a_hub_that_answered_is_not_called_unreachable_and_is_one_line() -> None:
    """huggingface_hub wraps "the hub answered, but not usably" as "not in the cache"."""
    import httpx
    from huggingface_hub.errors import (
        FileMetadataError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
    )

    def wrapped(cause: Exception) -> LocalEntryNotFoundError:
        try:
            try:
                raise cause
            except Exception as inner:
                raise LocalEntryNotFoundError("An error happened\nwhile trying...") from inner
        except LocalEntryNotFoundError as exc:
            return exc

    no_header = FileMetadataError("Response is missing the 'X-Repo-Commit' header, so\nit ...")
    message = str(hub.explain(wrapped(no_header), "org/tiny", "main"))
    assert "cannot reach" not in message and "\n" not in message
    assert message.startswith("the hub's answer for org/tiny@main is not usable")
    response = httpx.Response(500, request=httpx.Request("HEAD", "http://hub/x"))
    failed = HfHubHTTPError("500 Server Error\nRequest ID: 1", response=response)
    assert str(hub.explain(wrapped(failed), "org/tiny", "main")) == (
        "the hub answered HTTP 500 for org/tiny; try again later"
    )


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        ({"X-Repo-Commit": "../../outside", "ETag": BLOB}, "commit '../../outside'"),
        ({"X-Repo-Commit": COMMIT, "ETag": "../../../x"}, "ETag '../../../x'"),
        ({"X-Repo-Commit": COMMIT, "ETag": "A" * 40}, "ETag 'AAAA"),
        ({"X-Repo-Commit": "/abs", "status": 404}, "commit '/abs'"),
    ],
)
def test_every_head_answer_huggingface_hub_acts_on_is_checked(
    monkeypatch: pytest.MonkeyPatch, answer: dict[str, object], refused: str
) -> None:
    """huggingface_hub's own HEAD inside ``hf_hub_download`` (not only mlxctl's check)
    names ``blobs/<ETag>``, ``snapshots/<commit>`` and ``.no_exist/<commit>``: the
    guard refuses a lie there, including on a 404 (the ``.no_exist`` marker)."""
    import httpx
    from huggingface_hub import file_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    def lying(url: str, **_: object) -> file_download.HfFileMetadata:
        headers = {k: str(v) for k, v in answer.items() if k != "status"}
        if answer.get("status") == 404:
            response = httpx.Response(404, headers=headers, request=httpx.Request("HEAD", url))
            raise RemoteEntryNotFoundError("missing", response=response)
        return file_download.HfFileMetadata(
            commit_hash=headers["X-Repo-Commit"],
            etag=headers["ETag"],
            location=url,
            size=2,
            xet_file_data=None,
        )

    monkeypatch.setattr(file_download, "get_hf_file_metadata", lying)
    hub.guard_hub_metadata()
    with pytest.raises(hub.HubError) as caught:
        file_download.get_hf_file_metadata(url="http://127.0.0.1:1/org/tiny/resolve/x/config.json")
    assert refused in str(caught.value) and "\n" not in str(caught.value)


def test_a_truthful_head_answer_passes_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import file_download

    truthful = file_download.HfFileMetadata(
        commit_hash=COMMIT, etag=BLOB, location="u", size=2, xet_file_data=None
    )
    monkeypatch.setattr(file_download, "get_hf_file_metadata", lambda url, **_: truthful)
    hub.guard_hub_metadata()
    hub.guard_hub_metadata()  # idempotent: wrapped once
    assert file_download.get_hf_file_metadata(url="u") is truthful


def test_a_hub_that_was_reached_is_never_called_unreachable() -> None:
    import httpx

    request = httpx.Request("GET", "http://127.0.0.1:1/x")
    cut = httpx.RemoteProtocolError("peer closed connection", request=request)
    refused = httpx.ConnectError("connection refused", request=request)
    assert str(hub.explain(cut, "org/tiny", "main")).startswith(
        "the hub's answer for org/tiny broke off: RemoteProtocolError: peer closed connection"
    )
    assert str(hub.explain(refused, "org/tiny", "main")).startswith(
        "cannot reach the hub for org/tiny: ConnectError"
    )
