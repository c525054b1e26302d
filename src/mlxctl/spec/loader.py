"""Read stack files into validated documents, with ``file:line:column`` on every error.

All ``*.yaml`` files of a stack directory together are the desired state. The loader
validates every file before anything is returned, so a caller either gets the whole
set or a :class:`~mlxctl.errors.SpecError` listing every problem: an invalid file
never changes what runs.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mlxctl.errors import SpecError, echo
from mlxctl.files import FileRefusedError, read_bounded
from mlxctl.spec.schema import (
    GatewaySpec,
    GgufSource,
    HfSource,
    MemorySpec,
    PathSource,
    StackDocument,
    TierSpec,
)

STACK_SUFFIXES = (".yaml", ".yml")
LOCK_SUFFIXES = (".lock.yaml", ".lock.yml")
# The forms a tier's ``model:`` mapping takes, by the tag the schema gives each.
MODEL_FORMS: dict[str, type[BaseModel]] = {"path": PathSource, "hf": HfSource, "gguf": GgufSource}
# A key printed as it is in an error's dotted path; any other is shown quoted, clipped.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,60}")


@dataclass(frozen=True)
class SourcedTier:
    """A tier with the file and line it was declared at."""

    spec: TierSpec
    file: Path
    line: int
    # The stack (``metadata.name``) that declares it: the owner recorded in the inventory.
    stack: str = ""
    # The tier or its whole stack says ``suspend: true``.
    suspended: bool = False
    # 1-based (line, column) of each key written in the tier, for messages.
    keys: Mapping[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class StackSet:
    """Every stack document read from one selection of files, merged and checked."""

    files: tuple[Path, ...]
    tiers: tuple[SourcedTier, ...]
    gateway: GatewaySpec
    memory: MemorySpec | None
    empty_files: tuple[Path, ...]
    names: tuple[str, ...]
    # The stacks this selection speaks for (see :func:`scope_of`): None for a directory,
    # which is the whole desired state; else only the stacks named in the chosen files.
    scope: frozenset[str] | None = None
    # Files that are invalid now, with their problems; the last valid version of each
    # (if there is one) is what the tiers above come from (see :mod:`mlxctl.spec.last_good`).
    invalid: Mapping[Path, tuple[str, ...]] = field(default_factory=dict)
    # Files invalid with no last valid version: what they declared is unknown, so
    # nothing may be pruned while they stay so.
    unknown_files: tuple[Path, ...] = ()
    # Stacks whose ``spec.suspend`` is true.
    suspended_stacks: frozenset[str] = frozenset()
    # Some file read sets ``spec.gateway`` (else ``gateway`` holds the defaults).
    gateway_set: bool = False


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
                raise SpecError([f"{_clip(str(target))}: no such file or directory"])
        except OSError as exc:  # a name too long, a directory it may not list...
            raise SpecError([f"{_clip(str(target))}: {exc.strerror or exc}"]) from None
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
    stack = _merge(files, docs, empty)
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
        text = _read(path, problems)
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
    stack = _merge(files, docs, empty)
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
        nodes = [n for n in _yaml().load_all(text) if n is not None]
        return [(StackDocument.model_validate(n), n) for n in nodes if isinstance(n, dict)]
    except (YAMLError, ValidationError):
        return None


# Bounds on one stack file. A real stack is a few kilobytes, a few levels deep and a
# few hundred values; these are far above that and far below what could hang mlxctl:
# an alias bomb ("billion laughs") is refused while it is parsed, before anything walks
# the expanded data (pydantic, error messages, the event log).
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000


class _BoundsError(Exception):
    """A stack file over one of the parsing bounds; ``mark`` is where it went over."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.mark = mark


