"""A full disk, for real: the state directory on a 1 MiB tmpfs that the test fills up.

Servers started before the disk filled keep running. Then ``reconcile --once``, the
controller and ``down`` each give one clear line naming the path and "no space
left" (exit 9, ``docs/exit-codes.md``), never a traceback; ``down`` still stops every
server; and once there is space again, nothing half-written is trusted: the
inventory parses, no temporary file is left, the next ``down`` ends clean.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integration.conftest import (
    Mlxctl,
    free_ports,
    pid_alive,
    stack_yaml,
    tier_key_headers,
    wait_for,
)
from tests.integration.marked import ours

from mlxctl.runtimes.mlx_lm import DEFAULT_MODEL

pytestmark = pytest.mark.integration

STORAGE = 9


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """MLXCTL_HOME on its own 1 MiB tmpfs (requested before ``mlxctl``: unmounted after
    its cleanup has run ``down``)."""
    home = tmp_path / "home"
    home.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(home)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield home
    finally:
        (home / "filler").unlink(missing_ok=True)
        subprocess.run(["umount", "-l", str(home)], check=False)


def fill(disk: Path) -> None:
    """Write zeros until the file system refuses one more byte."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    try:  # the last partial page
        while os.write(fd, b"\0"):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def tier(name: str, port: int, model: Path) -> dict[str, object]:
    return {"name": name, "runtime": "mlx-lm", "model": {"path": str(model)}, "port": port}


def one_error_line(stderr: str, disk: Path) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    [line] = errors
    assert str(disk) in line and "no space left on device" in line, line
    return line


def test_a_full_disk_gives_one_line_and_down_still_stops_every_server(
    small_disk: Path, mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path
) -> None:
    a, b, c = free_ports(3)
    mlxctl.write("stack.yaml", stack_yaml([tier("a", a, tiny_model), tier("b", b, tiny_model)]))
    up = mlxctl.run("reconcile", "--once", str(mlxctl.stacks))
    assert up.returncode == 0, up.stdout + up.stderr
    pids = [int(r["pid"]) for r in mlxctl.inventory().values()]
    assert len(pids) == 2

    fill(small_disk)
    stack = [tier("a", a, tiny_model), tier("b", b, tiny_model), tier("c", c, tiny_model)]
    mlxctl.write("stack.yaml", stack_yaml(stack))

    # reconcile --once: one line, exit 9, nothing started that it could not record.
    once = mlxctl.run("reconcile", "--once", str(mlxctl.stacks))
    assert once.returncode == STORAGE, once.stdout + once.stderr
    one_error_line(once.stderr, small_disk)
    assert all(pid_alive(p) for p in pids)
    assert "c" not in mlxctl.inventory() and len(ours(mlxctl)) == 2  # the 2 servers
    # And they still serve: mlx_lm.server logs every request, and a log write the disk
    # refuses is dropped (runtimes.server_log), never raised into the request.
    # 60 requests: past what the last, partly filled page of each log still holds.
    for name, port in [("a", a), ("b", b)] * 30:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": DEFAULT_MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 1,
            },
            headers=tier_key_headers(mlxctl, name),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text

    # The controller: takes the lock, says why a pass failed in one line, keeps running.
    log = tmp_path / "controller.log"
    ctl = mlxctl.start("reconcile", str(mlxctl.stacks), "--interval", "2", log=log)
    wait_for(lambda: "no space left on device" in log.read_text(), 60, "the controller's line")
    time.sleep(2.5)  # a later pass fails the same way: still running, still one line each
    assert ctl.poll() is None, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()
    ctl.send_signal(signal.SIGTERM)
    assert ctl.wait(30) == 0, log.read_text()

    # down: every server stopped although nothing can be recorded.
    down = mlxctl.run("down")
    assert down.returncode == STORAGE, down.stdout + down.stderr
    one_error_line(down.stderr, small_disk)
    assert not [p for p in pids if pid_alive(p)]
    assert not ours(mlxctl), [p.pid for p in ours(mlxctl)]

    # Space again: nothing half-written is left or trusted; the next down ends clean.
    (small_disk / "filler").unlink()
    state = small_disk / "state"
    assert not [p.name for p in state.iterdir() if p.name.endswith(".tmp")]
    json.loads((state / "inventory.json").read_text())
    again = mlxctl.run("down")
    assert again.returncode == 0, again.stdout + again.stderr
    assert mlxctl.inventory() == {}
    # An event line the disk cut short stays on a line of its own, and is skipped.
    lines = (state / "events.jsonl").read_text().splitlines()
    torn = [line for line in lines if line and not _parses(line)]
    assert len(torn) <= 1, torn
    shown = mlxctl.run("events", "-o", "json", "--tail", "500")
    assert shown.returncode == 0, shown.stderr
    kinds = [json.loads(line)["kind"] for line in shown.stdout.splitlines()]
    assert len(kinds) == len(lines) - len(torn) and kinds[-1] == "forget"


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
