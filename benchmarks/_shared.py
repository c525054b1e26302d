"""What every benchmark runner needs: a free loopback port and a results file with its machine."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
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


class BackToBack(threading.Thread):
    """A client sending one request after another, no retries; records (time, ok) for each.

    One keep-alive connection (httpx's pool), as a chat client or agent holds one: what it
    sees while a gateway is replaced is what a user would.
    """

    def __init__(self, url: str, key: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.body = url, key, body
        self.results: list[tuple[float, bool]] = []
        self.done = threading.Event()

    def run(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(headers=headers, timeout=30) as client:
            while not self.done.is_set():
                try:
                    r = client.post(f"{self.url}/v1/chat/completions", json=self.body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.results.append((time.monotonic(), ok))
                if not ok:
                    time.sleep(0.01)

    def summary(self) -> dict[str, Any]:
        failed = [t for t, ok in self.results if not ok]
        window = (failed[-1] - failed[0]) if failed else 0.0
        return {"requests": len(self.results), "failed": len(failed), "window_s": round(window, 2)}
