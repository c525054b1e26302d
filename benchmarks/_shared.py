"""What every benchmark runner needs: a free loopback port and a results file with its machine."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_results(path: Path, key: str, data: Any) -> None:
    """``{"meta": {python, cpus, when}, key: data}``: the numbers and the machine that made them."""
    meta = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d"),
    }
    path.write_text(json.dumps({"meta": meta, key: data}, indent=2) + "\n")
