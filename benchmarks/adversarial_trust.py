"""Issue 15's adversarial cases, replayed: one per row where a few seconds suffice.

Each case builds a sandbox (a temporary root holding MLXCTL_HOME, HF_HUB_CACHE, the
stack directory and the user's files around them), runs the real CLI as a subprocess
(``python -m mlxctl``, bounded by ``RLIMIT_AS`` and a timeout), and says:

- ``VULNERABLE``: the harm the issue describes happened (a file deleted or written
  outside, a stranger signalled, a hang, a traceback, a hot loop, unbounded work);
- ``refused``: the input was refused in one line with a documented exit code;
- ``ok``: nothing harmful happened and nothing was refused (e.g. a bad value skipped);
- ``skipped``: the case cannot be staged here (the reason is given).

Run it before and after the fixes: ``PYTHONPATH=src python benchmarks/adversarial_trust.py
[--rows 1,4,9] [--json FILE]``. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import free_port, write_results

MLXCTL = [sys.executable, "-m", "mlxctl"]
MEMORY_LIMIT = 3 << 30  # address space of each mlxctl call
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 130}


@dataclass
class Result:
    row: int
    case: str
    outcome: str
    seconds: float
    detail: str


@dataclass
class Run:
    code: int | None  # None: killed at the timeout
    out: str
    err: str
    seconds: float

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.err

    @property
    def last(self) -> str:
        return (self.err.strip().splitlines() or [""])[-1][:160]

    def one_line_refusal(self) -> bool:
        lines = [line for line in self.err.splitlines() if line.startswith("error: ")]
        return self.code in DOCUMENTED - {0, 1} and bool(lines) and not self.traceback


class Box:
    """One sandbox root: mlxctl's directories, a stack directory, the user's files."""

    def __init__(self, root: Path, endpoint: str = "http://127.0.0.1:9") -> None:
        self.root = root
        self.home, self.cache, self.stacks = root / "home", root / "hf-cache", root / "stacks"
        self.state = self.home / "state"
        self.victim = root / "victim"
        for d in (self.stacks, self.victim, root / "victimdir", self.state):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        (self.victim / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
        self.endpoint = endpoint
        self.started: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLXCTL_"))}
        env.update(
            MLXCTL_HOME=str(self.home),
            HF_HUB_CACHE=str(self.cache),
            HF_ENDPOINT=self.endpoint,
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
            HOME=str(self.victim),
        )
        return env

    def stack(self, model: dict[str, Any], name: str = "fast", **extra: Any) -> Path:
        tier = {"name": name, "runtime": "mlx-lm", "model": model, **extra}
        doc = {
            "apiVersion": "mlxctl/v1",
            "kind": "Stack",
            "metadata": {"name": "adv"},
            "spec": {"gateway": {"enabled": False}, "tiers": [tier]},
        }
        path = self.stacks / "s.yaml"
        path.write_text(json.dumps(doc))
        return path

    def lock(self, entry: dict[str, Any], key: str = "org/m@main") -> None:
        doc = {"apiVersion": "mlxctl/v1", "kind": "Lock", "models": {key: entry}}
        (self.stacks / "s.lock.yaml").write_text(json.dumps(doc))

    def run(self, *args: str, timeout: float = 20) -> Run:
        """``mlxctl ARGS``; killed (its process group) at ``timeout``."""
        started = time.monotonic()
        proc = subprocess.Popen(
            [*MLXCTL, *args],
            env=self.env,
            cwd=self.stacks,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_limit_memory,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = None
        return Run(code, out.decode(errors="replace"), err.decode(errors="replace"),
                   time.monotonic() - started)  # fmt: skip

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """A long-running mlxctl (the controller), stopped by :meth:`close` by PID."""
        handle = log.open("wb")
        proc = subprocess.Popen(
            [*MLXCTL, *args], env=self.env, cwd=self.stacks, stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        handle.close()
        self.started.append(proc)
        return proc

    def close(self) -> None:
        """Stop what this box started, by PID: its controllers, then mlxctl's servers
        (``down``), then any process still carrying this state directory's marker."""
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.run("down", timeout=60)
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("MLXCTL_STATE") == str(self.state):
                    proc.kill()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def sleeper(marker: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], float]:
    """The user's ``sleep 1000`` (optionally carrying another state directory's marker)."""
    proc = subprocess.Popen(
        ["sleep", "1000"], env={**os.environ, **(marker or {})}, start_new_session=True
    )
    process = psutil.Process(proc.pid)
    while not process.cmdline():
        time.sleep(0.005)
    return proc, process.create_time()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def verdict(run: Run, harmed: bool, what: str) -> tuple[str, str]:
    """The outcome of one call: harm first, then a hang or a traceback, then a refusal."""
    if harmed:
        return "VULNERABLE", what
    if run.code is None:
        return "VULNERABLE", f"hung (killed after {run.seconds:.0f}s)"
    if run.traceback or run.code not in DOCUMENTED:
        return "VULNERABLE", f"exit {run.code}: {run.last}"
    if run.one_line_refusal():
        return "refused", f"exit {run.code}: {run.last}"
    return "ok", f"exit {run.code}"


