"""``mlxctl doctor``: each check from fakes of what it observes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from mlxctl.app import doctor
from mlxctl.app.doctor import Backend, DiskNeed, Mode
from mlxctl.app.service import ServiceStatus
from mlxctl.capacity.memory import BudgetCheck
from mlxctl.machine.record import Record
from mlxctl.machine.services.base import Completed, Loaded

GIB = 1 << 30


def test_runtimes_fail_only_for_what_the_stack_uses() -> None:
    versions = {"mlx": "0.29.1", "mlx-lm": "0.32.2", "vllm-mlx": None}
    ok = doctor.check_runtimes(versions, {"mlx-lm"})
    assert ok.level == "ok" and "mlx-lm 0.32.2" in ok.detail and "vllm-mlx (unused)" in ok.detail
    bad = doctor.check_runtimes(versions, {"mlx-lm", "vllm-mlx"})
    assert bad.level == "fail" and bad.detail.startswith("vllm-mlx not importable") and bad.fix
    no_mlx = doctor.check_runtimes({"mlx": None, "mlx-lm": "0.32.2"}, {"mlx-lm"})
    assert no_mlx.level == "fail" and "mlx not importable" in no_mlx.detail


def test_backend_metal_cuda_cpu() -> None:
    assert doctor.check_backend(Backend("Device(gpu, 0)", True, False), "darwin").level == "ok"
    assert doctor.check_backend(Backend("Device(gpu, 0)", False, True), "linux").detail.startswith(
        "CUDA"
    )
    cpu_mac = doctor.check_backend(Backend("Device(cpu, 0)", False, False), "darwin")
    assert cpu_mac.level == "fail" and "Rosetta" in cpu_mac.fix
    assert doctor.check_backend(Backend("Device(cpu, 0)", False, False), "linux").level == "warn"
    broken = doctor.check_backend("ImportError: libmlx.so", "linux")
    assert broken.level == "fail" and "libmlx.so" in broken.detail


def test_wired_limit_against_the_stack() -> None:
    assert doctor.check_wired_limit("linux", None, 64 * GIB, 10 * GIB).level == "skip"
    # The default (0): about 2/3 of 24 GiB = 16 GiB.
    assert doctor.check_wired_limit("darwin", 0, 24 * GIB, 12 * GIB).level == "ok"
    over = doctor.check_wired_limit("darwin", 0, 24 * GIB, 18 * GIB)
    assert over.level == "fail" and over.fix.startswith("sudo sysctl iogpu.wired_limit_mb=")
    assert int(over.fix.split("=")[1].split()[0]) > 16 * 1024  # raises it past the need
    assert doctor.check_wired_limit("darwin", 20480, 24 * GIB, 18 * GIB).level == "ok"
    assert doctor.check_wired_limit("darwin", None, 24 * GIB, 1).level == "warn"


def test_ports_free_ours_or_taken() -> None:
    owners = {8080: "pid 99 (nginx)", 9000: "pid 5 (python -m mlx_lm server)"}
    ours = {9000: "fast"}
    ok = doctor.check_ports([("fast", 9000), ("slow", 9001)], owners.get, ours)
    assert ok.level == "ok" and "9000 (fast)" in ok.detail
    bad = doctor.check_ports([("gateway", 8080)], owners.get, ours)
    assert bad.level == "fail" and "8080 (gateway) held by pid 99 (nginx)" in bad.detail
    assert doctor.check_ports([], owners.get, ours).level == "skip"


def test_disk_space_for_models_not_pulled() -> None:
    assert doctor.check_disk([]).level == "ok"
    assert doctor.check_disk([], has_stack=False).level == "skip"
    fits = DiskNeed(Path("/hf"), 5 * GIB, 50 * GIB, ("org/a",))
    assert doctor.check_disk([fits]).level == "ok"
    short = DiskNeed(Path("/hf"), 60 * GIB, 50 * GIB, ("org/big",))
    failed = doctor.check_disk([short])
    assert failed.level == "fail" and "org/big" in failed.detail and "HF_HUB_CACHE" in failed.fix
    unknown = doctor.check_disk([DiskNeed(Path("/hf"), 0, 50 * GIB, (), ("org/unpinned",))])
    assert unknown.level == "warn" and "models update" in unknown.fix


def test_memory_budget_fit() -> None:
    assert doctor.check_memory(None, has_stack=False).level == "skip"
    fits = BudgetCheck(True, 10 * GIB, 16 * GIB, (), "fits")
    assert doctor.check_memory(fits, has_stack=True).level == "ok"
    over = BudgetCheck(False, 20 * GIB, 16 * GIB, (), "20 GiB over 16 GiB\nmore", (), ("use 4bit",))
    bad = doctor.check_memory(over, has_stack=True)
    assert (bad.level, bad.detail, bad.fix) == ("fail", "20 GiB over 16 GiB", "use 4bit")


def test_hf_token_is_never_shown() -> None:
    assert doctor.check_hf_token(True, ["org/gated"]).level == "ok"
    missing = doctor.check_hf_token(False, ["org/gated"])
    assert missing.level == "warn" and "hf auth login" in missing.fix
    assert doctor.check_hf_token(False, []).level == "ok"


def status(installed: bool, current: bool = True, running: bool = True) -> ServiceStatus:
    manager = Loaded(installed, installed and running, 42 if running else None)
    return ServiceStatus(
        "launchd", Path("/x.plist"), installed, current, manager, None, None, False, "/log"
    )


def test_controller_and_service() -> None:
    assert doctor.check_controller(42, status(True)).level == "ok"
    none = doctor.check_controller(None, status(False))
    assert none.level == "warn" and "service install" in none.fix
    assert doctor.check_controller(7, status(False)).level == "ok"  # by hand: fine
    stale = doctor.check_controller(42, status(True, current=False))
    assert stale.level == "warn" and "out of date" in stale.fix
    down = doctor.check_controller(None, status(True, running=False))
    assert down.level == "warn" and "/log" in down.fix
    assert "no service manager" in doctor.check_controller(None, None).detail


def systemd_status(installed: bool) -> ServiceStatus:
    manager = Loaded(installed, installed, 42 if installed else None)
    unit = Path("/home/me/.config/systemd/user/mlxctl.service")
    return ServiceStatus("systemd", unit, installed, True, manager, 42, None, False, "journal")


def test_linger_is_said_for_an_installed_systemd_service() -> None:
    off = doctor.check_linger(systemd_status(True), False)
    assert off.level == "warn" and "stops at your last logout" in off.detail
    assert off.fix == "loginctl enable-linger $USER to start at boot, not only at login"
    on = doctor.check_linger(systemd_status(True), True)
    assert on.level == "ok" and "starts at boot" in on.detail and not on.fix
    unknown = doctor.check_linger(systemd_status(True), None)
    assert unknown.level == "skip" and "logind did not answer" in unknown.detail
    assert doctor.check_linger(systemd_status(False), False).level == "skip"
    assert doctor.check_linger(status(True), None).detail == "Linux (systemd) only"  # launchd
    assert doctor.check_linger(None, None).level == "skip"


class Answers:
    """loginctl, as a fake runner: the commands asked, and one answer for all."""

    def __init__(self, answer: Completed) -> None:
        self.answer = answer
        self.asked: list[list[str]] = []

    def run(self, argv: Sequence[str]) -> Completed:
        self.asked.append(list(argv))
        return self.answer


def test_linger_is_read_from_logind_files_then_from_loginctl(tmp_path: Path) -> None:
    linger_dir = tmp_path / "linger"
    no_answer = Answers(Completed((), 1, "", "Failed to connect to bus: Host is down"))
    # No logind directory: loginctl is asked (and here cannot answer).
    assert doctor.linger_state("me", no_answer, linger_dir) is None
    assert no_answer.asked == [["loginctl", "show-user", "me", "--property=Linger"]]
    yes = Answers(Completed((), 0, "Linger=yes\n"))
    assert doctor.linger_state("me", yes, linger_dir) is True
    gone = Answers(
        Completed((), 1, "", "Failed to get user: User ID 1000 is not logged in or lingering")
    )
    assert doctor.linger_state("me", gone, linger_dir) is False
    # logind's own files: the user's file says yes, its absence no, without asking.
    linger_dir.mkdir()
    asked = Answers(Completed((), 0, "Linger=yes\n"))
    assert doctor.linger_state("me", asked, linger_dir) is False
    (linger_dir / "me").touch()
    assert doctor.linger_state("me", asked, linger_dir) is True
    assert asked.asked == []


def test_admin_socket_length_and_modes(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    good = [Mode(tmp_path, 0o700, 501), Mode(sock, 0o600, 501)]
    assert doctor.check_socket(sock, good, 501).level == "ok"
    loose = doctor.check_socket(sock, [Mode(tmp_path, 0o755, 501)], 501)
    assert loose.level == "fail" and "755" in loose.detail
    theirs = doctor.check_socket(sock, [Mode(sock, 0o600, 0)], 501)
    assert theirs.level == "fail" and "uid 0" in theirs.detail
    long = Path("/" + "x" * 120) / "admin.sock"
    assert doctor.check_socket(long, [], 501).level == "fail"


def test_a_stale_lock_is_named() -> None:
    assert doctor.check_lock(None, False).level == "ok"
    holder = {"pid": 4242, "command": "mlxctl reconcile", "since": "2026-12-06T10:00:00"}
    assert doctor.check_lock(holder, True).detail.startswith("held by pid 4242")
    stale = doctor.check_lock(holder, False)
    assert stale.level == "warn" and "stale" in stale.detail


def record(name: str, pid: int, died_at: float | None = None) -> Record:
    return Record(
        name=name, role="tier", pid=pid, pgid=pid, create_time=1.0, cmdline=("x",),
        instance="i", spec_hash="h", port=9000, log="", started_at=1.0, died_at=died_at,
    )  # fmt: skip


def test_inventory_entries_whose_processes_are_gone() -> None:
    records = {"fast": record("fast", 10), "slow": record("slow", 11), "old": record("old", 12, 5)}
    check = doctor.check_inventory(records, lambda r: r.pid == 11)
    assert check.level == "warn" and check.detail == "recorded but gone: slow (pid 11)"
    assert doctor.check_inventory(records, lambda r: False).level == "ok"
    assert doctor.check_inventory("inventory.json: not usable", lambda r: False).level == "fail"


@pytest.mark.parametrize("level,code", [("fail", True), ("warn", False), ("ok", False)])
def test_only_a_failure_fails(level: doctor.Level, code: bool) -> None:
    assert doctor.failed([doctor.Check("x", level, "")]) is code
