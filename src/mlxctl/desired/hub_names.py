"""Validated names from outside: a repo-relative path, a commit id, a git ref, a repo id.

A lock file is committed and pulled onto every machine, and a hub (or a mirror)
answers with file lists and commit ids: both are outside input, and every one of these
names ends up as a path under the shared cache or mlxctl's state directory
(``snapshots/<commit>/<path>``, ``refs/<branch>``, ``hub/<repo>/<commit>.json``). A
string that is ``/home/me/.bashrc`` or ``../../x`` would make mlxctl delete or write
outside them. So each kind of name has ONE type here, a ``str`` whose constructor
refuses anything that is not exactly that kind of name (``ValueError`` with a short
reason, no input echoed past a few dozen characters). It is built once where the input
enters (the lock file parser: exit 3; the hub's answer: exit 4; the command line: exit
2) and the functions that build paths take these types, so no unchecked string reaches
the file system.

Pure (``re``, ``posixpath``): the planner's closure reaches it through
:class:`mlxctl.desired.state.ModelFile`.
"""

from __future__ import annotations

import posixpath
import re
from typing import Self

from mlxctl.errors import echo

# A repo-relative path: at most this many characters, segments of at most NAME_MAX bytes.
MAX_PATH_CHARS = 1024
MAX_SEGMENT_BYTES = 255
# git itself has no length limit on a ref; a branch or tag longer than this is not a
# model revision anyone types, and it becomes a file name under ``refs/``.
MAX_REF_CHARS = 255
# huggingface_hub's own limit on each half of a repo id.
MAX_REPO_PART = 96

_COMMIT = re.compile(r"[0-9a-f]{40}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
# ASCII control characters and DEL: never in a name mlxctl accepts (they also make
# an error line multi-line).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What git check-ref-format refuses anywhere in a ref (rule 4, 5 and 10).
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


class _Name(str):
    """A ``str`` that only exists when :meth:`problem` finds nothing wrong with it.

    Constructing one from an instance of the same type is free; anything else is
    checked once, here, and refused with a one-line ``ValueError``.
    """

    __slots__ = ()

    def __new__(cls, value: object) -> Self:
        if isinstance(value, cls):
            return value
        reason = cls.problem(value)
        if reason:
            raise ValueError(reason)
        return super().__new__(cls, value)

    @classmethod
    def problem(cls, value: object) -> str:
        """Why ``value`` is not this kind of name ("" when it is)."""
        raise NotImplementedError


class RepoPath(_Name):
    """A file's path inside a repo snapshot: relative, normalised, inside the snapshot.

    Refused: empty, NUL or any control character, a backslash (a Windows separator or
    a drive), an absolute path or a drive letter, an empty, ``.`` or ``..`` segment,
    anything ``posixpath.normpath`` would change, a segment over 255 bytes. What is
    left, joined to any directory, names a path strictly below it.
    """

    __slots__ = ()

    @classmethod
    def problem(cls, value: object) -> str:
        if not isinstance(value, str):
            return f"a file path must be a string (got {echo(value)})"
        reason = _path_problem(value)
        return f"file path {echo(value)} is {reason}" if reason else ""


def _path_problem(value: str) -> str:
    if not value:
        return "empty"
    if len(value) > MAX_PATH_CHARS:
        return f"longer than {MAX_PATH_CHARS} characters"
    if _CONTROL.search(value):
        return "not allowed (a control character or NUL)"
    if "\\" in value:
        return "not allowed (a backslash)"
    if value.startswith("/") or re.match(r"[A-Za-z]:", value):
        return "absolute (a repo path is relative to the snapshot)"
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "not normalised (an empty, '.' or '..' segment)"
    if posixpath.normpath(value) != value:
        return "not normalised"
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for part in parts):
        return f"not allowed (a segment over {MAX_SEGMENT_BYTES} bytes)"
    return ""


class CommitId(_Name):
    """A git commit id: exactly 40 lowercase hex digits (what the hub pins to)."""

    __slots__ = ()

    @classmethod
    def problem(cls, value: object) -> str:
        if isinstance(value, str) and _COMMIT.fullmatch(value):
            return ""
        return f"{echo(value)} is not a commit id (40 lowercase hex digits)"


class GitRef(_Name):
    """A branch or tag name (or a short commit), by ``git check-ref-format --allow-onelevel``.

    It names a file under the cache's ``refs/`` (``refs/main``, ``refs/pr/1``), so the
    rules that keep it a name also keep it inside that directory: no ``..``, no segment
    starting with ``.``, no leading or trailing ``/``, no ``//``.
    """

    __slots__ = ()

    @classmethod
    def problem(cls, value: object) -> str:
        if not isinstance(value, str):
            return f"a revision must be a string (got {echo(value)})"
        reason = _ref_problem(value)
        return f"revision {echo(value)} is not a branch, tag or commit ({reason})" if reason else ""


def _ref_problem(value: str) -> str:
    if not value:
        return "empty"
    if len(value) > MAX_REF_CHARS:
        return f"longer than {MAX_REF_CHARS} characters"
    if _REF_FORBIDDEN.search(value):
        return "a space, control character or one of ~ ^ : ? * [ \\"
    if value.startswith("-"):
        return "a leading '-' (read as an option by git and other tools)"
    if value == "@" or "@{" in value:
        return "'@' alone or '@{'"
    if ".." in value:
        return "'..'"
    if value.startswith("/") or value.endswith(("/", ".")) or "//" in value:
        return "a leading or trailing '/', '//' or a trailing '.'"
    for part in value.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return "a segment starting with '.' or ending with '.lock'"
    return ""


def revision(value: object) -> CommitId | GitRef:
    """A requested revision: a full commit id, else a git ref name (a branch, tag, short commit)."""
    if isinstance(value, str) and _COMMIT.fullmatch(value):
        return CommitId(value)
    return GitRef(value)


class RepoId(_Name):
    """A hub repo id, ``owner/name``, as huggingface_hub accepts one.

    Letters, digits, ``.``, ``_``, ``-``; no ``--`` or ``..`` (the cache folds ``/``
    into ``--``, so ``a--b/c`` and ``a/b--c`` would share a directory), no ``.git``
    suffix, each half at most 96 characters.
    """

    __slots__ = ()

    @classmethod
    def problem(cls, value: object) -> str:
        if (
            isinstance(value, str)
            and _REPO.fullmatch(value)
            and "--" not in value
            and ".." not in value
            and not value.endswith((".git", "-", "."))
            and all(len(part) <= MAX_REPO_PART for part in value.split("/"))
        ):
            return ""
        return f"{echo(value)} is not a hub repo id (owner/name)"


def digest(value: object, kind: str) -> str:
    """A pinned digest: ``sha256`` is 64 lowercase hex digits, ``blob`` (a git oid) 40."""
    pattern = _DIGEST if kind == "sha256" else _COMMIT
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{kind} {echo(value)} is not {'64' if kind == 'sha256' else '40'} hex")
    return value