@functools.cache
def _bounded_parser() -> type:
    """ruamel's round-trip parser, counting nesting and alias expansion event by event.

    ruamel.yaml has no limit of its own: its composer recurses once per nesting level
    (a ``RecursionError`` near 1000) and an alias is a shared node, cheap to load but
    expanded by anything that walks the result. The composer takes every event through
    ``get_event``, so counting there refuses a file before it is composed: each
    collection's expanded size is known when it ends, an anchor remembers it, and an
    alias adds it again.
    """
    from ruamel.yaml.events import (
        AliasEvent,
        CollectionEndEvent,
        CollectionStartEvent,
        ScalarEvent,
    )
    from ruamel.yaml.parser import RoundTripParser

    class BoundedParser(RoundTripParser):
        def __init__(self, loader: Any) -> None:
            super().__init__(loader)
            self._open: list[list[Any]] = []  # [anchor, expanded size] per open collection
            self._sizes: dict[str, int] = {}
            self._total = 0

        def get_event(self) -> Any:
            event = super().get_event()
            if isinstance(event, CollectionStartEvent):
                self._open.append([event.anchor, 1])
                if len(self._open) > MAX_DEPTH:
                    raise _BoundsError(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            elif isinstance(event, CollectionEndEvent):
                anchor, size = self._open.pop()
                self._add(anchor, size, event)
            elif isinstance(event, ScalarEvent):
                self._add(event.anchor, 1, event)
            elif isinstance(event, AliasEvent):
                self._add(None, self._sizes.get(event.anchor, 1), event)
            return event

        def _add(self, anchor: str | None, size: int, event: Any) -> None:
            if anchor is not None:
                self._sizes[anchor] = size
            if self._open:
                self._open[-1][1] += size
                size = self._open[-1][1]
            else:
                self._total += size
                size = self._total
            if size > MAX_NODES:
                raise _BoundsError(
                    f"more than {MAX_NODES} values once aliases are expanded", event.start_mark
                )

    return BoundedParser


@functools.cache
def _bounded_scanner() -> type:
    """ruamel's round-trip scanner, refusing the 65th open ``[``/``{`` or indentation level.

    The parser's count comes too late for flow collections: the scanner reads ahead
    through every ``[`` before the first event, and keeps a possible key per open
    level, which it re-checks at each token (quadratic: 1000 ``[`` took 4 s here).
    """
    from ruamel.yaml.scanner import RoundTripScanner

    class BoundedScanner(RoundTripScanner):
        def fetch_flow_collection_start(self, token_class: Any, to_push: Any) -> None:
            if self.flow_level >= MAX_DEPTH:
                raise _BoundsError(f"nested deeper than {MAX_DEPTH} levels", self.reader.get_mark())
            super().fetch_flow_collection_start(token_class, to_push)

        def add_indent(self, column: int) -> bool:
            if self.indent < column and len(self.indents) >= MAX_DEPTH:
                raise _BoundsError(f"nested deeper than {MAX_DEPTH} levels", self.reader.get_mark())
            return bool(super().add_indent(column))

    return BoundedScanner


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.Scanner = _bounded_scanner()
    yaml.Parser = _bounded_parser()
    return yaml


def _where(path: Path, text: str, position: int) -> str:
    line = text.count("\n", 0, position) + 1
    return f"{path}:{line}:{position - (text.rfind(chr(10), 0, position) + 1) + 1}"


def _read(path: Path, problems: list[str]) -> str | None:
    """The file's text: only a regular file, at most ``MAX_FILE_BYTES``, UTF-8."""
    try:
        raw = read_bounded(path, MAX_FILE_BYTES)
    except FileRefusedError as exc:
        problems.append(f"{exc}; refused")
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        problems.append(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x})")
        return None


def _parse(path: Path, text: str, problems: list[str]) -> list[Any] | None:
    """The YAML documents of ``text``, or None with one short problem line."""
    from ruamel.yaml.error import MarkedYAMLError, YAMLError, YAMLFutureWarning, YAMLWarning
    from ruamel.yaml.reader import ReaderError

    try:
        with warnings.catch_warnings():
            # ruamel warns on stderr (a reused anchor, a YAML 1.1 mantissa): several
            # lines a user did not ask for; they change nothing in what is loaded.
            warnings.simplefilter("ignore", YAMLWarning)
            warnings.simplefilter("ignore", YAMLFutureWarning)
            return [n for n in _yaml().load_all(text) if n is not None]
    except _BoundsError as exc:
        mark = exc.mark
        problems.append(f"{path}:{mark.line + 1}:{mark.column + 1}: yaml: {exc}; refused")
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problems.append(f"{where}: yaml: {_clip(exc.problem or exc.context)}")
    except ReaderError as exc:
        # Control characters (NUL included) outside any quoted escape.
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a byte"
        problems.append(f"{_where(path, text, exc.position)}: yaml: unacceptable character {char}")
    except YAMLError as exc:
        problems.append(f"{path}: yaml: {_clip(str(exc).splitlines()[0] if str(exc) else '')}")
    except (ValueError, OverflowError, ArithmeticError, LookupError, TypeError) as exc:
        # Values ruamel's constructors cannot build and do not wrap in a YAMLError: an
        # integer past Python's 4300 digits, a date such as 2024-02-30, an empty
        # ``!!int`` (IndexError), a tag applied to the wrong kind of node.
        reason = _clip(str(exc)) or type(exc).__name__
        problems.append(f"{path}: yaml: a value cannot be read: {reason}")
    return None


