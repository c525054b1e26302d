"""Reading a YAML file within bounds, keeping the line and column of every value.

Stack files and lock files are written by hand and may come from anyone: the text is
read like every file mlxctl reads (a regular file, at most ``MAX_FILE_BYTES``, UTF-8),
then parsed by ruamel's round-trip loader, whose nodes remember where each key and
value was written (what every error message points at), with a scanner and a parser
that refuse deep nesting and alias bombs before anything is built from them. Every
problem is one short line appended to the caller's ``problems``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

from mlxctl.files import FileRefusedError, read_bounded

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


def round_trip_yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.Scanner = _bounded_scanner()
    yaml.Parser = _bounded_parser()
    return yaml


def _where(path: Path, text: str, position: int) -> str:
    line = text.count("\n", 0, position) + 1
    return f"{path}:{line}:{position - (text.rfind(chr(10), 0, position) + 1) + 1}"


def read_yaml_text(
    path: Path, problems: list[str], *, max_bytes: int = MAX_FILE_BYTES, what: str = ""
) -> str | None:
    """The file's text: only a regular file, at most ``max_bytes``, UTF-8; else None and
    one problem line (``what`` names the kind of file in it: "the lock file")."""
    try:
        raw = read_bounded(path, max_bytes)
    except FileRefusedError as exc:
        problems.append(f"{exc}; refused")
        return None
    except OSError as exc:
        problems.append(f"{path}: cannot read{' ' + what if what else ''}: {exc.strerror or exc}")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        problems.append(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x})")
        return None


def parse_documents(path: Path, text: str, problems: list[str]) -> list[Any] | None:
    """The YAML documents of ``text``, or None with one short problem line."""
    from ruamel.yaml.error import MarkedYAMLError, YAMLError, YAMLFutureWarning, YAMLWarning
    from ruamel.yaml.reader import ReaderError

    try:
        with warnings.catch_warnings():
            # ruamel warns on stderr (a reused anchor, a YAML 1.1 mantissa): several
            # lines a user did not ask for; they change nothing in what is loaded.
            warnings.simplefilter("ignore", YAMLWarning)
            warnings.simplefilter("ignore", YAMLFutureWarning)
            return [n for n in round_trip_yaml().load_all(text) if n is not None]
    except _BoundsError as exc:
        mark = exc.mark
        problems.append(f"{path}:{mark.line + 1}:{mark.column + 1}: yaml: {exc}; refused")
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problems.append(f"{where}: yaml: {clip(exc.problem or exc.context)}")
    except ReaderError as exc:
        # Control characters (NUL included) outside any quoted escape.
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a byte"
        problems.append(f"{_where(path, text, exc.position)}: yaml: unacceptable character {char}")
    except YAMLError as exc:
        problems.append(f"{path}: yaml: {clip(str(exc).splitlines()[0] if str(exc) else '')}")
    except (ValueError, OverflowError, ArithmeticError, LookupError, TypeError) as exc:
        # Values ruamel's constructors cannot build and do not wrap in a YAMLError: an
        # integer past Python's 4300 digits, a date such as 2024-02-30, an empty
        # ``!!int`` (IndexError), a tag applied to the wrong kind of node.
        reason = clip(str(exc)) or type(exc).__name__
        problems.append(f"{path}: yaml: a value cannot be read: {reason}")
    return None


def clip(text: str | None, limit: int = 160) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
