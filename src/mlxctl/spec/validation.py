"""Validating parsed stack documents against the schema, each error where it was written.

Pydantic reports an error as a location in the data (``spec.tiers.0.model.hf.revision``)
with its own wording; a user needs the file, line and column, the key as written, and
for an unknown key the one they probably meant. This module turns the one into the
other by walking the location through the round-trip YAML nodes (which remember where
each key and value sits), dropping pydantic's union tags and the losing branch of a
``str | Model`` union on the way.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mlxctl.errors import echo
from mlxctl.spec.schema import GgufSource, HfSource, PathSource, StackDocument

# The forms a tier's ``model:`` mapping takes, by the tag the schema gives each.
MODEL_FORMS: dict[str, type[BaseModel]] = {"path": PathSource, "hf": HfSource, "gguf": GgufSource}
# A key printed as it is in an error's dotted path; any other is shown quoted, clipped.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,60}")


def validate_documents(
    path: Path, nodes: Sequence[Any], problems: list[str]
) -> list[tuple[StackDocument, Any]] | None:
    """Each YAML document of ``path`` as a :class:`StackDocument` beside its node; None
    when any is invalid (every error appended to ``problems``, ``file:line:col: key: why``)."""
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
            problems.extend(format_errors(path, node, exc))
            ok = False
    return result if ok else None


def format_errors(path: Path, node: Any, exc: ValidationError) -> list[str]:
    """One line per error of ``exc`` (duplicates dropped), located in ``node``."""
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