# --------------------------------------------------------------------------- the cases

FILE = {"path": "config.json", "size": 5, "sha256": "0" * 64}


def row1(box: Box) -> tuple[str, str]:
    """A lock entry whose file path is the user's ~/.bashrc."""
    box.stack({"hf": "org/m"})
    box.lock({"repo": "org/m", "requested": "main", "revision": "a" * 40,
              "files": [{**FILE, "path": str(box.victim / ".bashrc")}]})  # fmt: skip
    run = box.run("models", "pull", "-f", str(box.stacks / "s.yaml"))
    return verdict(run, not (box.victim / ".bashrc").exists(), "deleted ~/.bashrc")


def row2(box: Box) -> tuple[str, str]:
    """A lock revision that is an absolute path outside the cache."""
    box.stack({"hf": "org/m"})
    evil = box.root / "victimdir" / "evilrev"
    box.lock({"repo": "org/m", "requested": "main", "revision": str(evil), "files": [FILE]})
    run = box.run("models", "pull", "-f", str(box.stacks / "s.yaml"))
    created = [p.name for p in (box.root / "victimdir").iterdir()]
    mode = (box.root / "victimdir").stat().st_mode & 0o777
    harmed = bool(created) or mode != 0o755
    return verdict(run, harmed, f"created {created} in victimdir/, its mode now {mode:o}")


def row3(box: Box) -> tuple[str, str]:
    """`models rm org/b` when org/a holds the same commit (8 tries, alternating)."""
    commit, wrong = "d" * 40, 0
    for named, other in [("org/b", "org/a"), ("org/a", "org/b")] * 4:
        shutil.rmtree(box.cache, ignore_errors=True)
        for repo in ("org/a", "org/b"):
            d = box.cache / f"models--{repo.replace('/', '--')}"
            (d / "blobs").mkdir(parents=True)
            (d / "blobs" / ("c" * 40)).write_text("{}")
            (d / "snapshots" / commit).mkdir(parents=True)
            (d / "snapshots" / commit / "config.json").symlink_to(f"../../blobs/{'c' * 40}")
            (d / "refs").mkdir()
            (d / "refs" / "main").write_text(commit)
            ledger = box.state / "models" / "hub" / repo.replace("/", "--") / f"{commit}.json"
            ledger.parent.mkdir(parents=True, exist_ok=True)
            ledger.write_text(json.dumps({"repo": repo, "commit": commit, "files": {}}))
        run = box.run("models", "rm", named)
        kept = box.cache / f"models--{other.replace('/', '--')}" / "snapshots" / commit
        wrong += not (kept / "config.json").exists()
    return verdict(run, wrong > 0, f"deleted the other repo in {wrong} of 8 removals")


def _record(pid: int, create_time: float, cmdline: list[str], instance: str) -> dict[str, Any]:
    return {
        "name": "fast", "role": "tier", "pid": pid, "pgid": pid, "create_time": create_time,
        "cmdline": cmdline, "instance": instance, "spec_hash": "x", "port": free_port(),
        "log": "/nonexistent.log", "started_at": 1.0,
    }  # fmt: skip


