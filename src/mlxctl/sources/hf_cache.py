"""The shared Hugging Face hub cache, located as huggingface_hub locates it.

Written out (a few environment variables) rather than imported, because importing
huggingface_hub costs ~0.45 s (measured here) on the ``status`` path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def hub_cache(environ: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache directory, resolved as huggingface_hub does."""
    env = os.environ if environ is None else environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    cache = Path(env.get("XDG_CACHE_HOME") or Path(env.get("HOME", "~")) / ".cache").expanduser()
    return cache / "huggingface" / "hub"


def hf_snapshot(
    repo: str, revision: str = "main", environ: Mapping[str, str] | None = None
) -> Path:
    """The snapshot directory of ``repo`` at ``revision`` in the shared cache.

    The cache keeps ``models--ORG--NAME/refs/REVISION`` (a commit hash) and
    ``snapshots/COMMIT/``; when the ref is not there yet, the repo's directory is
    returned, which holds no ``config.json``, so the model counts as absent.
    """
    base = hub_cache(environ) / f"models--{repo.replace('/', '--')}"
    try:
        commit = (base / "refs" / revision).read_text(encoding="utf-8").strip()
    except OSError:
        return base
    return base / "snapshots" / commit
