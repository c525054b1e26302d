"""A LAN of Linux network namespaces: several "hosts" on one machine, for the tests of
several machines from one repo (docs/multi-host.md).

Each host is a network namespace this module creates, named after this process's PID
and a counter (so concurrent test runs never share one), with ``lo`` up and one veth
pair to a bridge that lives in a namespace of its own. Addresses (``10.213.<subnet>.<i>``)
are assigned inside the host namespaces only: nothing is added to the root namespace,
no namespace has a default route, and so the only traffic is between these addresses
and on each namespace's loopback. (Two runs may pick the same ``<subnet>``: their LANs
are separate bridges in separate namespaces and never meet.)

Processes in the namespaces share this machine's PID space and filesystem: a process
"on host A" is ``ip netns exec A ...`` (which execs, so its PID is the command's), and
each host gets its own directory, ``MLXCTL_HOME`` and ``MLXCTL_HOST``. The test process
itself reaches a host's addresses from a thread that entered that host's namespace
(:meth:`Lan.call`): network namespaces are per thread on Linux.

``down()`` stops every process it started by PID (SIGTERM, then SIGKILL), then every
process still in one of its namespaces (started by those, e.g. a controller's model
servers, listed by ``ip netns pids``), then deletes the namespaces, which deletes
their links.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

IP = shutil.which("ip") or "/usr/sbin/ip"
# setns(2) flag: join a network namespace (the calling thread only).
CLONE_NEWNET = 0x40000000
_counter = itertools.count()
T = TypeVar("T")


class LanUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, no kernel support)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _enter(netns: str) -> None:
    """Move the calling thread into network namespace ``netns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{netns}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")


@dataclass
class Host:
    """One machine of the LAN."""

    name: str
    netns: str
    address: str
    # Its own directory (MLXCTL_HOME and whatever else the test keeps per host).
    dir: Path
    _pool: ThreadPoolExecutor | None = None

    @property
    def home(self) -> Path:
        return self.dir / "home"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment as this host's processes see it: its own
        ``MLXCTL_HOME`` and ``MLXCTL_HOST`` (every namespace shares the hostname)."""
        return {
            **os.environ,
            "MLXCTL_HOME": str(self.home),
            "MLXCTL_HOST": self.name,
            "PYTHONUNBUFFERED": "1",
            **(extra or {}),
        }

    def argv(self, *command: str) -> list[str]:
        """``command`` run on this host."""
        return [IP, "netns", "exec", self.netns, *command]


@dataclass
class Lan:
    """Hosts joined by a bridge; ``up()`` builds it, ``down()`` removes all of it."""

    names: Sequence[str]
    root: Path
    # The third octet of this LAN's addresses (and part of its namespaces' names).
    subnet: int = field(default_factory=lambda: (os.getpid() + next(_counter)) % 250 + 1)
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    # Cleanups that must run while the namespaces still exist (``mlxctl down`` inside one).
    before_down: list[Callable[[], None]] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def prefix(self) -> str:
        return f"mx{os.getpid()}-{self.subnet}"

    @property
    def bridge_netns(self) -> str:
        return f"{self.prefix}-lan"

    def up(self) -> Lan:
        if os.geteuid() != 0:
            raise LanUnavailable(f"this needs root (running as uid {os.geteuid()})")
        if not os.path.exists(IP):
            raise LanUnavailable(f"no {IP} (iproute2)")
        try:
            self._add_netns(self.bridge_netns)
        except RuntimeError as exc:
            raise LanUnavailable(str(exc)) from exc
        _ip("-n", self.bridge_netns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_netns, "link", "set", "br0", "up")
        for index, name in enumerate(self.names, start=1):
            netns = f"{self.prefix}-{name}"
            self._add_netns(netns)
            _ip("-n", netns, "link", "set", "lo", "up")
            port = f"p{index}"
            _ip("link", "add", "eth0", "netns", netns, "type", "veth",
                "peer", "name", port, "netns", self.bridge_netns)  # fmt: skip
            _ip("-n", self.bridge_netns, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge_netns, "link", "set", port, "up")
            address = f"10.213.{self.subnet}.{index}"
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", netns, "link", "set", "eth0", "up")
            directory = self.root / name
            directory.mkdir(parents=True, exist_ok=True)
            self.hosts[name] = Host(name, netns, address, directory)
        return self

    def _add_netns(self, netns: str) -> None:
        _ip("netns", "add", netns)
        self._made.append(netns)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def start(
        self, host: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start ``argv`` on ``host`` (output to ``log``); stopped by PID in ``down()``."""
        the_host = self.hosts[host]
        handle = open(log, "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            the_host.argv(*argv),
            env=dict(env) if env is not None else the_host.env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
        handle.close()
        with self._lock:
            self.procs.append(proc)
        return proc

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` to its end."""
        the_host = self.hosts[host]
        return subprocess.run(
            the_host.argv(*argv),
            env=dict(env) if env is not None else the_host.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def call(self, host: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args)`` in a thread of this process that lives in ``host``'s namespace
        (one thread per host, kept: a client made there keeps its connections there)."""
        the_host = self.hosts[host]
        if the_host._pool is None:
            the_host._pool = ThreadPoolExecutor(
                max_workers=1, initializer=_enter, initargs=(the_host.netns,)
            )
        return the_host._pool.submit(fn, *args, **kwargs).result()

    def down(self) -> None:
        """Remove everything ``up()`` made, whatever state the test left it in."""
        for cleanup in reversed(self.before_down):
            # The namespaces must go whatever happened in a cleanup before them.
            with suppress(Exception):
                cleanup()
        for proc in self.procs:
            stop_gracefully(proc)
        for netns in self._made:
            for pid in _netns_pids(netns):
                _kill(pid)
        for host in self.hosts.values():
            if host._pool is not None:
                host._pool.shutdown(wait=False, cancel_futures=True)
        for netns in reversed(self._made):
            _ip("netns", "del", netns, check=False)
        self._made.clear()


def stop_gracefully(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s: how the tests end a process they started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _netns_pids(netns: str) -> list[int]:
    result = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def _kill(pid: int) -> None:
    with suppress(psutil.Error):
        psutil.Process(pid).kill()


@contextmanager
def lan_of(names: Sequence[str], root: Path) -> Iterator[Lan]:
    """A LAN of hosts ``names`` under ``root``, removed on the way out (also on failure)."""
    lan = Lan(names, root)
    try:
        yield lan.up()
    finally:
        lan.down()
