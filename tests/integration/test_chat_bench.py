"""``mlxctl chat`` and ``mlxctl bench`` for real: a gateway and two mlx_lm.server tiers with
the tiny model, the chat driven in a real terminal (tmux), the bench's JSON checked
against its published schema and read back from the state directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from tests.integration.conftest import Mlxctl, free_ports, stack_yaml, wait_for

pytestmark = pytest.mark.integration
TMUX = shutil.which("tmux") or "/usr/bin/tmux"
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "bench-report.schema.json"
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Mlxctl]:
    """``fast`` samples (temperature 1: the tiny model then prints visible noise) and stops
    at 24 tokens; ``other`` is greedy and unbounded (the tiny model never says EOS): an
    answer long enough to interrupt."""
    root = tmp_path_factory.mktemp("chat")
    stacks = root / "stacks"
    stacks.mkdir()
    ctl = Mlxctl(home=root / "home", stacks=stacks)
    gw, fast, other = free_ports(3)
    tiers = [
        {"name": "fast", "runtime": "mlx-lm", "model": {"path": str(tiny_model)}, "port": fast,
         "args": {"temp": 1.0, "max-tokens": 24}},
        {"name": "other", "runtime": "mlx-lm", "model": {"path": str(tiny_model)},
         "port": other, "args": {"max-tokens": 100000}},
    ]  # fmt: skip
    ctl.write("stack.yaml", stack_yaml(tiers, gateway={"port": gw}))
    try:
        done = ctl.run("reconcile", "--once", str(stacks), timeout=180)
        assert done.returncode == 0, done.stderr
        yield ctl
    finally:
        ctl.cleanup()


def test_one_answer_is_streamed_and_a_wrong_tier_is_one_line(served: Mlxctl) -> None:
    stacks = str(served.stacks)
    done = served.run("chat", "fast", "What is the capital of France?", "-f", stacks)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "no answer came back"
    wrong = served.run("chat", "nope", "hi", "-f", stacks)
    assert wrong.returncode == 7
    assert wrong.stderr.startswith(
        "error: model 'nope' is not a tier or alias here; models: fast, other"
    )
    assert "Traceback" not in wrong.stderr


class Terminal:
    """One tmux session on its own server socket, killed by name at the end."""

    def __init__(self, name: str, command: str) -> None:
        self.name = name
        self.tmux = [TMUX, "-L", name]
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", name, "-x", "100", "-y", "30", command],
            check=True,
        )
        subprocess.run([*self.tmux, "set-option", "-t", name, "remain-on-exit", "on"], check=True)

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def type(self, line: str) -> None:
        self.keys("-l", line)
        self.keys("Enter")

    def screen(self) -> str:
        done = subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-J", "-S", "-", "-t", self.name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return done.stdout

    def wait(self, predicate: Any, what: str, timeout: float = 60) -> str:
        return str(wait_for(lambda: (s := self.screen()) and predicate(s) and s, timeout, what))

    def kill(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], check=False, capture_output=True)


def after(screen: str, marker: str) -> str:
    """What follows the last ``marker`` on the screen ("" before it shows)."""
    at = screen.rfind(marker)
    return "" if at < 0 else screen[at + len(marker) :]


@pytest.mark.skipif(not os.path.exists(TMUX), reason="tmux is not installed")
def test_interactive_chat_in_a_real_terminal(served: Mlxctl) -> None:
    env = f"MLXCTL_HOME={served.home} PYTHONPATH={SRC}"
    command = f"env {env} {sys.executable} -m mlxctl chat fast -f {served.stacks}; echo EXIT=$?"
    term = Terminal(f"mlxctl-chat-{os.getpid()}", command)
    try:
        term.wait(lambda s: ">>> " in s and "/? for help" in s, "the prompt")
        # A question: an answer streams, then the prompt comes back.
        term.type("What is the capital of France?")
        screen = term.wait(lambda s: ">>> " in after(s, "France?"), "an answer and the next prompt")
        answer = after(screen, "France?").rsplit(">>> ", 1)[0]
        assert answer.strip(), f"nothing was streamed: {screen!r}"
        # A multi-line message, with the continuation prompt.
        term.type('"""first line')
        # (capture-pane drops a line's trailing blanks: "... " shows as "...")
        term.wait(lambda s: "\n..." in after(s, "first line"), "the continuation prompt")
        term.type('second line"""')
        term.wait(lambda s: ">>> " in after(s, 'second line"""'), "an answer to the block")
        # Another tier; its answer never ends on its own: Ctrl-C stops that answer only.
        term.type("/model other")
        term.wait(lambda s: "now chatting with 'other'" in s, "the tier switch")
        term.type("Tell me everything.")
        time.sleep(1.5)
        assert "(answer stopped)" not in term.screen()
        term.keys("C-c")
        term.wait(lambda s: ">>> " in after(s, "(answer stopped)"), "the stop and the next prompt")
        assert "EXIT=" not in term.screen(), "Ctrl-C during an answer ended the chat"
        # Ctrl-D at the prompt leaves cleanly (sent again if it came before the prompt
        # took the terminal: a Ctrl-D typed then is read by the line discipline).
        final = ""
        time.sleep(1)
        for _ in range(30):
            term.keys("C-d")
            time.sleep(1)
            if "EXIT=" in (final := term.screen()):
                break
        tail = [line for line in final.splitlines() if line.strip()][-3:]
        assert "EXIT=0" in final and "Traceback" not in final, tail
    finally:
        term.kill()


def test_bench_measures_both_paths_against_the_schema_and_keeps_the_result(
    served: Mlxctl,
) -> None:
    import jsonschema

    args = [
        "bench", "fast", "-f", str(served.stacks), "-c", "1,2", "-n", "2",
        "--prompt-tokens", "16", "--max-tokens", "8", "--bandwidth", "10", "-o", "json",
    ]  # fmt: skip
    done = served.run(*args, timeout=180)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    runs = {(r["path"], r["concurrency"]): r for r in report["runs"]}
    assert set(runs) == {("gateway", 1), ("direct", 1), ("gateway", 2), ("direct", 2)}
    for run in runs.values():
        assert run["completed"] == 2 and run["failed"] == 0
        assert run["metrics"]["ttft_ms"]["p50"] > 0 and run["output_throughput"] > 0
        assert run["ceiling_tps"] > 0 and 0 < run["share"] < 1  # a 0.4 MB model at 10 GB/s
    assert report["ceiling"]["weights_bytes"] > 100_000
    assert report["bandwidth"] == {"gbps": 10.0, "source": "--bandwidth (stated)",
                                   "estimated": False}  # fmt: skip
    assert set(report["gateway_added"]) == {"1", "2"}
    saved = list((served.home / "state" / "bench").rglob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["runs"] == report["runs"]
    # The text form: the ceiling, where the bandwidth came from, one row per run.
    plot = served.home / "bench.svg"
    text = served.run(*args[:-2], "--no-save", "--plot", str(plot), timeout=180)
    assert text.returncode == 0, text.stderr
    assert "ceiling: 10.0 GB/s" in text.stdout and "bandwidth: --bandwidth" in text.stdout
    assert text.stdout.count("gateway  ") >= 2 and "gateway adds at x1" in text.stdout
    # The chart is for a terminal (this is a pipe); the plot is a file, with each series.
    assert "aggregate generation tok/s" not in text.stdout and f"plot: {plot}" in text.stderr
    svg = ElementTree.parse(plot).getroot()
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert [line.get("data-series") for line in lines] == ["gateway", "direct", "ceiling"]
    assert all(len(line.get("points", "").split()) == 2 for line in lines)  # x1, x2