def _clip(text: str | None, limit: int = 160) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def _load_file(
    path: Path, problems: list[str], text: str | None = None
) -> list[tuple[StackDocument, Any]] | None:
    """Parse and validate one file (or ``text``, read from it before); None when it has
    problems (appended to ``problems``)."""
    if text is None:
        text = _read(path, problems)
        if text is None:
            return None
    nodes = _parse(path, text, problems)
    if nodes is None:
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
        loc, form = _without_model_tag(tuple(err["loc"]))
        if _is_losing_union_branch(loc, errors):
            continue
        # pydantic marks a dict key's own failed validator with a "[key]" location part;
        # an unknown key is reported at its own name, which a file may spell "[key]" too.
        key_error = bool(loc) and loc[-1] == "[key]" and err["type"] != "extra_forbidden"
        if key_error:
            loc = loc[:-1]  # a dict key's own validator failed: point at the key
        keys, (line, col) = _locate(
            node, loc, point_at_key=key_error or err["type"] == "extra_forbidden"
        )
        dotted = _dotted(keys)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = (
                _fields(MODEL_FORMS[form]) if form in MODEL_FORMS else _allowed_keys(keys[:-1])
            )
            close = difflib.get_close_matches(str(keys[-1]), allowed, n=1)
            message = f"unknown key {echo(str(keys[-1]))}"
            if close:
                message += f" (did you mean '{close[0]}'?)"
            elif allowed:
                message += f" (expected one of: {', '.join(sorted(allowed))})"
        elif err["type"] == "missing":
            message = f"missing required key '{keys[-1]}'" if keys else message
        elif (
            "input" in err
            and err["type"] not in ("model_type", "dict_type", "secret_literal")
            and not key_error
            and "(got " not in message
        ):
            message = f"{message} (got {echo(err['input'])})"
        out.append(f"{path}:{line}:{col}: {dotted or '<root>'}: {message}")
    return sorted(set(out), key=out.index)


def _without_model_tag(loc: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], str | None]:
    """Drop the tag pydantic puts after ``model`` (which form was written: hf, gguf, path)."""
    for i, part in enumerate(loc[:-1]):
        if part == "model" and i >= 1 and isinstance(loc[i - 1], int):
            tag = loc[i + 1]
            if isinstance(tag, str) and tag in MODEL_FORMS | {"id": None}:
                return loc[: i + 1] + loc[i + 2 :], tag
    return loc, None


def _fields(model: type[BaseModel] | None) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()] if model else []


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
        if isinstance(key, int):
            out += f"[{key}]"
        elif not _PLAIN_KEY.fullmatch(str(key)):
            out += f"[{echo(str(key))}]"  # empty, spaced, control characters, too long
        else:
            out += f".{key}" if out else str(key)
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
    depends: list[tuple[SourcedTier, int]] = []
    for path, doc, node in docs:
        seq: Any = node["spec"].get("tiers")
        for index, tier in enumerate(doc.spec.tiers):
            line = seq.lc.data[index][0] + 1 if seq is not None and index < len(seq) else 1
            suspended = tier.suspend or doc.spec.suspend
            item = seq[index] if seq is not None and index < len(seq) else None
            keys = {
                str(k): (int(v[0]) + 1, int(v[1]) + 1)
                for k, v in getattr(getattr(item, "lc", None), "data", {}).items()
            }
            sourced = SourcedTier(tier, path, line, doc.metadata.name, suspended, keys)
            if tier.depends_on:
                depends.append((sourced, _key_line(seq[index], "dependsOn", line)))
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
    problems += dependency_problems(depends, by_name)
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
        suspended_stacks=frozenset(doc.metadata.name for _, doc, _ in docs if doc.spec.suspend),
        gateway_set=gateway is not None,
    )


def _key_line(node: Any, key: str, default: int) -> int:
    try:
        return int(node.lc.data[key][0]) + 1
    except (AttributeError, KeyError, TypeError):
        return default


def dependency_problems(
    depends: Sequence[tuple[SourcedTier, int]], by_name: Mapping[str, SourcedTier]
) -> list[str]:
    """``dependsOn`` names tiers of the stack set, never itself, and never in a cycle."""
    problems: list[str] = []
    for sourced, line in depends:
        where = f"{sourced.file}:{line}:1: tier '{sourced.spec.name}': dependsOn"
        for dep in sourced.spec.depends_on:
            if dep == sourced.spec.name:
                problems.append(f"{where}: a tier cannot depend on itself")
            elif dep not in by_name:
                close = difflib.get_close_matches(dep, list(by_name), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"{where}: no tier named '{dep}'{hint}")
    if problems:
        return problems
    graph = {t.spec.name: list(t.spec.depends_on) for t, _ in depends}
    lines = {t.spec.name: (t, line) for t, line in depends}
    reported: set[frozenset[str]] = set()
    for start in graph:
        cycle = _cycle_from(start, graph)
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            tier, line = lines[cycle[0]]
            path = " -> ".join([*cycle, cycle[0]])
            problems.append(f"{tier.file}:{line}:1: tier '{cycle[0]}': dependsOn: a cycle: {path}")
    return problems


def _cycle_from(start: str, graph: Mapping[str, list[str]]) -> list[str] | None:
    """The first cycle reachable from ``start`` that passes through it, as a path."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, []):
            if nxt == start:
                return path
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


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
