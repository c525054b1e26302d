"""Use cases around running services: events, logs and the gateway's key.

Functions return values and never print (see :mod:`mlxctl.app.stacks`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from mlxctl.apply.events import Event, read_events
from mlxctl.desired.resolve import master_key_ref
from mlxctl.desired.state import GATEWAY
from mlxctl.errors import ExitCode, MlxctlError, NotFoundError, echo
from mlxctl.machine.logfiles import tail
from mlxctl.paths import Paths
from mlxctl.spec import secrets
from mlxctl.spec.schema import NAME_PATTERN
from mlxctl.spec.stack_set import StackSet


def events(paths: Paths, limit: int | None = 50) -> list[Event]:
    """The most recent events, oldest first."""
    return read_events(paths.events, limit)


def log_file(paths: Paths, name: str) -> Path:
    """The log of service ``name``; NotFoundError naming the known ones otherwise.

    A service name, nothing else: never a path (``../../x``) to some other ``*.log``.
    """
    if name != GATEWAY and not re.fullmatch(NAME_PATTERN, name):
        raise MlxctlError(
            f"{echo(name)} is not a service name: a tier name (lower-case letters, digits "
            "and '-') or 'gateway'",
            exit_code=ExitCode.USAGE,
        )
    log = paths.logs / f"{name}.log"
    if not log.is_file():
        known = sorted(p.stem for p in paths.logs.glob("*.log")) if paths.logs.exists() else []
        hint = f" (known: {', '.join(known)})" if known else ""
        raise NotFoundError(f"no log for '{name}'{hint}")
    return log


def log_tail(paths: Paths, name: str, lines: int) -> list[str]:
    return tail(log_file(paths, name), lines)


def gateway_key(paths: Paths, stack: StackSet, environ: Mapping[str, str] | None = None) -> str:
    """The gateway's API key: the user's reference resolved, or the one mlxctl generated."""
    ref = master_key_ref(stack, paths.state)
    try:
        return secrets.resolve(ref, os.environ if environ is None else environ, where="gateway key")
    except secrets.MissingSecretError:
        if stack.gateway.master_key is not None:
            raise  # the user's reference: its own message says what is missing
        raise NotFoundError(
            "no gateway key yet: mlxctl generates it when the gateway first starts "
            "(mlxctl reconcile --once)"
        ) from None


def rotate_gateway_key(paths: Paths, stack: StackSet) -> None:
    """Replace the generated key atomically (0600); the running gateway re-reads it in
    place (no restart). A key the stack names is the user's to change."""
    import secrets as pysecrets

    from mlxctl.desired.resolve import generated_key_path
    from mlxctl.machine.inventory import write_atomic

    if stack.gateway.master_key is not None:
        raise MlxctlError(
            f"the gateway key is yours ({stack.gateway.master_key}): change it there, "
            "then run mlxctl reconcile --once (only the gateway restarts)",
            exit_code=ExitCode.USAGE,
        )
    path = generated_key_path(paths.state)
    write_atomic(path, "sk-mlxctl-" + pysecrets.token_urlsafe(32) + "\n", mode=0o600)
