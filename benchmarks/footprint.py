"""mlxctl's own footprint beside a two-tier stack: memory, ``mlxctl status``'s imports, what
the first failover and the first translated request cost, and (``--install``) the venv.

Run: ``PYTHONPATH=src python benchmarks/footprint.py [--tree LABEL=DIR ...] [--runs N]
[--settle S] [--status-runs N] [--install LABEL=REV ...] [--json FILE]``

Each ``--tree`` is a checkout of mlxctl (default: this one, labelled ``now``): its ``src``
goes on PYTHONPATH, and its ``.venv/bin/python`` runs everything when it has one (a fresh
clone after ``uv sync``), else this Python. Runs alternate between the trees (the
machine's load drifts; a pair shares it). Each run and tree, in a throw-away MLXCTL_HOME
with the tiny test model (built here), a real controller (``mlxctl reconcile``), the
gateway and two tiers (``chat``: mlx-lm, ``chat-vllm``: vllm-mlx, as in the demo stack):

- ``stack``: once both tiers are ready and ``--settle`` seconds have passed (start-up
  work done: older gateways imported LiteLLM in the background), RSS, USS and PSS of
  every process: the controller, the gateway, each tier, and whatever else runs in their
  process groups (older versions: one log pump each). mlxctl's own = the controller, the
  gateway and the pumps; the tiers are the model servers. The gateway again after the
  requests below.
- ``translated``: POST /v1/messages to ``chat`` (mlx_lm.server has no Messages route: the
  gateway translates), 1 token, not streamed: the first request, then the next ones.
- ``status``: ``python -X importtime -m mlxctl status -o json`` with the controller
  running (the stack in the default stacks directory: the command's quick form): total
  import time and the packages that take it; the command's wall time over
  ``--status-runs`` runs, and ``python -c pass`` (the floor).
- ``failover``: the same stack with ``fallbacks: [chat-vllm]`` on ``chat``; after settling,
  the gateway's memory, ``chat-vllm`` asked twice directly (its own first-request cost),
  the controller stopped (servers keep running), ``chat`` killed, then chat requests for
  ``chat``: the first failover (answered by ``chat-vllm``, the ``x-mlxctl-tier`` header
  says so) and the next ones.

``first`` (``--first-runs N``, default 5): the first request that needs what a gateway may
load lazily, measured with every tree's gateway side by side (the same tiers, the same
moment; the order alternates): one real mlx_lm.server tier ``live`` and a port nothing
listens on (``dead``). Each run starts, for each tree, a gateway with ``fallbacks:
{dead: [live]}`` and one without fallbacks, waits for its start-up to end (its
``litellm.Router`` line), then times the first POST /v1/messages to ``live``
(translated) on the one without fallbacks, the first chat request for ``dead`` (a
failover) on the other, and 10 more of each; the gateways' RSS idle and after.

``--install LABEL=REV``: a fresh ``git clone`` of this repository at REV in a temporary
directory, ``uv sync --frozen`` with an empty cache (``UV_CACHE_DIR`` a new temporary
directory: every download counts) and again with the shared warm cache (the venv
removed in between): seconds, the venv's size, its packages; and what each direct
dependency brings (the packages only it pulls in, with their installed size, from
``uv.lock``'s graph and the venv's ``RECORD`` files). The clone is deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _shared import free_port, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "footprint-linux-2cpu.json"
MIB = 1 << 20
MSG = [{"role": "user", "content": "hi"}]
PUMP = "mlxctl.machine.logpump"
TIER_HEADER = "x-mlxctl-tier"


@dataclass(frozen=True)
class Tree:
    label: str
    root: Path
    python: str

    @property
    def commit(self) -> str:
        got = subprocess.run(
            ["git", "-C", str(self.root), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=False,
        )
        return got.stdout.strip()


def tree(spec: str) -> Tree:
    label, _, where = spec.partition("=")
    root = Path(where or ".").resolve()
    venv = root / ".venv" / "bin" / "python"
    return Tree(label, root, str(venv) if venv.exists() else sys.executable)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def med(samples: list[float]) -> float | None:
    return round(statistics.median(samples), 4) if samples else None


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- a session: one MLXCTL_HOME, a stack, a controller -----------------------------------


class Session:
    def __init__(self, t: Tree, root: Path) -> None:
        self.tree = t
        self.home = Path(tempfile.mkdtemp(prefix=f"home-{t.label}-", dir=root))
        self.stacks = self.home / "config" / "stacks"  # the default: `status` needs no path
        self.stacks.mkdir(parents=True)
        self.env = {**os.environ, "MLXCTL_HOME": str(self.home)}
        self.env["PYTHONPATH"] = str(t.root / "src")
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # the CLI as users run it
        self.controller: subprocess.Popen[bytes] | None = None
        self.gw_port = free_port()
        self.url = f"http://127.0.0.1:{self.gw_port}"
        self.key = ""

    def cli(self, *args: str) -> list[str]:
        return [self.tree.python, "-m", "mlxctl", *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.cli(*args), env=self.env, capture_output=True, text=True, timeout=300
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"mlxctl {' '.join(args)} -> {done.returncode}: {done.stderr}")
        return done

    def write(self, model: Path, fallbacks: bool) -> None:
        chat: dict[str, Any] = {"name": "chat", "runtime": "mlx-lm", "model": {"path": str(model)}}
        if fallbacks:
            chat["fallbacks"] = ["chat-vllm"]
        vllm = {"name": "chat-vllm", "runtime": "vllm-mlx", "model": {"path": str(model)}}
        spec = {"gateway": {"port": self.gw_port}, "tiers": [chat, vllm]}
        doc = {"apiVersion": "mlxctl/v1", "kind": "Stack", "metadata": {"name": "footprint"}}
        (self.stacks / "stack.yaml").write_text(json.dumps({**doc, "spec": spec}, indent=2))

    def start(self) -> None:
        log = (self.home / "controller.log").open("wb")
        self.controller = subprocess.Popen(
            self.cli("reconcile", str(self.stacks)), env=self.env, stdout=log, stderr=log
        )

        def key() -> str:
            got = self.run("gateway", "key", str(self.stacks), check=False)
            return got.stdout.strip() if got.returncode == 0 else ""

        self.key = wait_for(key, 120, "the gateway key", step=0.5)
        wait_for(self.ready, 300, "both tiers and the gateway ready", step=0.5)

    def ready(self) -> bool:
        records = self.inventory()
        names = {"chat", "chat-vllm", "gateway"}
        return names <= set(records) and all(records[n].get("ready_at") for n in names)

    def inventory(self) -> dict[str, Any]:
        try:
            return dict(
                json.loads((self.home / "state" / "inventory.json").read_text())["services"]
            )
        except (OSError, ValueError, KeyError):
            return {}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def close(self) -> None:
        if self.controller is not None and self.controller.poll() is None:
            self.controller.send_signal(signal.SIGTERM)
            try:
                self.controller.wait(30)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait()
        self.run("down", check=False)
        for rec in self.inventory().values():
            try:
                if abs(psutil.Process(rec["pid"]).create_time() - rec["create_time"]) < 0.05:
                    os.killpg(rec["pgid"], signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, KeyError):
                pass
        shutil.rmtree(self.home, ignore_errors=True)


@contextmanager
def session(t: Tree, root: Path, model: Path, *, fallbacks: bool) -> Iterator[Session]:
    s = Session(t, root)
    try:
        s.write(model, fallbacks)
        s.start()
        yield s
    finally:
        s.close()


# -- memory ------------------------------------------------------------------------------


def memory(proc: psutil.Process) -> dict[str, Any]:
    with proc.oneshot():
        full = proc.memory_full_info()
        cmd = " ".join(proc.cmdline())
    pss = getattr(full, "pss", None)
    return {
        "pid": proc.pid,
        "cmd": cmd[:160],
        "rss_mib": round(full.rss / MIB, 1),
        "uss_mib": round(full.uss / MIB, 1),
        "pss_mib": round(pss / MIB, 1) if pss is not None else None,
    }


def group(pgid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def processes(s: Session) -> list[dict[str, Any]]:
    """Every process of the stack with its role: controller, gateway, tier, log pump, child."""
    assert s.controller is not None
    rows = [
        {"role": "controller", "service": "controller", **memory(psutil.Process(s.controller.pid))}
    ]
    for name, rec in sorted(s.inventory().items()):
        for proc in group(int(rec["pgid"])):
            try:
                row = memory(proc)
            except psutil.Error:
                continue
            if proc.pid == rec["pid"]:
                role = "gateway" if name == "gateway" else "tier"
            elif PUMP in row["cmd"]:
                role = "log pump"
            else:
                role = "gateway child" if name == "gateway" else "tier child"
            rows.append({"role": role, "service": name, **row})
    return rows


def own(rows: list[dict[str, Any]], key: str) -> float:
    """mlxctl's own processes: the controller, the gateway (and its children), log pumps."""
    mine = {"controller", "gateway", "gateway child", "log pump"}
    return round(sum(r[key] for r in rows if r["role"] in mine), 1)


