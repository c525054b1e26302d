"""A server a request broke (it runs, /health may even answer, but it cannot generate).

The runtime checks judge a 1-token completion by its answer, never by its speed: an
error answer means "cannot generate", a completion still running means "busy". A
server whose generation thread a request killed is replaced at once, without counting
a crash, and every cause says a request did it.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from mlxctl.machine.probes import HttpProber
from mlxctl.plan.planner import BY_REQUEST
from mlxctl.runtimes import mlx_lm, vllm_mlx
from mlxctl.runtimes.base import COMPLETION_WAIT, ProbeSpec
from mlxctl.testing.fakes import FakeProber
from tests.unit.test_monitor import BOUND, Triggers, monitor, record
from tests.unit.world import World, tier, tiers_yaml

THREAD_DIED = b'{"error": "generation thread died"}'
COMPLETION = b'{"choices": [{"message": {"content": "x"}}]}'
VLLM_HEALTH = b'{"status": "healthy", "model_loaded": true}'
VLLM_BUSY = b'{"detail": {"error": "text_generation_busy", "message": "retry later"}}'


class Answers:
    """An :class:`~mlxctl.runtimes.base.Http` that answers by path (or raises)."""

    def __init__(self, answers: Mapping[str, tuple[int, bytes] | Exception]) -> None:
        self.answers = answers
        self.timeouts: list[float | None] = []

    def __call__(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        self.timeouts.append(timeout)
        answer = self.answers[path]
        if isinstance(answer, Exception):
            raise answer
        return answer


HEALTH, CHAT = "/health", "/v1/chat/completions"


# -- mlx-lm ---------------------------------------------------------------------------


def test_mlx_lm_health_503_unavailable_is_a_poisoned_server() -> None:
    # What mlx_lm.server 0.32.2 answered after one `"stop": 123` request (run here).
    result = mlx_lm.check(Answers({HEALTH: (503, b'{"status": "unavailable"}')}), "live", "m")
    assert (result.ok, result.poisoned) == (False, True)
    assert "generation thread died" in result.detail


def test_mlx_lm_completion_answering_thread_died_is_poisoned_even_if_health_says_200() -> None:
    http = Answers({HEALTH: (200, b'{"status": "ok"}'), CHAT: (404, THREAD_DIED)})
    result = mlx_lm.check(http, "live", "m")
    assert (result.ok, result.poisoned) == (False, True)
    # The completion is given a short wait of its own, shorter than the probe's.
    assert http.timeouts == [None, COMPLETION_WAIT]


def test_mlx_lm_slow_completion_is_busy_not_broken() -> None:
    http = Answers({HEALTH: (200, b'{"status": "ok"}'), CHAT: TimeoutError("timed out")})
    result = mlx_lm.check(http, "live", "m")
    assert result.ok and "busy" in result.detail


def test_mlx_lm_other_error_answer_is_cannot_generate_but_not_blamed_on_a_request() -> None:
    http = Answers({HEALTH: (200, b'{"status": "ok"}'), CHAT: (500, b"boom")})
    result = mlx_lm.check(http, "live", "m")
    assert (result.ok, result.poisoned) == (False, False)
    assert result.detail.startswith("cannot generate: completion answered 500")


def test_mlx_lm_live_and_generating_is_ok() -> None:
    http = Answers({HEALTH: (200, b'{"status": "ok"}'), CHAT: (200, COMPLETION)})
    assert mlx_lm.check(http, "live", "m").ok


def test_mlx_lm_readiness_on_a_poisoned_server_is_fatal_and_blamed_on_a_request() -> None:
    result = mlx_lm.check(Answers({CHAT: (404, THREAD_DIED)}), "ready", "m")
    assert (result.ok, result.fatal, result.poisoned) == (False, True, True)


# -- vllm-mlx -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ready", "live"])
def test_vllm_busy_answer_or_slow_completion_is_busy_not_broken(mode: str) -> None:
    for answer in [(503, VLLM_BUSY), TimeoutError("timed out")]:
        http = Answers({HEALTH: (200, VLLM_HEALTH), CHAT: answer})
        result = vllm_mlx.check(http, mode, "t")  # type: ignore[arg-type]
        assert result.ok and "busy" in result.detail


@pytest.mark.parametrize("mode", ["ready", "live"])
def test_vllm_model_loaded_but_every_completion_failing_is_caught(mode: str) -> None:
    http = Answers({HEALTH: (200, VLLM_HEALTH), CHAT: (500, b'{"detail": "engine error"}')})
    result = vllm_mlx.check(http, mode, "t")  # type: ignore[arg-type]
    assert not result.ok and result.detail.startswith("cannot generate: completion answered 500")


def test_vllm_not_loaded_is_not_ready_without_asking_for_a_completion() -> None:
    http = Answers({HEALTH: (200, b'{"status": "healthy", "model_loaded": false}')})
    assert not vllm_mlx.check(http, "ready", "t").ok
    assert len(http.timeouts) == 1


# -- the real HTTP prober: a completion that takes long is a timeout the check sees ----


class _SlowChat(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._send(200, b'{"status": "ok"}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(COMPLETION_WAIT + 1.5)  # a long generation holds the completion
        self._send(200, COMPLETION)

    def _send(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the prober gave up waiting

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_http_prober_reports_a_completion_queued_behind_a_generation_as_busy(
    slow_server: int,
) -> None:
    began = time.monotonic()
    result = HttpProber().probe(ProbeSpec("mlx-lm", slow_server, "m"), "live", 5.0)
    took = time.monotonic() - began
    assert result.ok and "busy" in result.detail, result
    assert COMPLETION_WAIT <= took < COMPLETION_WAIT + 1.0


# -- the monitor and the planner --------------------------------------------------------


def test_monitor_triggers_at_the_first_poisoned_answer_not_after_the_threshold() -> None:
    prober, triggers = FakeProber(poisoned={8001: "cannot generate"}), Triggers()
    mon = monitor(prober, triggers, threshold=3)
    try:
        mon.sample([record(ready_at=1.0)])
        assert triggers.wait_for("fast cannot generate")
        # The very first answer triggered the pass (threshold 3 was not waited for).
        assert triggers.reasons[0] == "fast cannot generate"
        assert mon.sample([record(ready_at=1.0)])["fast"].poisoned
    finally:
        mon.stop()


def test_first_answer_wait_lets_a_one_shot_run_see_liveness_on_its_first_pass() -> None:
    prober, triggers = FakeProber(poisoned={8001: "cannot generate"}), Triggers()
    mon = monitor(prober, triggers, first_answer_wait=BOUND)
    try:
        sample = mon.sample([record(ready_at=1.0)])["fast"]
        assert sample.poisoned
    finally:
        mon.stop()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_poisoned_server_is_replaced_at_once_without_counting_a_crash(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    first_pid = world.record("fast").pid
    world.prober.poisoned[8001] = "cannot generate (generation thread died): ..."

    crash = world.plan().for_target("fast")[0]
    assert (crash.kind, crash.stop_process, crash.by_request) == ("crash", True, True)
    assert crash.cause.startswith(BY_REQUEST)
    assert crash.crashes == 0 and crash.not_before == world.clock.now

    world.step()  # SIGTERM sent, recorded as stopping
    world.procs.crash(first_pid)  # the old process exits
    del world.prober.poisoned[8001]
    start = world.plan().for_target("fast")[0]
    assert start.kind == "start" and "request" in start.cause
    assert world.apply().converged
    assert world.record("fast").pid != first_pid
    assert world.record("fast").consecutive_crashes == 0


def test_repeated_poisoning_never_builds_a_backoff(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    for _ in range(4):
        world.clock.advance(5)  # well within the 10-minute crash-loop window
        world.prober.poisoned[8001] = "cannot generate (generation thread died)"
        pid = world.record("fast").pid
        world.step()
        world.procs.crash(pid)
        del world.prober.poisoned[8001]
        plan = world.plan()
        assert not [a for a in plan.actions if a.reason == "backoff"], plan.actions
        assert world.apply().converged
    assert world.record("fast").consecutive_crashes == 0
    assert world.record("fast").restarts == 4


def test_a_real_crash_after_a_poisoning_still_counts(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    world.procs.crash(world.record("fast").pid)
    crash = world.plan().for_target("fast")[0]
    assert crash.crashes == 1 and not crash.by_request


def test_diff_shows_the_replacement_of_a_poisoned_server(world: World) -> None:
    world.write(tiers_yaml(tier("fast", 8001)))
    assert world.apply().converged
    world.prober.poisoned[8001] = "cannot generate (generation thread died)"
    plan = world.plan()
    assert plan.has_changes
    assert [a.kind for a in plan.for_target("fast")] == ["crash"]
