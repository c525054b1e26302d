"""What every benchmark runner needs: a free loopback port, a results file with its machine,
and the processes it started stopped by their PIDs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Every process a runner starts, each stopped by its PID when the runner ends.

    Each child leads its own process group (``start_new_session``); stopping it sends
    SIGTERM to that group, SIGKILL after ``grace`` seconds, then SIGKILL to any of its
    descendants (noted before the stop, matched by PID and start time) that left the
    group. Used as a context manager, with SIGTERM and SIGHUP turned into ``SystemExit``
    (and SIGINT into ``KeyboardInterrupt``, even where the runner started with it
    ignored) so a runner that is killed, not only one that fails, stops them too.
    """

    def __init__(self, grace: float = 15.0) -> None:
        self.grace = grace
        self.started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        handle = log.open("wb")
        proc = subprocess.Popen(
            argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append((proc, handle))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        import psutil

        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for child in descendants:  # is_running() compares the start time too
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()

    def stop_all(self) -> None:
        for proc, handle in reversed(self.started):
            self.stop(proc)
            handle.close()
        self.started = []

    def __enter__(self) -> Processes:
        def leave(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, leave)
        # Also when started in the background by a script, which ignores SIGINT for it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def __exit__(self, *_exc: object) -> None:
        # A second Ctrl-C or SIGTERM must not cut the stopping short.
        stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        for sig in stopping:
            signal.signal(sig, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            for sig in stopping:
                signal.signal(
                    sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
                )


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
