"""The validated names of issue 15 (rows 1, 2): repo paths, commit ids, git refs, repo ids.

Properties: whatever a hostile lock file or hub sends, an accepted path joined to a
snapshot directory names something strictly inside it, an accepted ref stays inside
``refs/``, and a commit id is exactly 40 lowercase hex digits.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxctl.desired.hub_names import CommitId, GitRef, RepoId, RepoPath, revision
from mlxctl.desired.state import ModelFile

SNAPSHOT = Path("/cache/models--org--tiny/snapshots") / ("a" * 40)
# Strings built from the characters that make paths escape or break: separators, dots,
# a drive colon, a backslash, NUL and other control characters, plus ordinary letters.
HOSTILE = st.text(alphabet=st.sampled_from(list("/.\\:~\x00\n\x7f@{ab-_")), max_size=24)


def inside(base: Path, relative: str) -> bool:
    joined = os.path.normpath(os.path.join(base, relative))
    return joined.startswith(str(base) + os.sep)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/home/me/.bashrc",
        "../../x",
        "a/../../x",
        "a/..",
        "./config.json",
        "a/./b",
        "a//b",
        "a/",
        "a\x00b",
        "a\nb",
        "C:/Windows/x",
        "c:x",
        "a\\..\\b",
        "x" * 256,
        "a/" * 600,
    ],
)
def test_hostile_repo_paths_are_refused_in_one_line(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        RepoPath(bad)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize(
    "good", ["config.json", "model-00001-of-00002.safetensors", "sub/dir/tokenizer.json", "a..b"]
)
def test_ordinary_repo_paths_are_accepted(good: str) -> None:
    assert RepoPath(good) == good and inside(SNAPSHOT, RepoPath(good))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(HOSTILE)
def test_any_accepted_path_stays_inside_the_snapshot(text: str) -> None:
    try:
        path = RepoPath(text)
    except ValueError:
        return
    assert inside(SNAPSHOT, path)
    assert ".." not in Path(path).parts and not Path(path).is_absolute()
    assert (SNAPSHOT / path).parent.is_relative_to(SNAPSHOT)


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from(list("0123456789abcdefABCDEF/.g ")), max_size=42))
def test_a_commit_id_is_exactly_40_lowercase_hex(text: str) -> None:
    expected = len(text) == 40 and all(c in "0123456789abcdef" for c in text)
    try:
        CommitId(text)
    except ValueError:
        assert not expected
    else:
        assert expected


@pytest.mark.parametrize("bad", ["../../victimdir/x", "/srv/shared/x", "a" * 39, "A" * 40, 7])
def test_a_revision_that_is_a_path_is_not_a_commit(bad: object) -> None:
    with pytest.raises(ValueError):
        CommitId(bad)


def git_accepts(ref: str) -> bool:
    done = subprocess.run(
        ["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True, check=False
    )
    return done.returncode == 0


@settings(max_examples=150, deadline=None)
@given(HOSTILE.filter(lambda t: "\x00" not in t))  # argv cannot carry NUL
def test_git_refs_follow_git_check_ref_format_and_stay_inside_refs(text: str) -> None:
    try:
        ref = GitRef(text)
    except ValueError:
        # Refused by mlxctl: git refuses it too, unless it starts with "-" (git would read
        # it as an option; mlxctl refuses it on top of git's rules).
        assert text.startswith("-") or not git_accepts(text)
        return
    assert git_accepts(text)
    assert inside(Path("/cache/models--org--tiny/refs"), ref)


@pytest.mark.parametrize(
    "bad", ["../../victimdir/x", "/srv/shared/x", "a/../b", ".hidden", "x.lock", "a b", "@", ""]
)
def test_hostile_revisions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        revision(bad)


def test_a_full_commit_is_a_commit_and_a_branch_a_ref() -> None:
    assert isinstance(revision("a" * 40), CommitId)
    assert isinstance(revision("main"), GitRef)
    assert isinstance(revision("refs/pr/1"), GitRef)


@pytest.mark.parametrize(
    "bad", ["org", "org/a/b", "../x", "org/..", "a--b/c", "org/name.git", "/org/x", "o" * 97 + "/x"]
)
def test_hostile_repo_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        RepoId(bad)


def test_a_model_file_cannot_hold_a_hostile_path_or_digest() -> None:
    with pytest.raises(ValueError):
        ModelFile("../../x", 1, None, "a" * 40)
    with pytest.raises(ValueError):
        ModelFile("config.json", 1, "not-hex", "")
    with pytest.raises(ValueError):
        ModelFile("config.json", -1, None, "a" * 40)
    assert ModelFile("config.json", 2, None, "a" * 40).path == "config.json"
