"""Small mechanisms: arg rendering, gateway config, secrets, inventory, lock, logs, events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxctl.apply.events import Event, EventLog, read_events
from mlxctl.errors import StateLockHeldError
from mlxctl.files import rotate
from mlxctl.machine.inventory import Inventory, write_atomic
from mlxctl.machine.logfiles import open_log, tail
from mlxctl.machine.record import Record
from mlxctl.paths import default_paths
from mlxctl.plan.backoff import BackoffPolicy
from mlxctl.reconcile.state_lock import StateLock
from mlxctl.runtimes.base import render_args
from mlxctl.runtimes.gateway import RemoteRoute, Route, parse_config, render_config
from mlxctl.spec import secrets


def test_args_render_sorted_with_bare_and_omitted_flags() -> None:
    args = {"trust-remote-code": True, "max-tokens": 4096, "draft": None, "quiet": False}
    assert render_args(args) == ["--max-tokens", "4096", "--trust-remote-code"]


def test_gateway_config_pins_each_name_to_its_tier_and_holds_no_secret() -> None:
    routes = [
        Route(name="b", port=8002, served_model="b"),
        Route(name="a", port=8001, served_model="default_model", aliases=("gpt-4o-mini",)),
    ]
    remote = RemoteRoute(
        name="cloud", model="openrouter/x/y", api_key_env="MLXCTL_REMOTE_KEY_CLOUD"
    )
    text = render_config(routes, remotes=[remote], fallbacks={"a": ["b", "cloud"], "b": []})
    config = parse_config(text)
    assert [r.name for r in config.routes] == ["a", "b"]
    assert config.public_names() == {"a": "a", "b": "b", "gpt-4o-mini": "a"}
    assert config.fallbacks == {"a": ("b", "cloud")}  # an empty list is left out
    assert json.loads(text)["remotes"][0]["api_key_env"] == "MLXCTL_REMOTE_KEY_CLOUD"
    # Same routes in another order: the same bytes (no needless reload).
    assert render_config(routes[::-1], remotes=[remote], fallbacks={"a": ["b", "cloud"]}) == text


def test_secret_references_resolve_and_report_missing() -> None:
    assert secrets.resolve("a-${env:X}-b", {"X": "1"}, where="w") == "a-1-b"
    assert secrets.resolve("${file:/k}", {}, where="w", read_file=lambda p: "s3") == "s3"
    with pytest.raises(secrets.MissingSecretError, match="w: environment variable Y is not set"):
        secrets.resolve("${env:Y}", {}, where="w")
    assert secrets.digest("s3") == secrets.digest("s3") != secrets.digest("s4")


def test_backoff_schedule_is_data() -> None:
    policy = BackoffPolicy()
    assert [policy.delay(n) for n in range(1, 9)] == [0, 10, 20, 40, 80, 160, 300, 300]
    # A service that crash-loops for days stays at the cap (the count may reach 2**31;
    # the hand-written schedule overflowed a float at crash #1026).
    assert policy.delay(1026) == policy.delay(1 << 31) == 300
    assert policy.count_after_crash(5, uptime=599) == 6
    assert policy.count_after_crash(5, uptime=600) == 1


def test_inventory_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "inventory.json")
    assert inv.load() == {}
    rec = Record("fast", "tier", 10, 10, 1.5, ("python", "-m"), "abc", "v1:x", 8001, "/l", 2.0)
    inv.put(rec)
    assert inv.load() == {"fast": rec}
    inv.remove("fast")
    assert inv.load() == {}
    assert [p.name for p in tmp_path.iterdir()] == ["inventory.json"]


def test_write_atomic_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "k"
    write_atomic(target, "x", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600


def test_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    path = tmp_path / "reconcile.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path;"
            "from mlxctl.reconcile.state_lock import StateLock;"
            f"l=StateLock(Path({str(path)!r}), 'mlxctl reconcile'); l.acquire();"
            "print('held', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(
            StateLockHeldError, match=f"pid {holder.pid} \\(mlxctl reconcile\\) since"
        ):
            StateLock(path).acquire()
    finally:
        holder.communicate("\n", timeout=30)
    with StateLock(path):
        pass


def test_logs_rotate_by_size_and_tail(tmp_path: Path) -> None:
    log = tmp_path / "fast.log"
    log.write_bytes(b"x" * 100)
    assert not rotate(log, max_bytes=200, keep=2)
    assert rotate(log, max_bytes=50, keep=2)
    assert not log.exists() and (tmp_path / "fast.log.1").exists()
    with open_log(log, ["srv", "--port", "1"], 0.0) as handle:
        handle.write(b"one\ntwo\n")
    assert tail(log, 2) == ["one", "two"]
    assert tail(log, 5)[0].startswith("--- mlxctl ") and "srv --port 1" in tail(log, 5)[0]


def test_events_append_and_read_back_newest_last(tmp_path: Path) -> None:
    seen: list[Event] = []
    log = EventLog(tmp_path / "events.jsonl", [seen.append])
    for i in range(3):
        log.emit(Event(float(i), "start", f"t{i}", "new tier", "ok"))
    assert [e.target for e in read_events(tmp_path / "events.jsonl", 2)] == ["t1", "t2"]
    assert len(seen) == 3


def test_paths_follow_mlxctl_home_then_xdg() -> None:
    assert default_paths({"MLXCTL_HOME": "/h"}).stacks == Path("/h/config/stacks")
    xdg = default_paths({"HOME": "/u", "XDG_STATE_HOME": "/s"})
    assert xdg.stacks == Path("/u/.config/mlxctl/stacks") and xdg.state == Path("/s/mlxctl")
    assert os.sep == "/"


def test_hub_snapshot_follows_the_cache_layout(tmp_path: Path) -> None:
    from mlxctl.sources.hf_cache import hf_snapshot, hub_cache

    assert hub_cache({"HF_HOME": "/hf"}) == Path("/hf/hub")
    assert hub_cache({"HF_HUB_CACHE": "/c", "HF_HOME": "/hf"}) == Path("/c")
    assert hub_cache({"HOME": "/u"}) == Path("/u/.cache/huggingface/hub")
    env = {"HF_HUB_CACHE": str(tmp_path)}
    repo = tmp_path / "models--mlx-community--Qwen3-8B-4bit"
    assert hf_snapshot("mlx-community/Qwen3-8B-4bit", environ=env) == repo
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123" * 6 + "abcd\n")  # a commit id
    snapshot = repo / "snapshots" / ("abc123" * 6 + "abcd")
    assert hf_snapshot("mlx-community/Qwen3-8B-4bit", environ=env) == snapshot


def test_a_server_rotates_its_own_log_in_place_and_loses_no_line(tmp_path: Path) -> None:
    """What every server mlxctl starts does in its own process (runtimes.server_log): the
    descriptor it writes to is pointed at a new file once the log passes its size. Every
    line is whole and in order across the generations kept; older ones are dropped."""
    from mlxctl.runtimes.server_log import Rotation

    log = tmp_path / "fast.log"
    with open_log(log, ["srv"], 0.0) as handle:
        fd = os.dup(handle.fileno())  # the server's stdout, as it inherits it
    rotation = Rotation(log, (fd,), max_bytes=4096, keep=3)
    lines = [f"line {i:04d} {'x' * 40}\n".encode() for i in range(400)]
    rotated = 0
    try:
        for line in lines:
            os.write(fd, line)
            rotated += rotation.rotate_if_due()
    finally:
        os.close(fd)
    assert rotated == 4  # 400 x 51 bytes (and the banner) past 4096 bytes, four times
    files = [tmp_path / "fast.log.3", tmp_path / "fast.log.2", tmp_path / "fast.log.1", log]
    assert all(f.exists() for f in files) and not (tmp_path / "fast.log.4").exists()
    kept = b"".join(f.read_bytes() for f in files).splitlines(keepends=True)
    assert kept == lines[-len(kept) :]  # the newest lines, in order, none lost or torn
    assert all(f.stat().st_size <= 4096 + len(lines[0]) for f in files)


def test_a_log_another_instance_rotated_is_left_alone(tmp_path: Path) -> None:
    """An old instance still writing (a gateway handing over to its replacement) holds
    a file the new instance's start rotated away: it never renames the new one's log."""
    from mlxctl.runtimes.server_log import Rotation

    log = tmp_path / "gateway.log"
    with open_log(log, ["old"], 0.0) as handle:
        fd = os.dup(handle.fileno())
    try:
        os.write(fd, b"x" * 200)
        os.replace(log, tmp_path / "gateway.log.1")  # the new instance's start rotated it
        log.write_bytes(b"y" * 200)
        assert not Rotation(log, (fd,), max_bytes=100).rotate_if_due()
    finally:
        os.close(fd)
    assert log.read_bytes() == b"y" * 200 and not (tmp_path / "gateway.log.2").exists()
