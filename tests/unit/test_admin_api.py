"""The admin API: where its socket lives and who may reach it, its routes over a real
socket (a fake controller behind them, fake processes and clock), its error bodies and
its event stream; and the controller's suspension (``down``) and load bookkeeping."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlxctl import paths as paths_module
from mlxctl.admin.client import AdminClient, connect
from mlxctl.admin.server import serving
from mlxctl.admin.sockdir import check_dir, prepare_dir
from mlxctl.apply.events import Event
from mlxctl.desired.state import DesiredState
from mlxctl.errors import ExitCode, MlxctlError, SpecError
from mlxctl.paths import SOCKET_PATH_MAX, Paths, admin_socket_path
from mlxctl.plan.actions import PlanOptions
from mlxctl.reconcile import suspension
from mlxctl.reconcile.controller import Controller, NotConverged
from mlxctl.reconcile.converge import ConvergeResult
from mlxctl.reconcile.demand import DemandBook
from mlxctl.reconcile.passes import PassResult
from mlxctl.runtimes.gateway import DemandReport, TierLoad
from tests.unit.world import World, tier, tiers_yaml

ON_DEMAND = "  load: on-demand\n  idleTimeout: 2m\n"


# -- where the socket lives ---------------------------------------------------------------


def test_the_socket_is_in_the_state_directory_when_the_path_fits(tmp_path: Path) -> None:
    paths = Paths(config=tmp_path / "c", state=tmp_path / "s")
    assert paths.admin_socket == tmp_path / "s" / "admin.sock"
    assert admin_socket_path(paths) == paths.admin_socket


def test_a_long_state_directory_gets_a_short_per_user_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    one = admin_socket_path(Paths(config=deep / "c", state=deep / "state"))
    other = admin_socket_path(Paths(config=deep / "c", state=deep / "state2"))
    assert len(os.fsencode(one)) <= SOCKET_PATH_MAX
    assert one.parent == Path("/tmp") / f"mlxctl-{os.getuid()}"
    assert one.suffix == ".sock" and one != other  # one socket per state directory
    # Client and server compute it alone, and agree (a relative state dir included).
    assert admin_socket_path(Paths(config=deep / "c", state=deep / "state")) == one


def test_the_short_directory_is_created_private_and_refused_when_not_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paths_module, "SHORT_SOCKET_ROOT", tmp_path)
    sock = tmp_path / f"mlxctl-{os.getuid()}" / "abc.sock"
    prepare_dir(sock)
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700

    # Someone else's directory (made first, in the shared /tmp): refused, in one line.
    os.chown(sock.parent, 65534, 65534)
    with pytest.raises(MlxctlError, match="owned by uid 65534, not by you"):
        prepare_dir(sock)
    os.chown(sock.parent, os.getuid(), os.getgid())

    # Open to others: refused.
    os.chmod(sock.parent, 0o755)
    with pytest.raises(MlxctlError, match="mode 0755 lets other users in"):
        prepare_dir(sock)

    # A symlink planted where the directory should be: refused, not followed.
    os.rmdir(sock.parent)
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    sock.parent.symlink_to(target)
    with pytest.raises(MlxctlError, match="a symlink"):
        prepare_dir(sock)


def test_the_state_directory_may_be_reached_through_a_symlink_of_the_user(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    check_dir(tmp_path / "link", follow=True)
    with pytest.raises(MlxctlError, match="a symlink"):
        check_dir(tmp_path / "link", follow=False)


# -- a fake controller behind a real socket ---------------------------------------------


class FakeController:
    """What the routes need of a controller, over a World (fake processes and clock):
    passes run when the test says (:meth:`step`), triggers are recorded."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.ctx = world.ctx
        self.ctx.demand = DemandBook(world.clock)
        self.targets = [world.stacks]
        self.last: PassResult | None = None
        self.suspended: suspension.Suspended | None = suspension.read(world.ctx.paths)
        self.passes = 0
        self.triggers: list[str] = []

    def step(self) -> PassResult:
        self.passes += 1
        self.last = self.world.step()
        return self.last

    def trigger(self, reason: str) -> None:
        self.triggers.append(reason)

    def suspend(self, by: str = "mlxctl down") -> None:
        self.suspended = suspension.Suspended(since=self.world.clock.time(), by=by)
        suspension.write(self.ctx.paths, self.suspended)

    def resume(self, by: str) -> bool:
        was = self.suspended is not None
        self.suspended = None
        suspension.clear(self.ctx.paths)
        return was

    def desired_now(self) -> DesiredState:
        return DesiredState(tiers=(), gateway=None) if self.suspended else self.world.desired()

    def pass_now(self, reason: str, *, timeout: float) -> PassResult | None:
        self.triggers.append(reason)
        return None  # passes run when the test says: the last one's verdicts answer

    def converge(self, reason: str, *, timeout: float | None = None) -> ConvergeResult:
        self.triggers.append(reason)
        desired = self.desired_now()
        options = PlanOptions(allow_empty=self.suspended is not None)
        return self.world.converge(desired, options)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.write(tiers_yaml(tier("fast", 8001), tier("lazy", 8002) + ON_DEMAND))
    w.ctx.paths.state.mkdir(mode=0o700, exist_ok=True)
    return w


