"""The one way a state file's content is trusted: parsed into a validated model with ranges.

Everything in the state directory (the inventory, job files, ``ports.json``) is read on
every pass, and anything that can write the directory (a copy, an old mlxctl, a hand
edit, a damaged disk) can put anything in it. A value is used only once it has the
type and the range it must have: a PID the kernel could hand out, a start time that is
a finite moment, a port a socket accepts, bounded strings, a non-empty command line.
``NaN``, ``1e400``, ``-1``, ``10**29``, ``[1]`` or a 1 MB string fail here, in one line,
instead of as a comparison that is silently false, an ``OverflowError`` deep in a
socket call, or a traceback. Strict: ``"12"`` is not a PID and ``true`` is not a port.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mlxctl.files import read_bounded


def _pid_max() -> int:
    """The largest PID this kernel hands out: Linux says so in /proc (at most 2^22);
    elsewhere (macOS: 99998) 2^22 is a safe upper bound."""
    ceiling = 1 << 22
    try:
        return min(int(read_bounded("/proc/sys/kernel/pid_max", 64).decode().strip()), ceiling)
    except (OSError, ValueError):
        return ceiling


PID_MAX = _pid_max()
# Strings a record carries (names, hashes, paths, causes, error messages): generous
# bounds that no real value reaches and that keep one record small.
MAX_SHORT = 256
MAX_TEXT = 8192
MAX_ARGS = 4096


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


# 0 is "not yet known" (an intent record, written before its process exists).
Pid = Annotated[int, Field(ge=0, le=PID_MAX)]
LivePid = Annotated[int, Field(ge=1, le=PID_MAX)]
Port = Annotated[int, Field(ge=1, le=65535)]
Count = Annotated[int, Field(ge=0, le=1 << 31)]
# Seconds since the epoch; 0 is "unknown" (never trusted as an identity).
Timestamp = Annotated[float, AfterValidator(_finite), Field(ge=0.0, le=1e11)]
Seconds = Annotated[float, AfterValidator(_finite), Field(ge=0.0, le=1e11)]
ShortStr = Annotated[str, Field(max_length=MAX_SHORT)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Arg = Annotated[str, Field(max_length=MAX_TEXT)]
Cmdline = Annotated[list[Arg], Field(min_length=1, max_length=MAX_ARGS)]


class StateModel(BaseModel):
    """Strict types, unknown keys ignored (a newer mlxctl may add fields)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def problem(exc: ValidationError) -> str:
    """The first validation error as a short phrase: ``create_time: must be a finite number``."""
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"[:200]


def is_identity_time(value: float) -> bool:
    """A start time an identity may rest on: finite and after the epoch (0 is unknown)."""
    return math.isfinite(value) and value > 0
