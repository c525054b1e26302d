"""Read stack files into validated documents, with ``file:line:column`` on every error.

All ``*.yaml`` files of a stack directory together are the desired state. The loader
validates every file before anything is returned, so a caller either gets the whole
set or a :class:`~mlxctl.errors.SpecError` listing every problem: an invalid file
never changes what runs.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mlxctl.errors import SpecError
from mlxctl.spec.schema import GatewaySpec, MemorySpec, StackDocument, TierSpec

STACK_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SourcedTier:
    """A tier with the file and line it was declared at."""

    spec: TierSpec
    file: Path
    line: int


@dataclass(frozen=True)
class StackSet:
    """Every stack document read from one selection of files, merged and checked."""

    files: tuple[Path, ...]
    tiers: tuple[SourcedTier, ...]
    gateway: GatewaySpec
    memory: MemorySpec | None
    empty_files: tuple[Path, ...]
    names: tuple[str, ...]


def stack_files(targets: Sequence[Path]) -> list[Path]:
    """Expand files and directories into the sorted list of stack files they hold."""
    found: list[Path] = []
    for target in targets:
        if target.is_dir():
            found.extend(
                p
                for p in sorted(target.iterdir())
                if p.suffix in STACK_SUFFIXES and p.is_file() and not p.name.startswith(".")
            )
        elif target.exists():
            found.append(target)
        else:
            raise SpecError([f"{target}: no such file or directory"])
    return found


def load_stack_set(targets: Sequence[Path]) -> StackSet:
    """Load, validate and merge the stack files under ``targets``."""
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
    return _merge(files, docs, empty)


def _yaml() -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="rt")


def _load_file(path: Path, problems: list[str]) -> list[tuple[StackDocument, Any]] | None:
    """Parse and validate one file; None when it has problems (appended to ``problems``)."""
    from ruamel.yaml.error import MarkedYAMLError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return None
    try:
        nodes = [n for n in _yaml().load_all(text) if n is not None]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problems.append(f"{where}: yaml: {exc.problem or exc.context}")
        return None
    result: list[tuple[StackDocument, Any]] = []
    ok = True
    for node in nodes:
        if not isinstance(node, dict):
            problems.append(f"{path}:1:1: a stack file is a mapping with apiVersion, kind, spec")
            ok = False
            continue
        try:
            result.append((StackDocument.model_validate(node), node))
        except ValidationError as exc:
            problems.extend(_format_errors(path, node, exc))
            ok = False
    return result if ok else None


def _format_errors(path: Path, node: Any, exc: ValidationError) -> list[str]:
    out: list[str] = []
    errors = exc.errors()
    for err in errors:
        loc = tuple(err["loc"])
        if _is_losing_union_branch(loc, errors):
            continue
        keys, (line, col) = _locate(node, loc, point_at_key=err["type"] == "extra_forbidden")
        dotted = _dotted(keys)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(keys[:-1])
            close = difflib.get_close_matches(str(keys[-1]), allowed, n=1)
            message = f"unknown key '{keys[-1]}'"
            if close:
                message += f" (did you mean '{close[0]}'?)"
            elif allowed:
                message += f" (expected one of: {', '.join(sorted(allowed))})"
        elif err["type"] == "missing":
            message = f"missing required key '{keys[-1]}'" if keys else message
        elif "input" in err and err["type"] not in ("model_type", "dict_type"):
            message = f"{message} (got {err['input']!r})"
        out.append(f"{path}:{line}:{col}: {dotted or '<root>'}: {message}")
    return sorted(set(out), key=out.index)


def _is_losing_union_branch(loc: tuple[int | str, ...], errors: Sequence[Any]) -> bool:
    """True for the "should be a string" half of a ``str | Model`` union given a mapping.

    Pydantic reports every branch of a union; the user wrote one of them, and the
    errors of the branch whose type matches what they wrote are the useful ones.
    """
    if not loc or loc[-1] != "str":
        return False
    prefix = loc[:-1]
    return any(tuple(e["loc"])[: len(prefix)] == prefix and tuple(e["loc"]) != loc for e in errors)


def _locate(
    node: Any, loc: tuple[int | str, ...], *, point_at_key: bool
) -> tuple[list[int | str], tuple[int, int]]:
    """Walk ``loc`` through the parsed YAML, skipping pydantic's union tags.

    Returns the keys that exist in the data (plus a final missing or unknown key)
    and the 1-based line and column of the deepest node found.
    """
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    keys: list[int | str] = []
    line, col = 1, 1
    current = node
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(current, CommentedMap) and part in current:
            kl, kc, vl, vc = current.lc.data[part]
            line, col = (kl, kc) if (point_at_key and last) else (vl, vc)
            line, col = line + 1, col + 1
            keys.append(part)
            current = current[part]
        elif isinstance(current, CommentedSeq) and isinstance(part, int) and part < len(current):
            il, ic = current.lc.data[part]
            line, col = il + 1, ic + 1
            keys.append(part)
            current = current[part]
        elif last and isinstance(current, dict):
            keys.append(part)  # a missing key: point at its parent
    return keys, (line, col)


def _dotted(keys: Iterable[int | str]) -> str:
    out = ""
    for key in keys:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _allowed_keys(keys: Sequence[int | str]) -> list[str]:
    """The keys the schema accepts at ``keys`` (for "did you mean")."""
    model: type[BaseModel] | None = StackDocument
    for key in keys:
        if model is None:
            return []
        if isinstance(key, int):
            continue
        field = next(
            (f for name, f in model.model_fields.items() if key in (name, f.alias)),
            None,
        )
        model = _model_in(field.annotation) if field else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is dict:
        return None
    if origin in (list, typing.Union, types.UnionType, typing.Annotated) or origin is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _merge(
    files: Sequence[Path], docs: Sequence[tuple[Path, StackDocument, Any]], empty: Sequence[Path]
) -> StackSet:
    problems: list[str] = []
    tiers: list[SourcedTier] = []
    by_name: dict[str, SourcedTier] = {}
    by_port: dict[int, str] = {}
    gateway: tuple[Path, GatewaySpec] | None = None
    memory: tuple[Path, MemorySpec] | None = None
    for path, doc, node in docs:
        seq: Any = node["spec"].get("tiers")
        for index, tier in enumerate(doc.spec.tiers):
            line = seq.lc.data[index][0] + 1 if seq is not None and index < len(seq) else 1
            sourced = SourcedTier(tier, path, line)
            if tier.name in by_name:
                other = by_name[tier.name]
                where = f"{other.file}:{other.line}"
                problems.append(f"{path}:{line}:1: tier '{tier.name}' is also defined at {where}")
                continue
            by_name[tier.name] = sourced
            tiers.append(sourced)
            if tier.port is not None:
                if tier.port in by_port:
                    problems.append(
                        f"{path}:{line}:1: tier '{tier.name}' port {tier.port} is also used by "
                        f"{by_port[tier.port]}"
                    )
                by_port[tier.port] = f"tier '{tier.name}' ({path}:{line})"
        if "gateway" in doc.spec.model_fields_set:
            if gateway is not None and gateway[1] != doc.spec.gateway:
                problems.append(
                    f"{path}: spec.gateway differs from the one in {gateway[0]}; set it in one file"
                )
            gateway = (path, doc.spec.gateway)
        if doc.spec.memory is not None:
            if memory is not None and memory[1] != doc.spec.memory:
                problems.append(
                    f"{path}: spec.memory differs from the one in {memory[0]}; set it in one file"
                )
            memory = (path, doc.spec.memory)
    gw = gateway[1] if gateway else GatewaySpec()
    problems += _route_problems(tiers, gw)
    if gw.enabled and gw.port in by_port:
        problems.append(
            f"{gateway[0] if gateway else files[0]}: gateway port {gw.port} is also used by "
            f"{by_port[gw.port]}"
        )
    if problems:
        raise SpecError(problems)
    return StackSet(
        files=tuple(files),
        tiers=tuple(tiers),
        gateway=gw,
        memory=memory[1] if memory else None,
        empty_files=tuple(empty),
        names=tuple(doc.metadata.name for _, doc, _ in docs),
    )


def _route_problems(tiers: Sequence[SourcedTier], gw: GatewaySpec) -> list[str]:
    """Fallbacks name a tier or remote; every name a client may send reaches one tier."""
    problems: list[str] = []
    targets = {t.spec.name for t in tiers} | {r.name for r in gw.remotes}
    owner: dict[str, str] = {t.spec.name: f"tier '{t.spec.name}'" for t in tiers}
    for remote in gw.remotes:
        if remote.name in owner:
            problems.append(f"gateway remote '{remote.name}' has the name of a tier")
        owner[remote.name] = f"remote '{remote.name}'"
    for t in tiers:
        where = f"{t.file}:{t.line}:1: tier '{t.spec.name}'"
        for name in t.spec.fallbacks:
            if name not in targets:
                known = ", ".join(sorted(targets - {t.spec.name})) or "none"
                problems.append(f"{where}: fallback '{name}' is no tier or remote (known: {known})")
        for alias in t.spec.aliases:
            if alias in owner:
                problems.append(f"{where}: alias '{alias}' is already the name of {owner[alias]}")
            else:
                owner[alias] = f"an alias of tier '{t.spec.name}'"
    return problems