def gateway_memory(s: Session) -> dict[str, Any]:
    rec = s.inventory()["gateway"]
    return memory(psutil.Process(int(rec["pid"])))


# -- requests ----------------------------------------------------------------------------


def timed(client: httpx.Client, method: str, url: str, **kw: Any) -> tuple[float, httpx.Response]:
    began = time.perf_counter()
    resp = client.request(method, url, **kw)
    return time.perf_counter() - began, resp


def translated(s: Session, client: httpx.Client, n: int = 5) -> dict[str, Any]:
    """POST /v1/messages to the mlx-lm tier: the first, then ``n - 1`` more."""
    body = {"model": "chat", "max_tokens": 1, "messages": MSG}
    headers = {"x-api-key": s.key, "anthropic-version": "2023-06-01"}
    took = []
    for _ in range(n):
        seconds, resp = timed(client, "POST", f"{s.url}/v1/messages", json=body, headers=headers)
        if resp.status_code != 200 or resp.json().get("type") != "message":
            raise RuntimeError(f"/v1/messages: {resp.status_code} {resp.text[:300]}")
        took.append(seconds)
    return {"first_s": round(took[0], 4), "next_median_s": med(took[1:]), "samples": took}


def chat(s: Session, client: httpx.Client, model: str) -> tuple[float, httpx.Response]:
    body = {"model": model, "messages": MSG, "max_tokens": 1}
    url = f"{s.url}/v1/chat/completions"
    return timed(client, "POST", url, json=body, headers=s.headers)


