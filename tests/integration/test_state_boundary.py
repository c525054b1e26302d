"""Issue 15, the state directory's boundary, for real (rows 5 and 8).

- ``down`` with ``MLXCTL_HOME`` pointing at a copy of a state directory touches none
  of the original's servers (the copy's records name them, with the right PID, start
  time, command line and instance marker: only the state marker tells them apart); the
  original's own ``down`` still stops them (a legitimately started server carries it).
- ``down`` on a read-only state directory still stops every server, then exits 9 with
  one line; a user's process (a ``sleep``) is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.integration.conftest import Mlxctl, free_ports, pid_alive, stack_yaml
from tests.integration.marked import ours

pytestmark = pytest.mark.integration

STORAGE = 9


def tier(name: str, port: int, model: Path) -> dict[str, object]:
    return {"name": name, "runtime": "mlx-lm", "model": {"path": str(model)}, "port": port}


@pytest.fixture
def sentinel() -> Iterator[subprocess.Popen[bytes]]:
    """A user's process that nothing of mlxctl's may signal."""
    proc = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def up(mlxctl: Mlxctl, model: Path, n: int) -> list[int]:
    ports = free_ports(n)
    tiers = [tier(f"t{i}", port, model) for i, port in enumerate(ports)]
    mlxctl.write("stack.yaml", stack_yaml(tiers))
    result = mlxctl.run("reconcile", "--once", str(mlxctl.stacks))
    assert result.returncode == 0, result.stdout + result.stderr
    pids = [int(r["pid"]) for r in mlxctl.inventory().values()]
    assert len(pids) == n and all(pid_alive(p) for p in pids)
    return pids


def test_down_through_a_copy_of_the_state_directory_touches_nothing_of_the_original(
    mlxctl: Mlxctl, tiny_model: Path, tmp_path: Path, sentinel: subprocess.Popen[bytes]
) -> None:
    pids = up(mlxctl, tiny_model, 1)
    members = {p.pid for p in ours(mlxctl)}
    copy = Mlxctl(home=tmp_path / "copy-home", stacks=mlxctl.stacks)
    shutil.copytree(mlxctl.home / "state", copy.home / "state", symlinks=True)

    seen = copy.run("status", "-o", "json")
    assert seen.returncode == 0, seen.stderr
    down = copy.run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Traceback" not in down.stderr
    assert all(pid_alive(p) for p in members), down.stdout + down.stderr
    assert {p.pid for p in ours(mlxctl)} == members

    own = mlxctl.run("down")
    assert own.returncode == 0, own.stdout + own.stderr
    assert not [p for p in pids if pid_alive(p)] and not ours(mlxctl)
    assert sentinel.poll() is None


@pytest.fixture
def read_only(mlxctl: Mlxctl) -> Iterator[Callable[[], Path]]:
    """Make ``mlxctl``'s state directory read-only once the test says so (a bind mount
    over itself, remounted read-only); unmounted whatever happens."""
    state = mlxctl.home / "state"
    mounted: list[Path] = []

    def make() -> Path:
        bound = subprocess.run(["mount", "--bind", str(state), str(state)], capture_output=True)
        if bound.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
        mounted.append(state)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        return state

    try:
        yield make
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_down_on_a_read_only_state_directory_stops_every_server(
    mlxctl: Mlxctl,
    tiny_model: Path,
    read_only: Callable[[], Path],
    sentinel: subprocess.Popen[bytes],
) -> None:
    pids = up(mlxctl, tiny_model, 2)
    assert len(ours(mlxctl)) == 4  # two servers, two log pumps
    state = read_only()
    probe = state / "probe"
    with pytest.raises(OSError):
        probe.write_text("x")

    down = mlxctl.run("down")
    assert down.returncode == STORAGE, down.stdout + down.stderr
    assert "Traceback" not in down.stderr, down.stderr
    errors = [line for line in down.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "read-only" in errors[0], down.stderr
    assert not [p for p in pids if pid_alive(p)], down.stdout + down.stderr
    assert not ours(mlxctl)
    assert sentinel.poll() is None