@pytest.fixture
def served(world: World) -> Iterator[tuple[FakeController, AdminClient, list[str]]]:
    ctl = FakeController(world)
    log: list[str] = []
    with serving(ctl, world.ctx.paths.admin_socket, log=log.append):
        client = connect(world.ctx.paths)
        assert client is not None
        yield ctl, client, log
    assert not world.ctx.paths.admin_socket.exists()  # removed on exit


def raw(path: Path, request: bytes) -> tuple[int, dict[str, Any]]:
    """One raw HTTP exchange (what curl does), parsed."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_the_socket_is_private_and_answers_status(
    served: tuple[FakeController, AdminClient, list[str]], world: World
) -> None:
    ctl, client, _ = served
    path = world.ctx.paths.admin_socket
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    ctl.step()
    answer = client.call("GET", "/v1/status")
    assert [t["name"] for t in answer["status"]["tiers"]] == ["fast", "lazy"]
    assert answer["text"].splitlines()[0].startswith("NAME")
    assert answer["controller"]["pid"] == os.getpid() and answer["notes"] == []


def test_errors_are_json_with_a_code_a_message_and_the_exit_code(
    served: tuple[FakeController, AdminClient, list[str]], world: World
) -> None:
    ctl, client, _ = served
    ctl.step()
    path = world.ctx.paths.admin_socket
    status, body = raw(path, b"GET /v1/nothing HTTP/1.0\r\n\r\n")
    assert status == 404 and body["error"]["code"] == "no_route"
    status, body = raw(path, b"DELETE /v1/status HTTP/1.0\r\n\r\n")
    assert status == 405 and body["error"]["message"] == "/v1/status takes GET"
    status, body = raw(path, b'PUT /v1/demand HTTP/1.0\r\nContent-Length: 9\r\n\r\n{"x": 1}\n')
    assert status == 400 and body["error"]["message"].startswith("not a demand report")
    status, body = raw(path, b"PUT /v1/demand HTTP/1.0\r\nContent-Length: 99999999\r\n\r\n")
    assert status == 413 and body["error"]["code"] == "too_large"
    status, body = raw(path, b"POST /v1/tiers/BAD..NAME/load HTTP/1.0\r\n\r\n")
    assert status == 400 and "is not a tier name" in body["error"]["message"]
    # The client raises what the command would raise without a controller.
    with pytest.raises(MlxctlError, match="no tier named ghost") as caught:
        client.call("POST", "/v1/tiers/ghost/load", {})
    assert caught.value.exit_code == ExitCode.NOT_FOUND
    with pytest.raises(MlxctlError, match="must be absolute") as caught:
        client.call("GET", "/v1/plan?file=relative.yaml")
    assert caught.value.exit_code == ExitCode.USAGE
    # Invalid stack files: every problem, exit 3.
    world.write("apiVersion: mlxctl/v1\nkind: Stack\nmetadata: {name: bad}\nspec: {tierz: []}\n")
    with pytest.raises(SpecError) as spec:
        client.call("GET", "/v1/plan")
    assert spec.value.exit_code == ExitCode.INVALID_SPEC and spec.value.problems


def test_the_plan_is_what_diff_shows(
    served: tuple[FakeController, AdminClient, list[str]], world: World
) -> None:
    _, client, _ = served
    answer = client.call("GET", "/v1/plan")
    assert answer["exit_code"] == ExitCode.CHANGES
    assert any("fast" in line and "start" in line for line in answer["lines"])
    kinds = [r["type"] for r in answer["records"]]
    assert kinds[0] == "version" and kinds[-1] == "summary" and "planned" in kinds


def test_demand_is_booked_triggers_a_pass_when_new_requests_wait_and_gets_verdicts(
    served: tuple[FakeController, AdminClient, list[str]],
) -> None:
    ctl, client, _ = served
    ctl.step()
    waiting = DemandReport(gateway_pid=7, tiers={"lazy": TierLoad(waiting=2)})
    answer = client.call("PUT", "/v1/demand", waiting.model_dump(mode="json"))
    assert answer["tiers"]["lazy"]["state"] == "cold"  # the last pass had no request yet
    assert ctl.triggers == ["demand changed for lazy"]
    assert ctl.ctx.demand is not None and ctl.ctx.demand.observed()["lazy"].waiting == 2
    client.call("PUT", "/v1/demand", waiting.model_dump(mode="json"))
    assert ctl.triggers == ["demand changed for lazy"]  # the same wait: no second pass
    ctl.step()
    answer = client.call("PUT", "/v1/demand", waiting.model_dump(mode="json"))
    assert answer["tiers"]["lazy"]["state"] == "loading"
    # The gateway now holds a draining tier's requests: the stop may go at once.
    held = DemandReport(gateway_pid=7, tiers={"lazy": TierLoad(held_back=True)})
    client.call("PUT", "/v1/demand", held.model_dump(mode="json"))
    assert ctl.triggers[-1] == "demand changed for lazy" and len(ctl.triggers) == 2


def test_load_and_unload_record_wishes_and_unload_of_an_always_tier_says_it_returns(
    served: tuple[FakeController, AdminClient, list[str]],
) -> None:
    ctl, client, _ = served
    ctl.step()
    book = ctl.ctx.demand
    assert book is not None
    state = client.call("POST", "/v1/tiers/lazy/load", {})
    assert state["state"] == "cold" and ctl.triggers == ["mlxctl load lazy"]
    assert book.observed()["lazy"].load_requested_at is not None
    for _ in range(3):
        ctl.step()
        ctl.world.clock.advance(1)
    assert client.call("GET", "/v1/tiers/lazy")["state"] == "ready"
    unloaded = client.call("POST", "/v1/tiers/lazy/unload", {})
    assert unloaded["note"] == "" and book.observed()["lazy"].unload_requested_at is not None
    always = client.call("POST", "/v1/tiers/fast/unload", {})
    assert "`load: always`: the next pass starts it again" in always["note"]


def test_load_and_unload_print_the_tier_state_as_json(
    served: tuple[FakeController, AdminClient, list[str]],
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mlxctl.cli import main

    ctl, _, _ = served
    for _ in range(3):
        ctl.step()
        ctl.world.clock.advance(1)
    monkeypatch.setenv("MLXCTL_HOME", str(world.root))  # the CLI finds this controller
    assert main(["load", "fast", "-o", "json"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert (loaded["tier"], loaded["state"]) == ("fast", "ready")
    assert main(["unload", "fast", "--output", "json"]) == 0
    out, err = capsys.readouterr()
    unloaded = json.loads(out)
    assert unloaded["tier"] == "fast" and "`load: always`" in unloaded["note"] and err == ""


def test_reconcile_down_and_up_go_through_the_controller(
    served: tuple[FakeController, AdminClient, list[str]], world: World
) -> None:
    _, client, _ = served
    with pytest.raises(MlxctlError, match="applies") as caught:
        client.call("POST", "/v1/reconcile", {"files": ["/somewhere/else.yaml"]})
    assert caught.value.exit_code == ExitCode.LOCKED
    answer = client.call("POST", "/v1/reconcile", {"files": [str(world.stacks)]}, timeout=None)
    assert answer["exit_code"] == 0 and answer["converged"] and "fast" in answer["status"]
    assert world.record("fast").ready_at is not None

    answer = client.call("POST", "/v1/down", {}, timeout=None)
    assert answer["exit_code"] == 0
    assert any(line.startswith("  - fast: stop ok") for line in answer["outcomes"]), answer
    assert "fast" not in world.ctx.inventory.load()
    assert suspension.read(world.ctx.paths) is not None  # persisted: a restart keeps it
    notes = client.call("GET", "/v1/status")["notes"]
    assert any("suspended by mlxctl down" in n for n in notes)

    answer = client.call("POST", "/v1/up", {}, timeout=None)
    assert answer["exit_code"] == 0 and suspension.read(world.ctx.paths) is None


def test_the_event_stream_sends_the_tail_then_each_new_event(
    served: tuple[FakeController, AdminClient, list[str]], world: World
) -> None:
    _, client, _ = served
    log = world.ctx.event_log()
    log.emit(Event(1.0, "start", "fast", "new tier", "ok"))
    assert [e["target"] for e in client.call("GET", "/v1/events?tail=5")["events"]] == ["fast"]
    stream = client.stream("/v1/events?tail=1&follow=1")
    assert next(stream)["cause"] == "new tier"
    threading.Timer(0.3, lambda: log.emit(Event(2.0, "stop", "fast", "later", "ok"))).start()
    assert next(stream)["cause"] == "later"
    stream.close()


def test_events_filter_by_tier_and_kind_through_the_controller(
    served: tuple[FakeController, AdminClient, list[str]], world: World
) -> None:
    """The same filter as without a controller (ops.EventFilter), in the tail and the
    stream; a bad kind is a usage error."""
    _, client, _ = served
    log = world.ctx.event_log()
    segv = {"kind": "signal", "word": "SIGSEGV", "detail": "killed by SIGSEGV"}
    log.emit(Event(1.0, "start", "fast", "new tier", "ok"))
    log.emit(Event(2.0, "crash", "fast", "SIGSEGV: killed", "failed", exit_cause=segv))
    log.emit(Event(3.0, "crash", "slow", "error: exited", "failed"))
    got = client.call("GET", "/v1/events?tail=5&tier=fast&kind=crash")["events"]
    assert [(e["target"], e["kind"]) for e in got] == [("fast", "crash")]
    got = client.call("GET", "/v1/events?kind=SIGSEGV")["events"]
    assert [e["ts"] for e in got] == [2.0]
    stream = client.stream("/v1/events?tail=0&follow=1&tier=slow")
    threading.Timer(0.3, lambda: log.emit(Event(4.0, "stop", "fast", "x", "ok"))).start()
    threading.Timer(0.5, lambda: log.emit(Event(5.0, "stop", "slow", "y", "ok"))).start()
    assert next(stream)["cause"] == "y"
    stream.close()
    with pytest.raises(MlxctlError, match="unknown event kind") as caught:
        client.call("GET", "/v1/events?kind=crashed")
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(world: World) -> None:
    path = world.ctx.paths.admin_socket
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays: a crashed controller's
    assert connect(world.ctx.paths) is None  # nobody accepts: no controller
    ctl = FakeController(world)
    with serving(ctl, path):
        assert connect(world.ctx.paths) is not None
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    try:
        with pytest.raises(MlxctlError, match="another process serves"), serving(ctl, path):
            pass
    finally:
        live.close()
        path.unlink()


PEER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:  # the server may close before the request is even sent
    s.sendall(b"GET /v1/status HTTP/1.0\\r\\n\\r\\n")
    print(repr(s.recv(100)))
except OSError:
    print(repr(b""))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
def test_a_client_of_another_user_is_refused_by_its_uid(world: World, tmp_path: Path) -> None:
    """The directory and socket modes are relaxed for this test alone, so that it is the
    peer uid check that refuses: the connection is closed without an answer."""
    ctl = FakeController(world)
    ctl.step()
    shared = Path(f"/tmp/mlxctl-peer-test-{os.getpid()}")
    shared.mkdir(mode=0o700)
    path = shared / "admin.sock"
    log: list[str] = []
    try:
        with serving(ctl, path, log=log.append):
            os.chmod(shared, 0o755)
            os.chmod(path, 0o666)
            done = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 sys.executable, "-c", PEER, str(path)],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            assert done.stdout.strip() == "b''"  # closed unanswered
            assert log == ["admin: refused a connection from uid 65534 (only uid 0 may)"]
            assert AdminClient(path).call("GET", "/v1/status")["text"]  # the owner still may
    finally:
        path.unlink(missing_ok=True)
        shared.rmdir()


# -- the controller's side: suspension and load bookkeeping -----------------------------


@pytest.fixture
def controllers(world: World) -> Iterator[Callable[[], Controller]]:
    """Controllers on ``world`` whose health monitors are stopped after the test (a pass
    starts a watcher thread per ready tier; left running, it outlives the test)."""
    made: list[Controller] = []

    def make() -> Controller:
        ctl = Controller(world.ctx, [world.stacks], PlanOptions(), log=lambda _l: None, triggers=[])
        made.append(ctl)
        return ctl

    yield make
    for ctl in made:
        ctl.monitor.stop()


def test_a_suspended_controller_stops_everything_and_stays_suspended_when_restarted(
    world: World, controllers: Callable[[], Controller]
) -> None:
    world.apply()
    assert world.record("fast").spawned
    ctl = controllers()
    ctl.suspend()
    for _ in range(5):
        ctl.run_pass("test")
        world.clock.advance(1)
    assert world.ctx.inventory.load() == {}
    assert ctl.desired_now().services == ()
    again = controllers()
    assert again.suspended is not None and again.suspended.by == "mlxctl down"
    result = again.run_pass("restarted")
    assert result is not None and not result.plan.actions  # starts nothing
    assert again.resume("mlxctl up") and suspension.read(world.ctx.paths) is None
    result = again.run_pass("resumed")
    assert result is not None and any(a.kind == "start" for a in result.plan.actions)


def test_a_pass_tells_the_book_which_tiers_serve(
    world: World, controllers: Callable[[], Controller]
) -> None:
    ctl = controllers()
    book = world.ctx.demand
    assert isinstance(book, DemandBook)  # the controller keeps one
    book.request_load("lazy")
    for _ in range(4):
        ctl.run_pass("test")
        world.clock.advance(1)
    assert world.record("lazy").ready_at is not None
    assert book.observed()["lazy"].load_requested_at is None  # fulfilled


def test_a_wait_for_convergence_ends_when_the_controller_stops(
    world: World, controllers: Callable[[], Controller]
) -> None:
    ctl = controllers()
    ctl.stop()
    loop = threading.Thread(target=ctl.run)
    answer: list[Any] = []
    waiter = threading.Thread(target=lambda: answer.append(ctl.converge("test", timeout=30)))
    waiter.start()
    for _ in range(200):  # the waiter listens before the loop ends
        if ctl._listeners:
            break
        threading.Event().wait(0.01)
    loop.start()
    waiter.join(10)
    loop.join(10)
    assert answer and isinstance(answer[0], NotConverged)
    assert answer[0].exit_code == ExitCode.APPLY_FAILED


def test_a_report_that_causes_a_pass_is_answered_with_that_passs_verdicts(world: World) -> None:
    """The gateway learns a verdict only from an answer: one a report caused comes back
    at once (a cold tier ``loading``), not a report cycle later."""
    from mlxctl.app.control import report_demand

    ctl = Controller(world.ctx, [world.stacks], PlanOptions(), log=lambda _l: None, triggers=[])
    loop = threading.Thread(target=ctl.run, daemon=True)
    loop.start()
    try:
        for _ in range(500):
            if ctl.last is not None:
                break
            threading.Event().wait(0.01)
        assert ctl.last is not None
        waiting = DemandReport(gateway_pid=7, tiers={"lazy": TierLoad(waiting=1)})
        answer = report_demand(ctl, waiting)
        assert answer.tiers["lazy"].state == "loading", answer
    finally:
        ctl.stop()
        loop.join(10)
