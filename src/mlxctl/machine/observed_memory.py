"""Memory estimates raised by experience: a tier that ran out of memory needs more.

``memory-observed.json`` in the state directory holds, per tier, the estimate its next
admission uses after an out-of-memory death, for the launch it died with (its spec
hash: a changed model, context or args estimates afresh). Like every state file it is
untrusted input: each entry is validated (:class:`RaisedModel`) and a bad one is
dropped, never trusted; a damaged file loses only the raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ValidationError

from mlxctl.files import read_text_bounded
from mlxctl.machine.inventory import Bytes, write_atomic
from mlxctl.machine.statemodel import ShortStr, StateModel, Text, Timestamp

FILE_NAME = "memory-observed.json"
MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Raised:
    """A tier's estimate after an out-of-memory death of the launch ``spec_hash``."""

    spec_hash: str
    before: int
    bytes: int
    at: float
    why: str


class RaisedModel(StateModel):
    spec_hash: ShortStr
    before: Bytes
    bytes: Bytes
    at: Timestamp
    why: Text = ""


def path_in(state: Path) -> Path:
    return state / FILE_NAME


def read_raised(path: Path) -> dict[str, Raised]:
    """The valid entries (a missing, unreadable or damaged file: none)."""
    try:
        raw = json.loads(read_text_bounded(path, MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    tiers = raw.get("tiers") if isinstance(raw, dict) else None
    if not isinstance(tiers, dict):
        return {}
    out: dict[str, Raised] = {}
    for name, entry in tiers.items():
        if not isinstance(name, str) or not 0 < len(name) <= 256:
            continue
        try:
            model = RaisedModel.model_validate(entry)
        except ValidationError:
            continue
        if model.bytes > model.before:
            out[name] = Raised(**model.model_dump())
    return out


def record_raise(path: Path, tier: str, raised: Raised) -> None:
    """Keep ``raised`` as ``tier``'s estimate (replacing an older raise)."""
    entries = read_raised(path)
    entries[tier] = raised
    write_raised(path, entries)


def write_raised(path: Path, entries: Mapping[str, Raised]) -> None:
    data = {"v": 1, "tiers": {name: asdict(r) for name, r in sorted(entries.items())}}
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
