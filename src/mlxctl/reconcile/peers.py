"""The peer watcher: the other members' ranks of distributed tiers, asked in the background.

A pass never waits for another machine, so, as the health monitor does for probes,
one watcher thread per member host asks that host's gateway for its controller's
rank states (``GET /mlxctl/ranks`` with the stack's key) every ``interval`` seconds,
keeps the latest answer, and triggers a pass when an answer changes what the planner
would read (a member's rank died, a member became ready to start). The planner reads
the answers through :meth:`PeerWatcher.sample` (:class:`~mlxctl.observe.peers.PeerSource`).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlxctl.desired.state import DesiredState
from mlxctl.machine import peer_http
from mlxctl.observe.peers import MAX_ANSWER_BYTES, PATH, parse_ranks, unknown, unreachable
from mlxctl.observe.state import PeerRank
from mlxctl.runtimes.gateway import MASTER_KEY_ENV
from mlxctl.spec import secrets

# How often each member is asked, and how long an answer may take: a member's rank that
# died is seen here within about one interval (docs/multi-host.md has the figures).
PEER_INTERVAL = 0.5
PEER_TIMEOUT = 2.0

Fetch = Callable[[str, str, str, float, int], tuple[int, bytes]]


@dataclass(frozen=True)
class _Target:
    url: str
    key: str


class PeerWatcher:
    def __init__(
        self,
        on_change: Callable[[str], None],
        environ: Mapping[str, str],
        *,
        interval: float = PEER_INTERVAL,
        timeout: float = PEER_TIMEOUT,
        fetch: Fetch = peer_http.get,
    ) -> None:
        self.on_change = on_change
        self.environ = environ
        self.interval = interval
        self.timeout = timeout
        self.fetch = fetch
        self._lock = threading.Lock()
        # Per member host: what it asks, the event that stops its thread, its last answer
        # (ranks by tier, or why it could not be asked).
        self._targets: dict[str, _Target] = {}
        self._stops: dict[str, threading.Event] = {}
        self._answers: dict[str, dict[str, PeerRank] | str] = {}

    # -- PeerSource ---------------------------------------------------------------------

    def sample(self, desired: DesiredState | None) -> Mapping[str, Mapping[str, PeerRank]]:
        wanted, key = self._wanted(desired)
        self._watch({host: _Target(url, key) for host, url in wanted.items()})
        out: dict[str, dict[str, PeerRank]] = {}
        with self._lock:
            for service in desired.tiers if desired is not None else ():
                if service.group is None:
                    continue
                seen = out.setdefault(service.name, {})
                for host in service.group.others:
                    answer = self._answers.get(host)
                    if answer is None:
                        continue  # not heard from yet
                    if isinstance(answer, str):
                        seen[host] = unreachable(host, answer)
                    else:
                        seen[host] = answer.get(service.name) or unknown(host)
        return out

    def stop(self) -> None:
        with self._lock:
            for event in self._stops.values():
                event.set()
            self._stops.clear()
            self._targets.clear()

    # -- targets ------------------------------------------------------------------------

    def _wanted(self, desired: DesiredState | None) -> tuple[dict[str, str], str]:
        """Member host -> its gateway URL, for every distributed tier's other members,
        and the key their gateways want (the stack's, as this machine's gateway has it)."""
        wanted: dict[str, str] = {}
        for service in desired.tiers if desired is not None else ():
            if service.group is not None:
                wanted |= {h: service.group.peers[h] for h in service.group.others
                           if h in service.group.peers}  # fmt: skip
        key = ""
        gateway = desired.gateway if desired is not None else None
        ref = dict(gateway.env).get(MASTER_KEY_ENV, "") if gateway is not None else ""
        if wanted and ref:
            try:
                key = secrets.resolve(ref, self.environ, where="gateway: masterKey")
            except secrets.MissingSecretError:
                key = ""  # the members' gateways refuse us: said in their answers' state
        return wanted, key

    def _watch(self, targets: Mapping[str, _Target]) -> None:
        with self._lock:
            for host in list(self._stops):
                if self._targets.get(host) != targets.get(host):
                    self._stops.pop(host).set()
                    self._targets.pop(host, None)
                    self._answers.pop(host, None)
            new = [h for h in targets if h not in self._stops]
            for host in new:
                self._targets[host] = targets[host]
                self._stops[host] = threading.Event()
        for host in new:
            threading.Thread(
                target=self._watch_one,
                args=(host, targets[host], self._stops[host]),
                name=f"mlxctl-peer-{host}",
                daemon=True,
            ).start()

    # -- one member -----------------------------------------------------------------------

    def ask(self, host: str, target: _Target) -> dict[str, PeerRank] | str:
        """One question to ``host``'s gateway: its ranks by tier, or why there is none."""
        try:
            status, raw = self.fetch(target.url, PATH, target.key, self.timeout, MAX_ANSWER_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            return f"{target.url}: {str(exc) or type(exc).__name__}"[:300]
        if status != 200:
            text = " ".join(raw[:200].decode(errors="replace").split())
            return f"{target.url}{PATH} answered {status}: {text}"
        try:
            return parse_ranks(host, raw)
        except ValueError as exc:
            return f"{target.url}{PATH}: {exc}"

    def _watch_one(self, host: str, target: _Target, stop: threading.Event) -> None:
        while not stop.is_set():
            answer = self.ask(host, target)
            with self._lock:
                if stop.is_set():
                    return
                before = self._answers.get(host)
                self._answers[host] = answer
            if _changed(before, answer):
                self.on_change(f"the ranks on {host} changed")
            stop.wait(self.interval)


def _changed(before: dict[str, PeerRank] | str | None, after: dict[str, PeerRank] | str) -> bool:
    """An answer that changes what the planner decides: a rank's state, generation,
    readiness or failure; not the wording of why (a backoff's seconds left, an error
    text), which the next pass reads anyway."""
    if isinstance(before, str) or isinstance(after, str) or before is None:
        return isinstance(before, str) != isinstance(after, str) or before is None

    def decisive(ranks: dict[str, PeerRank]) -> dict[str, tuple[object, ...]]:
        return {
            tier: (r.state, r.generation, r.ready, r.can_start, r.failed)
            for tier, r in ranks.items()
        }

    return decisive(before) != decisive(after)
