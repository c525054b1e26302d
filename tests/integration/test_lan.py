"""The LAN of network namespaces the multi-host tests run on (tests/integration/lan.py):
hosts reach each other at their addresses, not through loopback, the test process
reaches them from a thread in a namespace, and everything goes away afterwards."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from tests.integration.conftest import free_port, pid_alive, wait_for
from tests.integration.lan import IP, Lan

FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
except OSError as exc:
    print("refused", type(exc).__name__)
"""


def fetch(url: str) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return int(answer.status)
    except (urllib.error.URLError, OSError) as exc:
        return f"refused {type(exc).__name__}"


def test_hosts_reach_each_other_only_at_their_addresses_and_all_of_it_is_removed(
    make_lan: Callable[..., Lan], tmp_path: Path
) -> None:
    lan = make_lan("a", "b")
    a, b = lan["a"], lan["b"]
    assert a.address != b.address and a.address.startswith("10.213.")
    (tmp_path / "www").mkdir()
    port = free_port()
    server = lan.start(
        "b",
        [sys.executable, "-m", "http.server", "--bind", b.address, str(port)],
        log=tmp_path / "http.log",
        env={"PATH": "/usr/bin:/bin"},
    )
    # ``ip netns exec`` execs: the PID kept is the server's own.
    assert "http.server" in " ".join(psutil.Process(server.pid).cmdline())
    url = f"http://{b.address}:{port}/"
    wait_for(lambda: lan.call("a", fetch, url) == 200, 15, "b's server from a's thread")
    # Another host reaches it over the LAN; on a's loopback nothing listens.
    assert lan.run("a", [sys.executable, "-c", FETCH, url]).stdout.strip() == "200"
    local = lan.run("a", [sys.executable, "-c", FETCH, f"http://127.0.0.1:{port}/"])
    assert local.stdout.startswith("refused"), local.stdout
    # The root namespace has no route to the LAN.
    assert str(fetch(url)).startswith("refused")
    # Each host has its own home and name for mlxctl.
    assert a.env()["MLXCTL_HOME"] != b.env()["MLXCTL_HOME"]
    assert b.env()["MLXCTL_HOST"] == "b"

    lan.down()
    assert not pid_alive(server.pid)
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    assert lan.prefix not in listed


def test_down_stops_the_children_of_what_it_started(
    make_lan: Callable[..., Lan], tmp_path: Path
) -> None:
    lan = make_lan("a")
    # A shell that starts a child in its own session and exits: the child is still in
    # a's namespace, and down() stops it by its PID from ``ip netns pids``.
    pid_file = tmp_path / "child.pid"
    lan.run("a", ["sh", "-c", f"setsid sleep 300 >/dev/null 2>&1 & echo $! > {pid_file}"])
    child = int(wait_for(lambda: pid_file.read_text().strip(), 5, "the child's pid"))
    assert pid_alive(child)
    lan.down()
    wait_for(lambda: not pid_alive(child), 5, "the orphan to be stopped")


@pytest.mark.parametrize("names", [("a", "b", "c")])
def test_every_host_gets_lo_and_one_address(
    make_lan: Callable[..., Lan], names: tuple[str, ...]
) -> None:
    lan = make_lan(*names)
    for host in lan.hosts.values():
        shown = lan.run(host.name, [IP, "-4", "-o", "addr", "show"]).stdout
        addresses = sorted(line.split()[3] for line in shown.splitlines())
        assert addresses == sorted(["127.0.0.1/8", f"{host.address}/24"])
        routes = lan.run(host.name, [IP, "route", "show", "default"]).stdout
        assert routes.strip() == ""
