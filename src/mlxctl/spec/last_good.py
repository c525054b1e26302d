"""The last valid version of each stack file, kept in the state directory.

Flux and Argo CD keep applying the last good revision while a new one is broken;
mlxctl does the same per file: each time a file validates, its text is saved here,
and while it is invalid (a typo, a save in progress) this copy stands in for it. The
copy outlives the controller, so a restart with a broken file still heals what the
file last asked for, and ``status`` (another process) applies the same rule.

A copy is a state file, read like every other one: a regular file, bounded (a FIFO or
``/dev/zero`` in its place is no copy, never a hang), holding a JSON object with the
text. Anything else is no copy at all; the stack file itself is then the only source.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from mlxctl.errors import storage_error
from mlxctl.files import read_text_bounded

# A stack file is at most 1 MiB (mlxctl.spec.loader); JSON escaping can grow it.
MAX_COPY_BYTES = 8 * 1024 * 1024


class LastGood:
    """One JSON file per stack file, named by a digest of its absolute path."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _file(self, path: Path) -> Path:
        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        return self.directory / f"{key}.json"

    def read(self, path: Path) -> str | None:
        try:
            data = json.loads(read_text_bounded(self._file(path), MAX_COPY_BYTES))
        except (OSError, ValueError, RecursionError):
            return None
        text = data.get("text") if isinstance(data, dict) else None
        return text if isinstance(text, str) else None

    def save(self, path: Path, text: str) -> None:
        """Store ``text`` as the last valid version of ``path`` (atomically; unchanged
        text is not rewritten)."""
        if self.read(path) == text:
            return
        payload = json.dumps({"path": str(path.resolve()), "text": text})
        target = self._file(path)
        tmp: str | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload)
            os.replace(tmp, target)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            full = storage_error(exc, target)  # a full disk is one line, exit 9
            if full is None:
                raise
            raise full from exc
