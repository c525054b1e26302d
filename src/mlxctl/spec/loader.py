"""Which files a selection means, and loading them: all or nothing, or keeping last good.

All ``*.yaml`` files of a stack directory together are the desired state. Each file
is read within bounds (:mod:`mlxctl.spec.bounded_yaml`), validated with positions
(:mod:`mlxctl.spec.validation`) and the set assembled and checked across files
(:mod:`mlxctl.spec.stack_set`). :func:`load_stack_set` validates every file before
anything is returned, so a caller either gets the whole set or a
:class:`~mlxctl.errors.SpecError` listing every problem: an invalid file never changes
what runs. :func:`load_stack_set_keeping_last_good` (the controller's) lets the last
valid version of an invalid file stand in for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlxctl.errors import SpecError
from mlxctl.spec.bounded_yaml import clip, parse_documents, read_yaml_text, round_trip_yaml
from mlxctl.spec.schema import StackDocument
from mlxctl.spec.stack_set import StackSet, merge_documents
from mlxctl.spec.validation import validate_documents

STACK_SUFFIXES = (".yaml", ".yml")
LOCK_SUFFIXES = (".lock.yaml", ".lock.yml")


def stack_files(targets: Sequence[Path]) -> list[Path]:
    """Expand files and directories into the sorted list of stack files they hold."""
    found: list[Path] = []
    for target in targets:
        try:
            if target.is_dir():
                found.extend(
                    p
                    for p in sorted(target.iterdir())
                    if p.suffix in STACK_SUFFIXES
                    and p.is_file()
                    and not p.name.startswith(".")
                    # Lock files (``NAME.lock.yaml``) sit beside the stack files they pin.
                    and not p.name.endswith(LOCK_SUFFIXES)
                )
            elif target.exists():
                found.append(target)
            else:
                raise SpecError([f"{clip(str(target))}: no such file or directory"])
        except OSError as exc:  # a name too long, a directory it may not list...
            raise SpecError([f"{clip(str(target))}: {exc.strerror or exc}"]) from None
    return found


def scope_of(targets: Sequence[Path], names: Iterable[str]) -> frozenset[str] | None:
    """What a selection is authoritative for: every stack when a directory is read (it is
    the whole desired state, so a deleted file's tiers are pruned), else only the stacks
    named in the chosen files (``-f main.yaml`` never prunes another stack's tiers)."""
    if any(t.is_dir() for t in targets):
        return None
    return frozenset(names)


def load_stack_set(targets: Sequence[Path]) -> StackSet:
    """Load, validate and merge the stack files under ``targets`` (every problem raises)."""
    files = stack_files(targets)
    problems: list[str] = []
    docs: list[tuple[Path, StackDocument, Any]] = []
    empty: list[Path] = []
    for path in files:
        loaded = _load_file(path, problems)
        if loaded is None:
            continue
        if not loaded:
            empty.append(path)
        docs.extend((path, doc, node) for doc, node in loaded)
    if problems:
        raise SpecError(problems)
    stack = merge_documents(files, docs, empty)
    return replace(stack, scope=scope_of(targets, stack.names))


# Reads the last valid text of a file (None: there is none); saves a valid one.
LastGoodRead = Callable[[Path], str | None]
LastGoodSave = Callable[[Path, str], None]


def load_stack_set_keeping_last_good(
    targets: Sequence[Path], read_last: LastGoodRead, save: LastGoodSave | None = None
) -> StackSet:
    """Like :func:`load_stack_set`, but an invalid (or emptied) file does not stop the
    others: its last valid version stands in for it, as Flux and Argo CD keep applying the
    last good revision, and it is listed in ``invalid``. Valid files are handed to ``save``.
    """
    files = stack_files(targets)
    docs: list[tuple[Path, StackDocument, Any]] = []
    empty: list[Path] = []
    invalid: dict[Path, tuple[str, ...]] = {}
    unknown: list[Path] = []
    fresh: dict[Path, str] = {}
    for path in files:
        problems: list[str] = []
        text = read_yaml_text(path, problems)
        loaded = _load_file(path, problems, text) if text is not None else None
        if loaded and text is not None:
            docs.extend((path, doc, node) for doc, node in loaded)
            fresh[path] = text  # the very text that validated
            continue
        if loaded is not None and not problems:
            problems = [f"{path}: the file is empty (a save in progress?)"]
        last = read_last(path)
        kept = _load_text(path, last) if last is not None else None
        if kept:
            invalid[path] = tuple(problems)
            docs.extend((path, doc, node) for doc, node in kept)
        elif loaded is not None:
            empty.append(path)  # empty with no last valid version: the planner refuses it
        else:
            invalid[path] = tuple(problems)
            unknown.append(path)
    # Valid alone, invalid together (a tier defined twice, a port used twice): the
    # combination raises, as in load_stack_set.
    stack = merge_documents(files, docs, empty)
    for path, text in fresh.items():
        if save is not None:
            save(path, text)
    return replace(
        stack,
        scope=scope_of(targets, stack.names),
        invalid=invalid,
        unknown_files=tuple(unknown),
    )


def _load_text(path: Path, text: str) -> list[tuple[StackDocument, Any]] | None:
    """Validate a stored text of ``path`` (its last valid version); None when it no
    longer validates (the schema changed since it was saved)."""
    from ruamel.yaml.error import YAMLError

    try:
        nodes = [n for n in round_trip_yaml().load_all(text) if n is not None]
        return [(StackDocument.model_validate(n), n) for n in nodes if isinstance(n, dict)]
    except (YAMLError, ValidationError):
        return None


def _load_file(
    path: Path, problems: list[str], text: str | None = None
) -> list[tuple[StackDocument, Any]] | None:
    """Parse and validate one file (or ``text``, read from it before); None when it has
    problems (appended to ``problems``)."""
    if text is None:
        text = read_yaml_text(path, problems)
        if text is None:
            return None
    nodes = parse_documents(path, text, problems)
    if nodes is None:
        return None
    return validate_documents(path, nodes, problems)
