"""A planned restart cuts no request (issue 17): a real controller (``mlxctl reconcile``),
the real gateway and a real ``mlx_lm.server`` tier, 16 streaming OpenAI SDK clients, and
an ``args`` edit to the tier while they stream.

The planner drains the tier first (verdict ``draining``): the gateway holds its new
requests, the running streams finish, then the restart goes and the held requests are
served by the new process. Every process the test starts is stopped by PID (the
controller) or by ``mlxctl down`` and then by recorded PID (the ``mlxctl`` fixture).

The streams outlast the edit by construction, not by luck:

- the tier serves a model the test builds whose answer is one token repeated, never
  ending its turn (:func:`~mlxctl.testing.tiny_model.build_repeat_model`), so a stream
  runs to its ``max_tokens`` whatever the model's noise would have sampled;
- the edit is timed from the streams' own progress: they are asked for
  :data:`STREAM_SECONDS` of generation at the rate measured just before (the tier's own
  streams, as many at once), and the edit lands when, at the rate they streamed in the
  last seconds, :data:`LEFT_SECONDS` of it is left: longer than the gateway takes to
  learn of the drain (the controller's file watch, a pass, then the gateway's next
  report: 0.3-1.6 s here) and shorter than the stop's grace (10 s), past which the
  restart would go anyway and cut them. The rate on these shared 2 cores changes 3-4x
  within a minute (49-353 tokens/s a stream measured in consecutive runs), so a length
  fixed in tokens, or in seconds at a rate measured once, ended before the gateway held
  on some runs (the fixed 1000 tokens of before made the test skip) and would outlast
  the grace on others;
- the overlap is asserted, not assumed: while the streams run, the gateway says the
  tier is draining (its ``mlxctl_gateway_tier_state`` metric: the controller's verdict,
  with which it holds the tier's new requests) with every one of them in flight, and the
  old process is alive; the process is then replaced (a new PID) and the requests held
  meanwhile are answered by the new one. (The controller's plan, ``mlxctl diff``, says
  ``draining`` at once, but the gateway learns it at its next report, a second or two
  later: a request sent in between still goes to the old process.)

Switched off (``drained()`` of the planner returning True at once), the restart goes
on the edit and the streams at the tier are cut: the first assertion fails.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.conftest import (
    Mlxctl,
    events,
    free_ports,
    pid_alive,
    stack_yaml,
    wait_for,
)

pytestmark = pytest.mark.integration
MSG: Any = [{"role": "user", "content": "Hello"}]
CLIENTS = 16
# Seconds of generation asked of each stream at the tier, at the rate measured just
# before (twice what is left at the edit: the rate measured may be half the real one),
# and the seconds of it left, at the rate it streams, when the edit lands (see above): a
# machine twice as fast or twice as slow meanwhile still leaves 2-8 s.
STREAM_SECONDS = 10.0
LEFT_SECONDS = 4.0
# Seconds over which the streams' rate is taken (chunks come in bursts on a busy machine).
RATE_WINDOW = 2.0
# Tokens of each stream that measures the rate, and of each stream queued at the gate
# (they are served by the new process; their length proves nothing more).
PROBE_TOKENS = 200
QUEUED_TOKENS = 40
CONTEXT = 8192
TICK = "tick "


class Stream(threading.Thread):
    """One streamed answer read to its end; records its chunks, finish reason and error."""

    def __init__(self, sdk: openai.OpenAI, tokens: int) -> None:
        super().__init__(daemon=True)
        self.sdk, self.tokens = sdk, tokens
        self.first_token = threading.Event()
        self.chunks = 0
        self.finish: str | None = None
        self.tokens_out: int | None = None
        self.began = 0.0
        self.last = 0.0
        self.times: list[float] = []  # each content chunk's arrival
        self.ended = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            stream = self.sdk.chat.completions.create(
                model="fast",
                messages=MSG,
                max_tokens=self.tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    self.chunks += 1
                    self.last = time.time()
                    self.times.append(self.last)
                    if not self.first_token.is_set():
                        self.began = self.last
                    self.first_token.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    self.finish = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    self.tokens_out = chunk.usage.completion_tokens
        except BaseException as exc:  # kept for the test to report
            self.error = exc
        finally:
            self.ended = time.time()
            self.first_token.set()


def run_all(streams: list[Stream], timeout: float = 120) -> None:
    for stream in streams:
        stream.start()
    for stream in streams:
        stream.join(timeout)


def tokens_per_second(sdk: openai.OpenAI, clients: int) -> float:
    """A stream's rate (tokens a second, the median) with ``clients`` streams at once
    through the gateway, once the tier has warmed up (its first requests are slower)."""
    run_all([Stream(sdk, 8) for _ in range(clients)])
    probes = [Stream(sdk, PROBE_TOKENS) for _ in range(clients)]
    run_all(probes)
    assert all(p.error is None and p.chunks == PROBE_TOKENS for p in probes), [
        (p.chunks, repr(p.error)) for p in probes
    ]
    return statistics.median((p.chunks - 1) / max(p.last - p.began, 1e-3) for p in probes)


def tier(model: Path, port: int, max_tokens: int, concurrency: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "fast",
        "runtime": "mlx-lm",
        "model": {"path": str(model)},
        "port": port,
        "args": {"max-tokens": max_tokens},
    }
    if concurrency is not None:
        spec["concurrency"] = concurrency
    return spec


def serving(url: str, key: str) -> bool:
    try:
        r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def gauges(url: str, key: str) -> dict[str, float]:
    """The tier's gauges from the gateway's ``/metrics``: in flight, queued, and
    ``state:<state>`` for its state."""
    r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.labels.get("tier") != "fast":
                continue
            if sample.name == "mlxctl_gateway_tier_state":
                out[f"state:{sample.labels['state']}"] = sample.value
            elif sample.name.endswith(("_in_flight_requests", "_queued_requests")):
                out[sample.name.removeprefix("mlxctl_gateway_")] = sample.value
    return out


def live_pid(ctl: Mlxctl, other_than: int | None = None) -> int | None:
    """The tier's ready, live process (not ``other_than``), from the inventory."""
    record = ctl.inventory().get("fast")
    if not record or record.get("ready_at") is None or record.get("stop_requested_at"):
        return None
    pid = int(record["pid"])
    return pid if pid != other_than and pid_alive(pid) else None