def failover(s: Session, client: httpx.Client, n: int = 5) -> dict[str, Any]:
    """Stop the controller, kill ``chat``, then ask for ``chat``: its fallback answers."""
    for _ in range(2):  # vllm-mlx's own first request is slow: not the failover's cost
        chat(s, client, "chat-vllm")
    assert s.controller is not None
    s.controller.send_signal(signal.SIGTERM)
    s.controller.wait(60)
    rec = s.inventory()["chat"]
    victim = psutil.Process(int(rec["pid"]))
    assert abs(victim.create_time() - rec["create_time"]) < 0.05
    os.killpg(int(rec["pgid"]), signal.SIGKILL)
    wait_for(lambda: not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE, 10,
             "the tier killed")  # fmt: skip
    took = []
    for _ in range(n):
        seconds, resp = chat(s, client, "chat")
        served = resp.headers.get(TIER_HEADER)
        if resp.status_code != 200 or served != "chat-vllm":
            raise RuntimeError(f"failover: {resp.status_code} by {served}: {resp.text[:300]}")
        took.append(seconds)
    return {"first_s": round(took[0], 4), "next_median_s": med(took[1:]), "samples": took}


# -- mlxctl status: imports and wall time -----------------------------------------------

IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def importtime(stderr: str) -> dict[str, Any]:
    """Total import time (the top-level imports' cumulative times) and self time by package."""
    total = 0
    by_package: Counter[str] = Counter()
    for line in stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if not m:
            continue
        self_us, cumulative, indent, name = int(m[1]), int(m[2]), m[3], m[4]
        if len(indent) == 1:
            total += cumulative
        by_package[name.split(".")[0]] += self_us
    top = {k: round(v / 1000, 1) for k, v in by_package.most_common(12)}
    return {"total_ms": round(total / 1000, 1), "self_ms_by_package": top,
            "packages": len(by_package)}  # fmt: skip


