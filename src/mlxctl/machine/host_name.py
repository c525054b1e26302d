"""Which of the stack's hosts this machine is (docs/multi-host.md).

Every machine runs its own controller on the same stack files; each reconciles only
the tiers placed on it, so it must know its own name: ``--host`` (which the CLI puts
in ``MLXCTL_HOST``), else ``MLXCTL_HOST``, else the short hostname (``studio`` of
``studio.local``), lower-cased as stack names are.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

HOST_ENV = "MLXCTL_HOST"


def local_host(environ: Mapping[str, str]) -> str:
    """This machine's name among ``spec.hosts``."""
    named = environ.get(HOST_ENV, "").strip()
    if named:
        return named
    return socket.gethostname().split(".")[0].lower()


def how_named(environ: Mapping[str, str]) -> str:
    """Where :func:`local_host` took the name from, for messages."""
    return f"${HOST_ENV}" if environ.get(HOST_ENV, "").strip() else "the hostname"