@pytest.mark.parametrize(
    ("concurrency", "at_tier"),
    [
        # Every stream at the tier when the edit lands.
        pytest.param(CLIENTS, CLIENTS, id="all-16-at-the-tier", marks=pytest.mark.slow),
        # The default capacity (4): 4 at the tier, 12 queued at the gateway's gate. The
        # queued ones are held for the new process, never sent to the old one: sent
        # there, they made the drain outlast the stop's grace (10 s) and the restart cut
        # the last 4 (the figure).
        pytest.param(None, 4, id="default-capacity-12-queued-at-the-gate"),
    ],
)
def test_an_args_edit_under_16_streams_cuts_none_and_serves_a_request_sent_meanwhile(
    mlxctl: Mlxctl, tmp_path: Path, concurrency: int | None, at_tier: int
) -> None:
    from mlxctl.testing.tiny_model import build_repeat_model

    model = build_repeat_model(tmp_path / "repeat", TICK, context=CONTEXT)
    gw_port, port = free_ports(2)

    def write(max_tokens: int) -> None:
        the_tier = tier(model, port, max_tokens, concurrency)
        mlxctl.write("stack.yaml", stack_yaml([the_tier], gateway={"port": gw_port}))

    write(512)
    controller = mlxctl.start("reconcile", str(mlxctl.stacks), log=tmp_path / "controller.log")
    url = f"http://127.0.0.1:{gw_port}"

    def key() -> str:
        got = mlxctl.run("gateway", "key", str(mlxctl.stacks))
        return got.stdout.strip() if got.returncode == 0 else ""

    the_key = wait_for(key, 60, "the gateway key")
    wait_for(lambda: serving(url, the_key), 60, "the gateway to serve")
    old = int(wait_for(lambda: live_pid(mlxctl), 60, "the tier ready"))
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key=the_key, timeout=120, max_retries=0)

    rate = tokens_per_second(sdk, at_tier)
    tokens = min(max(int(rate * STREAM_SECONDS), PROBE_TOKENS), CONTEXT // 2)
    first = [Stream(sdk, tokens) for _ in range(at_tier)]
    queued = [Stream(sdk, QUEUED_TOKENS) for _ in range(CLIENTS - at_tier)]
    for stream in first:
        stream.start()
    for stream in first:
        assert stream.first_token.wait(60), "a stream never began"
    for stream in queued:
        stream.start()

    # 4 at the tier and 12 at the gate (or all 16 at the tier), as the gateway counts them.
    def counted() -> bool:
        now = gauges(url, the_key)
        return (now["in_flight_requests"], now["queued_requests"]) == (at_tier, len(queued))

    wait_for(counted, 10, f"{at_tier} in flight at the tier, the rest queued at the gate")
    assert all(s.error is None for s in first + queued), [
        s.error for s in first + queued if s.error
    ]

    def left() -> float:
        """Seconds of generation the first of the streams at the tier to end has left, at
        their rate of the last :data:`RATE_WINDOW` seconds (unknown, infinite, before
        they have streamed that long). 16 at once began up to a second or two apart."""
        now = time.time()
        if any(now - s.began < RATE_WINDOW for s in first):
            return float("inf")
        recent = [sum(1 for t in s.times if t > now - RATE_WINDOW) for s in first]
        rates = [max(n, 1) / RATE_WINDOW for n in recent]
        return min((s.tokens - s.chunks) / r for s, r in zip(first, rates, strict=True))

    # Streams slower than the rate measured before take longer to get there (bounded by
    # their length): the test then runs longer, and still edits with the same time left.
    wait_for(lambda: left() <= LEFT_SECONDS, 120, f"{LEFT_SECONDS} s of the streams left")
    expected_left = left()

    # The edit: a launch change of the always tier while the streams run.
    edited = time.time()
    write(1024)
    # The gateway holds the tier's new requests (the controller's verdict: draining) with
    # every stream at the tier in flight, while they run and the old process serves them.
    seen: dict[str, Any] = {}

    def drain_seen() -> bool:
        now = gauges(url, the_key)
        if now.get("state:draining") == 1:
            running = sum(s.is_alive() for s in first)
            seen.update(at=time.time(), in_flight=now["in_flight_requests"], running=running)
            seen["old_alive"] = pid_alive(old)
            return True
        return not any(s.is_alive() for s in first) or not pid_alive(old)

    wait_for(drain_seen, 30, "the drain or the end of the streams", step=0.05)
    # A request sent during the drain: held by the gateway, answered by the new process.
    during: dict[str, Any] = {}

    def meanwhile() -> None:
        during["sent"] = time.time()
        try:
            during["answer"] = sdk.chat.completions.create(model="fast", messages=MSG, max_tokens=8)
        except BaseException as exc:  # reported below
            during["error"] = exc
        during["done"] = time.time()

    late = threading.Thread(target=meanwhile, daemon=True)
    late.start()
    for stream in first + queued:
        stream.join(120)
    late.join(120)

    streams = first + queued
    cut = [s for s in streams if s.error is not None or s.finish is None]
    assert not cut, [(s.chunks, s.tokens, s.finish, repr(s.error)) for s in cut]
    assert [(s.finish, s.chunks, s.tokens_out) for s in streams] == [
        ("length", s.tokens, s.tokens) for s in streams
    ]
    assert "error" not in during, repr(during.get("error"))
    assert during["answer"].choices[0].message.content

    # The overlap: the tier was drained while all its streams ran on the old process.
    assert seen, "the gateway never said the tier was draining while its streams ran"
    assert (seen["in_flight"], seen["running"], seen["old_alive"]) == (at_tier, at_tier, True)
    new = int(wait_for(lambda: live_pid(mlxctl, other_than=old), 60, "the new process"))
    assert new != old and not pid_alive(old)
    restarts = [e for e in events(mlxctl) if e["kind"] == "restart" and e["target"] == "fast"]
    assert len(restarts) == 1, restarts
    [restart] = restarts
    assert restart["cause"].startswith("args changed: max-tokens 512 -> 1024"), restart
    # The restart waited for them: it went after the drain was seen with all running. The
    # requests held meanwhile (the queued streams, the one sent during the drain) were
    # answered after it: by the new process, never sent to the old one.
    after_edit = {"restart": restart["ts"] - edited, "drain seen": seen["at"] - edited,
                  "ended": sorted(round(s.ended - edited, 2) for s in first),
                  "meanwhile": (during["sent"] - edited, during["done"] - edited)}  # fmt: skip
    assert restart["ts"] > seen["at"], after_edit
    assert during["done"] >= restart["ts"], after_edit
    began = sorted(round(s.began - restart["ts"], 2) for s in queued)
    assert all(b >= 0 for b in began), (began, after_edit)
    print(
        f"\n{at_tier} streams of {tokens} tokens at the tier ({rate:.0f} tokens/s each "
        f"measured), {len(queued)} queued; edit with {expected_left:.1f} s of them left: "
        f"0 of {CLIENTS} cut; drain seen "
        f"{seen['at'] - edited:.2f} s after the edit with {seen['running']} running; "
        f"restart {restart['ts'] - edited:.2f} s after the edit; the streams at the tier "
        f"ended {max(s.ended for s in first) - edited:.2f} s after it; the request sent "
        f"meanwhile answered {during['done'] - during['sent']:.2f} s later"
    )
    assert controller.poll() is None