def row4(box: Box) -> tuple[str, str]:
    """An inventory record naming the user's `sleep` with create_time NaN; `down`."""
    proc, _ = sleeper()
    try:
        record = _record(proc.pid, math.nan, ["sleep", "1000"], "i-4")
        (box.state / "inventory.json").write_text(json.dumps({"services": {"fast": record}}))
        run = box.run("down", timeout=20)
        return verdict(run, proc.poll() is not None, "SIGTERMed the user's sleep")
    finally:
        stop(proc)


def row5(box: Box) -> tuple[str, str]:
    """A copied state directory: the record's identity is exact, the marker names the
    original state directory; `down` with MLXCTL_HOME at the copy."""
    marker = {"MLXCTL_STATE": str(box.root / "original" / "state"), "MLXCTL_INSTANCE": "i-5"}
    proc, created = sleeper(marker)
    try:
        record = _record(proc.pid, created, ["sleep", "1000"], "i-5")
        (box.state / "inventory.json").write_text(json.dumps({"services": {"fast": record}}))
        run = box.run("down", timeout=20)
        return verdict(run, proc.poll() is not None, "stopped the original's process")
    finally:
        stop(proc)


def row6(box: Box, hub: Any) -> tuple[str, str]:
    """The hub sends an endless body for a pinned 1 KiB file (capped here at 64 MiB)."""
    cap = 64 << 20
    sent = hub.endless("org/big", "model.safetensors", claimed=1024, cap=cap)
    run = box.run("models", "pull", "hf:org/big", timeout=60)
    got = sent()
    # Bounded: the client stops reading one chunk (1 MiB) past the pin; the hub still
    # gets what the loopback socket buffers absorb (a few MiB) into the socket. Unbounded:
    # it reads until the runner's cap.
    return verdict(run, got >= cap // 2, f"the hub pushed {got >> 20} MiB for a 1 KiB file")


def row7(box: Box) -> tuple[str, str]:
    """A lock file that is a FIFO: `diff` (and /dev/zero, the cache's refs/ as a FIFO)."""
    box.stack({"hf": "org/m"})
    lock = box.stacks / "s.lock.yaml"
    os.mkfifo(lock)
    first = box.run("diff", str(box.stacks), timeout=10)
    lock.unlink()
    lock.symlink_to("/dev/zero")
    second = box.run("diff", str(box.stacks), timeout=20)
    lock.unlink()
    refs = box.cache / "models--org--m" / "refs"
    refs.mkdir(parents=True)
    os.mkfifo(refs / "main")
    third = box.run("status", str(box.stacks), timeout=10)
    worst = [verdict(r, False, "") for r in (first, second, third)]
    names = ("FIFO lock", "/dev/zero lock", "FIFO refs/main")
    bad = [f"{n}: {d}" for n, (o, d) in zip(names, worst, strict=True) if o == "VULNERABLE"]
    if bad:
        return "VULNERABLE", "; ".join(bad)
    return worst[0][0], "; ".join(f"{n}: {d}" for n, (_, d) in zip(names, worst, strict=True))


_TINY: list[Path] = []


def tiny_model(tmp: Path) -> Path:
    """The tiny test model, built once per run (rows 8 and 12 start a real server)."""
    if not _TINY:
        from mlxctl.testing.tiny_model import build_tiny_model

        _TINY.append(build_tiny_model(tmp / "tiny"))
    return _TINY[0]


def _chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", "-R", flag, str(path)], check=True, capture_output=True)


def row8(box: Box, model: Path) -> tuple[str, str]:
    """`down` on a read-only state directory (immutable: `chattr +i`, since modes do not
    bind root) must still stop the server it runs."""
    if shutil.which("chattr") is None:
        return "skipped", "no chattr to make the state directory read-only"
    box.stack({"path": str(model)}, port=free_port())
    up = box.run("reconcile", "--once", "--timeout", "90", str(box.stacks), timeout=150)
    record = json.loads((box.state / "inventory.json").read_text())["services"].get("fast")
    if up.code != 0 or not record:
        return "error", f"the server did not start: exit {up.code}: {up.last}"
    _chattr("+i", box.state)
    try:
        run = box.run("down", timeout=60)
        alive = psutil.pid_exists(record["pid"]) and (
            psutil.Process(record["pid"]).status() != psutil.STATUS_ZOMBIE
        )
    finally:
        _chattr("-i", box.state)
    return verdict(run, alive, f"the server (pid {record['pid']}) still runs; exit {run.code}")


def _cpu_over(proc: subprocess.Popen[bytes], seconds: float) -> float:
    """CPU of ``proc`` and its threads over ``seconds``, in % of one core."""
    process = psutil.Process(proc.pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(seconds)
    return 100 * (sum(process.cpu_times()[:2]) - before) / seconds


def row9(box: Box) -> tuple[str, str]:
    """The controller with a job file whose owner_pid is 1e400: CPU over 5 s."""
    model = box.root / "missing-model"
    box.stack({"path": str(model)})
    jobs = box.state / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "0123456789abcdef.json").write_text(
        '{"identity": "x", "display": "x", "started_at": 1.0, "step": "s", '
        '"owner_pid": 1e400, "owner_created": 1.0}'
    )
    controller = box.start("reconcile", "--interval", "2", str(box.stacks), log=box.root / "c.log")
    time.sleep(3)  # started, first passes done
    if controller.poll() is not None:
        return "VULNERABLE", f"the controller exited {controller.returncode}"
    cpu = _cpu_over(controller, 5.0)
    log = (box.root / "c.log").read_bytes()
    outcome, _ = verdict(Run(0, "", "", 5.0), cpu > 30, "")
    return outcome, f"controller at {cpu:.0f}% CPU over 5 s, log {len(log) // 1024} KiB"


def row10(box: Box) -> tuple[str, str]:
    """A GGUF whose llama.block_count is 4e9, converted under a 3 GiB address space."""
    import gguf

    path = box.root / "huge.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(4_000_000_000)
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    box.stack({"gguf": str(path)})
    run = box.run("models", "pull", "-f", str(box.stacks / "s.yaml"), timeout=60)
    return verdict(run, False, "")


def row11(box: Box, hub: Any) -> tuple[str, str]:
    """A hub repo of 100 000 files: `models update`, then `diff`."""
    files: dict[str, bytes | str | Path] = {f"f/{i:06d}.json": b"{}" for i in range(100_000)}
    files["config.json"] = "{}"
    hub.commit("org/many", files)
    box.stack({"hf": "org/many"})
    update = box.run("models", "update", "-f", str(box.stacks / "s.yaml"), timeout=180)
    lock = box.stacks / "s.lock.yaml"
    size = lock.stat().st_size if lock.exists() else 0
    diff = box.run("diff", str(box.stacks), timeout=120)
    harmed = update.seconds > 20 or diff.seconds > 5 or size > 4 << 20
    detail = f"update {update.seconds:.1f}s, lock {size >> 10} KiB, diff {diff.seconds:.1f}s"
    outcome, why = verdict(update, harmed, detail)
    return outcome, why if why == detail else f"{why}; {detail}"


def row12(box: Box, model: Path) -> tuple[str, str]:
    """An automatic port kept in ports.json, now held by another program."""
    box.stack({"path": str(model)})
    port = free_port()
    (box.state / "ports.json").write_text(json.dumps({"fast": port}))
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        run = box.run("reconcile", "--once", "--timeout", "60", str(box.stacks), timeout=120)
    finally:
        holder.close()
    ports = json.loads((box.state / "ports.json").read_text())
    harmed = run.code != 0 and ports.get("fast") == port
    return verdict(run, harmed, f"tier blocked on port {port} held by another program")


# --------------------------------------------------------------------------- a lying hub


def lying_hub() -> Any:
    """The local hub, able to send an endless body for one file (row 6).

    Its own handler and counter (``endless_sent``), not the hub's ``overrun``: the
    runner also replays the cases against an mlxctl from before that hub had one.
    """
    from mlxctl.testing import hub as hubmod

    class Hub(hubmod.LocalHub):
        def __init__(self) -> None:
            super().__init__()
            self.body: dict[str, tuple[int, int]] = {}
            self.endless_sent = 0

        def endless(self, repo: str, path: str, *, claimed: int, cap: int) -> Callable[[], int]:
            self.commit(repo, {"config.json": "{}", path: b"\0" * claimed})
            self.body[path] = (claimed, cap)
            return lambda: self.endless_sent

        def start(self) -> Hub:
            super().start()
            assert self._server is not None
            handler = self._server.RequestHandlerClass
            original = handler._resolve  # type: ignore[attr-defined]
            the_hub = self

            def resolve(h: Any, repo_id: str, rev: str, path: str, token: str, head: bool) -> None:
                if path not in the_hub.body or head:
                    original(h, repo_id, rev, path, token, head)
                    return
                h.send_response(200)
                h.send_header("Connection", "close")
                h.end_headers()
                cap = the_hub.body[path][1]
                chunk = b"\0" * (1 << 20)
                try:
                    while the_hub.endless_sent < cap:
                        h.wfile.write(chunk)
                        the_hub.endless_sent += len(chunk)
                except OSError:
                    pass
                h.close_connection = True

            handler._resolve = resolve  # type: ignore[attr-defined]
            self._server.handle_error = lambda *a: None  # type: ignore[method-assign]
            return self

    return Hub()


CASES: dict[int, tuple[str, Callable[..., tuple[str, str]], str]] = {
    1: ("lock file path /home/me/.bashrc; models pull", row1, ""),
    2: ("lock revision /…/victimdir/evilrev; models pull", row2, ""),
    3: ("models rm org/b, org/a holds the same commit", row3, ""),
    4: ("inventory create_time NaN names the user's sleep; down", row4, ""),
    5: ("down with MLXCTL_HOME at a copy of a state dir", row5, ""),
    6: ("endless body for a pinned 1 KiB file; models pull", row6, "hub"),
    7: ("lock FIFO / lock -> /dev/zero / refs/main FIFO", row7, ""),
    8: ("down on a read-only state directory", row8, "model"),
    9: ("controller with a job file owner_pid: 1e400", row9, ""),
    10: ("GGUF llama.block_count 4e9; models pull", row10, ""),
    11: ("hub repo of 100 000 files; models update, diff", row11, "hub"),
    12: ("automatic port in ports.json taken by another program", row12, "model"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default=",".join(map(str, CASES)))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    results: list[Result] = []
    hub = lying_hub().start()
    models = tempfile.TemporaryDirectory(prefix="adv-model-")
    model_dir = Path(models.name)
    try:
        for row in (int(r) for r in args.rows.split(",")):
            name, case, needs = CASES[row]
            with tempfile.TemporaryDirectory(prefix=f"adv-row{row}-") as tmp:
                box = Box(Path(tmp), hub.endpoint)
                started = time.monotonic()
                try:
                    extra = {"hub": lambda: [hub], "model": lambda: [tiny_model(model_dir)]}
                    outcome, detail = case(box, *extra.get(needs, list)())
                except Exception as exc:  # a case that cannot run says so, the rest go on
                    outcome, detail = "error", f"{type(exc).__name__}: {exc}"[:200]
                finally:
                    box.close()
                took = time.monotonic() - started
            results.append(Result(row, name, outcome, took, detail))
            print(f"{row:>3}  {outcome:<10} {took:6.1f}s  {name}: {detail}", flush=True)
    finally:
        hub.stop()
        models.cleanup()
    print()
    print("| row | case | outcome | seconds | detail |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r.row} | {r.case} | {r.outcome} | {r.seconds:.1f} | {r.detail} |")
    if args.json:
        write_results(args.json, "cases", [r.__dict__ for r in results])


if __name__ == "__main__":
    main()
