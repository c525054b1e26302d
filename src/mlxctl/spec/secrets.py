"""Secret references: secrets stay out of stack files, logs, events and renders.

``${env:NAME}`` takes a variable from mlxctl's environment; ``${file:PATH}`` takes the
contents of a file (stripped), which is how the generated gateway key (mode 0600)
reaches LiteLLM. A reference is resolved only when a process is launched. Everything
mlxctl prints or stores keeps the reference text; the desired-state hash takes a
digest of the resolved value, so rotating a secret restarts what uses it without
revealing it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from mlxctl.errors import MlxctlError
from mlxctl.files import read_text_bounded

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
ANY_REF = re.compile(r"\$\{(env|file):([^}]+)\}")
# A secret is a key or a token: a file over this is not one (and /dev/zero never ends).
MAX_SECRET_BYTES = 64 * 1024


# Environment variable names that hold secrets by convention (HF_TOKEN, OPENAI_API_KEY,
# DB_PASSWORD, AWS_SECRET_ACCESS_KEY, ...): a literal value for one is refused unless the
# tier lists the name in ``notSecret``.
SECRET_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|PASS|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?|AUTH)"
    r"(_|$)"
)


def looks_secret(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret."""
    return bool(SECRET_NAME.search(name.upper()))


def find_refs(text: str) -> list[str]:
    """The references (``env:NAME`` or ``file:PATH``) in ``text``."""
    return [f"{kind}:{name}" for kind, name in ANY_REF.findall(text)]


class MissingSecretError(MlxctlError):
    """A referenced environment variable or file is missing."""


def _read_secret_file(path: str) -> str:
    """A secret file's stripped text: only a regular file, at most ``MAX_SECRET_BYTES``."""
    try:
        where = Path(path).expanduser()
    except RuntimeError as exc:  # ~nosuchuser
        raise OSError(str(exc)) from None
    return read_text_bounded(where, MAX_SECRET_BYTES).strip()


def resolve(
    text: str,
    environ: Mapping[str, str],
    *,
    where: str,
    read_file: Callable[[str], str] = _read_secret_file,
) -> str:
    """Replace every reference in ``text`` with its value."""

    def sub(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        if kind == "env":
            if name not in environ:
                raise MissingSecretError(f"{where}: environment variable {name} is not set")
            return environ[name]
        try:
            return read_file(name)
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8, a NUL in the path
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise MissingSecretError(f"{where}: cannot read secret file {name}: {reason}") from None

    return ANY_REF.sub(sub, text)


def digest(value: str) -> str:
    """A short digest that identifies a secret value without revealing it."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]