def status(s: Session, runs: int) -> dict[str, Any]:
    cmd = s.cli("status", "-o", "json")
    traced = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]], env=s.env, capture_output=True, text=True
    )
    if traced.returncode != 0:
        raise RuntimeError(f"status: {traced.returncode} {traced.stderr[-500:]}")
    walls, floors = [], []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(cmd, env=s.env, capture_output=True, check=True)
        walls.append(time.perf_counter() - began)
        began = time.perf_counter()
        subprocess.run([cmd[0], "-c", "pass"], env=s.env, capture_output=True, check=True)
        floors.append(time.perf_counter() - began)
    return {
        "imports": importtime(traced.stderr),
        "wall_median_s": med(walls),
        "python_floor_median_s": med(floors),
        "walls": [round(w, 4) for w in walls],
    }


# -- first requests, every tree's gateway side by side ------------------------------------


class Gateways:
    """One gateway process per tree and config, in front of the same tiers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, t: Tree, name: str, config: dict[str, Any]) -> tuple[str, int, Path]:
        port = free_port()
        routes = self.root / f"routes-{t.label}-{name}.json"
        routes.write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(t.root / "src"), "LITELLM_MASTER_KEY": "sk-fp"}
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        log = self.root / f"gateway-{t.label}-{name}.log"
        argv = [t.python, "-m", "mlxctl.gateway", "--config", str(routes), "--port", str(port)]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return f"http://127.0.0.1:{port}", proc.pid, log

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def started(log: Path) -> bool:
    """The gateway's start-up has ended: LiteLLM warmed, or said not needed (older
    versions always warmed it)."""
    return b"litellm.Router " in log.read_bytes()


def first_requests(trees: list[Tree], root: Path, model: Path, runs: int) -> dict[str, Any]:
    tier_port = free_port()
    argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model)]
    with (root / "live.log").open("wb") as log:
        argv += ["--port", str(tier_port)]
        tier_proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    live = {"name": "live", "port": tier_port, "served_model": "default_model"}
    dead = {"name": "dead", "port": free_port(), "served_model": "default_model"}
    configs = {
        "plain": {"routes": [live]},
        "fallback": {"routes": [live, dead], "fallbacks": {"dead": ["live"]}},
    }
    out: dict[str, Any] = {t.label: {"translated": [], "failover": [], "rss": []} for t in trees}
    gateways = Gateways(root)
    try:
        with httpx.Client(timeout=300) as client:
            tier_url = f"http://127.0.0.1:{tier_port}"
            wait_for(lambda: _ok(client, tier_url, "default_model", {}), 120, "the tier")
            for n in range(runs):
                order = trees if n % 2 == 0 else list(reversed(trees))
                up = {
                    t.label: {k: gateways.start(t, k, c) for k, c in configs.items()} for t in order
                }
                logs = [log for pair in up.values() for _, _, log in pair.values()]
                wait_for(lambda ls=logs: all(started(x) for x in ls), 180, "the start")
                rss = {label: {k: memory(psutil.Process(g[1]))["rss_mib"] for k, g in pair.items()}
                       for label, pair in up.items()}  # fmt: skip
                took = _ask_alternating(client, order, up)
                for t in order:
                    after = {f"{k}_after": memory(psutil.Process(g[1]))["rss_mib"]
                             for k, g in up[t.label].items()}  # fmt: skip
                    out[t.label]["rss"].append({**rss[t.label], **after})
                    for kind, samples in took[t.label].items():
                        first = round(samples[0], 4)
                        out[t.label][kind].append(
                            {"first_s": first, "next_median_s": med(samples[1:])}
                        )
                gateways.stop()
    finally:
        gateways.stop()
        tier_proc.kill()
        tier_proc.wait()
    return out


def _ask_alternating(
    client: httpx.Client, order: list[Tree], up: dict[str, dict[str, tuple[str, int, Path]]]
) -> dict[str, dict[str, list[float]]]:
    """11 translated requests (the gateway without fallbacks) and 11 failovers (the one
    with), each tree in turn, the order alternating: seconds per request."""
    headers = {"x-api-key": "sk-fp", "Authorization": "Bearer sk-fp"}
    messages = {"model": "live", "max_tokens": 1, "messages": MSG}
    failover = {"model": "dead", "max_tokens": 1, "messages": MSG}
    took: dict[str, dict[str, list[float]]] = {
        t.label: {"translated": [], "failover": []} for t in order
    }
    for i in range(11):
        for t in order if i % 2 == 0 else list(reversed(order)):
            plain, fallback = up[t.label]["plain"][0], up[t.label]["fallback"][0]
            url = f"{plain}/v1/messages"
            seconds, resp = timed(client, "POST", url, json=messages, headers=headers)
            assert resp.status_code == 200, resp.text
            took[t.label]["translated"].append(seconds)
            url = f"{fallback}/v1/chat/completions"
            seconds, resp = timed(client, "POST", url, json=failover, headers=headers)
            assert resp.status_code == 200 and resp.headers.get(TIER_HEADER) == "live", resp.text
            took[t.label]["failover"].append(seconds)
    return took


def _ok(client: httpx.Client, url: str, model: str, headers: dict[str, str]) -> bool:
    body = {"model": model, "messages": MSG, "max_tokens": 1}
    try:
        return client.post(f"{url}/v1/chat/completions", json=body, headers=headers).is_success
    except httpx.HTTPError:
        return False


def first_summary(first: dict[str, Any]) -> dict[str, Any]:
    def pick(rows: list[dict[str, Any]], key: str) -> float | None:
        return med([r[key] for r in rows])

    return {
        label: {
            "runs": len(got["translated"]),
            "translated_first_s": pick(got["translated"], "first_s"),
            "translated_next_s": pick(got["translated"], "next_median_s"),
            "failover_first_s": pick(got["failover"], "first_s"),
            "failover_next_s": pick(got["failover"], "next_median_s"),
            "gateway_rss_mib_no_fallbacks": pick(got["rss"], "plain"),
            "gateway_rss_mib_with_fallbacks": pick(got["rss"], "fallback"),
            "gateway_rss_mib_no_fallbacks_after": pick(got["rss"], "plain_after"),
            "gateway_rss_mib_with_fallbacks_after": pick(got["rss"], "fallback_after"),
        }
        for label, got in first.items()
    }


# -- one run of one tree -----------------------------------------------------------------


def one_run(t: Tree, root: Path, model: Path, settle: float, status_runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"tree": t.label, "load_before": load()}
    with httpx.Client(timeout=300) as client:
        with session(t, root, model, fallbacks=False) as s:
            time.sleep(settle)
            rows = processes(s)
            out["stack"] = {
                "processes": rows,
                "own_rss_mib": own(rows, "rss_mib"),
                "own_uss_mib": own(rows, "uss_mib"),
                "own_pss_mib": own(rows, "pss_mib") if rows[0]["pss_mib"] is not None else None,
                "pumps": sum(r["role"] == "log pump" for r in rows),
            }
            out["translated"] = translated(s, client)
            chat(s, client, "chat-vllm")
            out["stack"]["gateway_after_requests"] = gateway_memory(s)
            out["status"] = status(s, status_runs)
        with session(t, root, model, fallbacks=True) as s:
            time.sleep(settle)
            out["failover_stack_gateway"] = gateway_memory(s)
            out["failover"] = failover(s, client)
            out["failover_gateway_after"] = gateway_memory(s)
    out["load_after"] = load()
    return out


# -- --install: a fresh clone, uv sync cold and warm, what each dependency brings --------


def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        raise SystemExit("--install needs uv on PATH")
    return found


def sync(where: Path, cache: Path | None) -> dict[str, Any]:
    shutil.rmtree(where / ".venv", ignore_errors=True)
    env = {**os.environ, "UV_PYTHON": os.environ.get("UV_PYTHON", "3.11")}
    env.pop("VIRTUAL_ENV", None)
    if cache is not None:
        env["UV_CACHE_DIR"] = str(cache)
    began = time.perf_counter()
    done = subprocess.run(
        [uv(), "sync", "--frozen"], cwd=where, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"uv sync in {where}: {done.stderr[-1000:]}")
    steps = [
        line.strip()
        for line in done.stderr.splitlines()
        if re.match(r"\s*(Prepared|Installed|Bytecode)", line)
    ]
    return {"seconds": round(seconds, 1), "uv": steps}


def du(path: Path) -> int:
    done = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_sizes(site: Path) -> dict[str, int]:
    """Bytes on disk per installed distribution: the files its RECORD lists, and the
    bytecode compiled for them at install time (not in RECORD)."""
    sizes: dict[str, int] = {}
    for info in site.glob("*.dist-info"):
        meta = (info / "METADATA").read_text(errors="replace")
        name = normal(re.search(r"^Name: (.+)$", meta, re.M)[1])  # type: ignore[index]
        total = 0
        for line in (info / "RECORD").read_text(errors="replace").splitlines():
            path = site / line.split(",")[0]
            files = [path]
            if path.suffix == ".py":
                tag = sys.implementation.cache_tag
                files.append(path.parent / "__pycache__" / f"{path.stem}.{tag}.pyc")
            for found in files:
                with contextlib.suppress(OSError):
                    total += found.stat().st_size
        sizes[name] = total
    return sizes


def dependency_weights(where: Path) -> dict[str, Any]:
    """For each direct dependency of mlxctl: the packages only it brings (following the
    extras each edge of ``uv.lock`` activates), and their size in the synced venv."""
    lock = tomllib.loads((where / "uv.lock").read_text())
    packages = {normal(p["name"]): p for p in lock["package"]}

    def edges(name: str, extras: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
        package = packages.get(name, {})
        found = list(package.get("dependencies", []))
        for extra in extras:
            found += package.get("optional-dependencies", {}).get(extra, [])
        return [(normal(d["name"]), tuple(d.get("extra", []))) for d in found]

    def reach(start: list[tuple[str, tuple[str, ...]]]) -> set[str]:
        seen: set[tuple[str, tuple[str, ...]]] = set()
        todo = list(start)
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(edges(*node))
        return {name for name, _ in seen}

    me = packages["mlxctl"]
    site = next((where / ".venv" / "lib").glob("python3*/site-packages"))
    sizes = installed_sizes(site)
    installed = set(sizes)
    direct = [(normal(d["name"]), tuple(d.get("extra", []))) for d in me["dependencies"]]
    dev = [
        (normal(d["name"]), tuple(d.get("extra", [])))
        for d in me.get("dev-dependencies", {}).get("dev", [])
    ]
    everything = direct + dev
    rows = {}
    for dep in everything:
        others = reach([o for o in everything if o[0] != dep[0]])
        alone = (reach([dep]) - others) & installed
        rows[dep[0]] = {
            "group": "dev" if dep in dev else "main",
            "packages_only_it_brings": len(alone),
            "mib_only_it_brings": round(sum(sizes[p] for p in alone) / MIB, 1),
            "largest": sorted(alone, key=lambda p: -sizes[p])[:6],
        }
    return {
        "installed_packages": len(installed),
        "installed_mib": round(sum(sizes.values()) / MIB, 1),
        "largest_packages_mib": {
            p: round(sizes[p] / MIB, 1) for p in sorted(installed, key=lambda p: -sizes[p])[:15]
        },
        "by_dependency": rows,
    }


def install(label: str, rev: str, root: Path) -> dict[str, Any]:
    where = root / f"clone-{label}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
    subprocess.run(["git", "-C", str(where), "checkout", "-q", rev], check=True)
    cold_cache = Path(tempfile.mkdtemp(prefix="uv-cache-", dir=root))
    try:
        cold = sync(where, cold_cache)
        warm = sync(where, None)
        site = next((where / ".venv" / "lib").glob("python3*/site-packages"))
        out = {
            "rev": rev,
            "commit": subprocess.run(
                ["git", "-C", str(where), "log", "-1", "--format=%h %s"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip(),
            "cold_cache_sync": cold,
            "warm_cache_sync": warm,
            "venv_mib": round(du(where / ".venv") / MIB, 1),
            "cold_cache_mib": round(du(cold_cache) / MIB, 1),
            "dist_infos": len(list(site.glob("*.dist-info"))),
            **dependency_weights(where),
        }
    finally:
        shutil.rmtree(cold_cache, ignore_errors=True)
        shutil.rmtree(where, ignore_errors=True)
    return out


# -- main --------------------------------------------------------------------------------


def summary(runs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    mine = [r for r in runs if r["tree"] == label]

    def pick(get: Callable[[dict[str, Any]], float]) -> float | None:
        return med([get(r) for r in mine])

    def role(r: dict[str, Any], name: str, key: str) -> float:
        return sum(p[key] for p in r["stack"]["processes"] if p["role"] == name)

    return {
        "runs": len(mine),
        "controller_rss_mib": pick(lambda r: role(r, "controller", "rss_mib")),
        "gateway_rss_mib": pick(lambda r: role(r, "gateway", "rss_mib")),
        "gateway_uss_mib": pick(lambda r: role(r, "gateway", "uss_mib")),
        "pumps": pick(lambda r: r["stack"]["pumps"]),
        "pumps_rss_mib": pick(lambda r: role(r, "log pump", "rss_mib")),
        "own_rss_mib": pick(lambda r: r["stack"]["own_rss_mib"]),
        "own_uss_mib": pick(lambda r: r["stack"]["own_uss_mib"]),
        "tiers_rss_mib": pick(lambda r: role(r, "tier", "rss_mib")),
        "gateway_after_requests_rss_mib": pick(
            lambda r: r["stack"]["gateway_after_requests"]["rss_mib"]
        ),
        "translated_first_s": pick(lambda r: r["translated"]["first_s"]),
        "translated_next_s": pick(lambda r: r["translated"]["next_median_s"]),
        "status_import_ms": pick(lambda r: r["status"]["imports"]["total_ms"]),
        "status_wall_s": pick(lambda r: r["status"]["wall_median_s"]),
        "python_floor_s": pick(lambda r: r["status"]["python_floor_median_s"]),
        "failover_stack_gateway_rss_mib": pick(lambda r: r["failover_stack_gateway"]["rss_mib"]),
        "failover_first_s": pick(lambda r: r["failover"]["first_s"]),
        "failover_next_s": pick(lambda r: r["failover"]["next_median_s"]),
        "failover_gateway_after_rss_mib": pick(lambda r: r["failover_gateway_after"]["rss_mib"]),
    }


ROWS = (
    ("controller RSS (MiB)", "controller_rss_mib"),
    ("gateway RSS, idle (MiB)", "gateway_rss_mib"),
    ("gateway USS, idle (MiB)", "gateway_uss_mib"),
    ("log pumps", "pumps"),
    ("log pumps RSS (MiB)", "pumps_rss_mib"),
    ("mlxctl's own RSS: controller + gateway + pumps (MiB)", "own_rss_mib"),
    ("mlxctl's own USS (MiB)", "own_uss_mib"),
    ("tiers RSS, the two model servers (MiB)", "tiers_rss_mib"),
    ("gateway RSS after requests (MiB)", "gateway_after_requests_rss_mib"),
    ("first /v1/messages to mlx-lm, translated (s)", "translated_first_s"),
    ("next ones, median (s)", "translated_next_s"),
    ("mlxctl status: import time, -X importtime (ms)", "status_import_ms"),
    ("mlxctl status -o json, wall (s)", "status_wall_s"),
    ("python -c pass, wall (s)", "python_floor_s"),
    ("with fallbacks: gateway RSS, idle (MiB)", "failover_stack_gateway_rss_mib"),
    ("first failover, chat -> chat-vllm (s)", "failover_first_s"),
    ("next failovers, median (s)", "failover_next_s"),
    ("with fallbacks: gateway RSS after failovers (MiB)", "failover_gateway_after_rss_mib"),
)


def report(out: dict[str, Any], labels: list[str]) -> None:
    """The table of the stack runs (medians), and what each install brought."""
    if "summary" in out:
        print(f"\n{'measure (median of the runs)':<56}" + "".join(f"{x:>14}" for x in labels))
        for name, key in ROWS:
            values = [out["summary"][label][key] for label in labels]
            print(f"{name:<56}" + "".join(f"{v!s:>14}" for v in values))
    if "first_summary" in out:
        print(f"\n{'gateways side by side (median of the runs)':<56}"
              + "".join(f"{x:>14}" for x in labels))  # fmt: skip
        for key in next(iter(out["first_summary"].values())):
            values = [out["first_summary"][label][key] for label in labels]
            print(f"{key:<56}" + "".join(f"{v!s:>14}" for v in values))
    for label, got in out.get("install", {}).items():
        cold, warm = got["cold_cache_sync"]["seconds"], got["warm_cache_sync"]["seconds"]
        print(
            f"\ninstall {label} ({got['commit']}): venv {got['venv_mib']} MiB, "
            f"{got['installed_packages']} packages; uv sync {cold} s (empty cache), "
            f"{warm} s (warm cache)"
        )
        rows = sorted(got["by_dependency"].items(), key=lambda kv: -kv[1]["mib_only_it_brings"])
        for dep, row in rows:
            alone = (
                f"{row['packages_only_it_brings']:>4} packages {row['mib_only_it_brings']:>7} MiB"
            )
            print(f"  {dep:<24} {row['group']:<5} {alone}  {', '.join(row['largest'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="LABEL=DIR (repeatable)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--status-runs", type=int, default=10)
    parser.add_argument("--install", action="append", default=[], help="LABEL=REV (repeatable)")
    parser.add_argument("--first-runs", type=int, default=5)
    parser.add_argument("--skip-stack", action="store_true", help="only --install")
    parser.add_argument("--json", type=Path, default=RESULTS)
    opts = parser.parse_args()
    trees = [tree(spec) for spec in opts.tree] or [Tree("now", ROOT, sys.executable)]
    out: dict[str, Any] = {
        "trees": {
            t.label: {"root": str(t.root), "python": t.python, "commit": t.commit} for t in trees
        },
        "load_before": load(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="mlxctl-footprint-") as tmp:
        root = Path(tmp)
        if not opts.skip_stack:
            from mlxctl.testing.tiny_model import build_tiny_model

            model = build_tiny_model(root / "models" / "tiny")
            for n in range(opts.runs):
                for t in trees if n % 2 == 0 else reversed(trees):
                    print(f"run {n + 1}/{opts.runs}: {t.label}", flush=True)
                    out["runs"].append(one_run(t, root, model, opts.settle, opts.status_runs))
            if opts.runs:
                out["summary"] = {t.label: summary(out["runs"], t.label) for t in trees}
            if opts.first_runs:
                print("first requests, gateways side by side", flush=True)
                out["first"] = first_requests(trees, root, model, opts.first_runs)
                out["first_summary"] = first_summary(out["first"])
        if opts.install:
            out["install"] = {}
            for spec in opts.install:
                label, _, rev = spec.partition("=")
                print(f"install: {label} ({rev})", flush=True)
                out["install"][label] = install(label, rev or "HEAD", root)
    out["load_after"] = load()
    report(out, [t.label for t in trees])
    print(f"load average before {out['load_before']}, after {out['load_after']}")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        write_results(opts.json, "footprint", out)


if __name__ == "__main__":
    main()
