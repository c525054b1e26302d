"""Shell completion through the real ``mlxctl`` console script, as a shell calls it back:
``_MLXCTL_COMPLETE=bash_complete COMP_WORDS=... COMP_CWORD=...``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.integration.conftest import stack_yaml

SCRIPT = Path(sys.executable).parent / "mlxctl"


def tier(name: str, port: int) -> dict[str, object]:
    return {"name": name, "runtime": "mlx-lm", "model": {"path": "/models/x"}, "port": port}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An MLXCTL_HOME whose stack directory declares the tiers ``fast`` and ``big``, and
    another stack file (``other.yaml``, tier ``solo``) outside it."""
    stacks = tmp_path / "config" / "stacks"
    stacks.mkdir(parents=True)
    (stacks / "main.yaml").write_text(stack_yaml([tier("fast", 18001), tier("big", 18002)]))
    (stacks / "broken.yaml").write_text("apiVersion: mlxctl/v1\nkind: Stack\nspec: [\n")
    (tmp_path / "other.yaml").write_text(stack_yaml([tier("solo", 18003)]))
    return tmp_path


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MLXCTL_HOME": str(home), **extra}


def complete(home: Path, line: str) -> list[tuple[str, str]]:
    """What the console script answers bash for ``line`` (the word after its last space
    is the one being completed): (type, value) pairs."""
    words = line.split(" ")
    done = subprocess.run(
        [str(SCRIPT)],
        env=env_for(
            home,
            _MLXCTL_COMPLETE="bash_complete",
            COMP_WORDS=line,
            COMP_CWORD=str(len(words) - 1),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return [tuple(row.split(",", 1)) for row in done.stdout.splitlines()]  # type: ignore[misc]


def values(pairs: list[tuple[str, str]]) -> list[str]:
    return [value for _, value in pairs]


def test_the_console_script_completes_commands_options_and_tier_names(home: Path) -> None:
    assert SCRIPT.exists(), f"no console script beside {sys.executable}"
    assert values(complete(home, "mlxctl s")) == ["service", "status"]
    # Tier names from the stack directory (an invalid file there hides only itself),
    # never from a controller (none runs).
    assert values(complete(home, "mlxctl load ")) == ["fast", "big"]
    assert values(complete(home, "mlxctl logs ")) == ["fast", "big", "gateway"]
    # A stack file named on the command line is read instead.
    assert values(complete(home, f"mlxctl bench -f {home / 'other.yaml'} ")) == ["solo"]
    assert values(complete(home, "mlxctl events --kind oom")) == ["oom-killed"]
    assert values(complete(home, "mlxctl status -o ")) == ["text", "json"]


def test_the_completion_scripts(home: Path) -> None:
    scripts = {}
    for shell in ("bash", "zsh", "fish"):
        done = subprocess.run(
            [str(SCRIPT), "completion", shell],
            env=env_for(home),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        scripts[shell] = done.stdout
    assert scripts["zsh"].startswith("#compdef mlxctl")
    assert "complete --no-files --command mlxctl" in scripts["fish"]
    syntax = subprocess.run(["bash", "-n"], input=scripts["bash"], text=True, check=False)
    assert syntax.returncode == 0
    # The script in a real bash: it registers itself for mlxctl, and its function asks
    # the console script (found on PATH, as a user's shell finds it).
    probe = (
        scripts["bash"]
        + "\ncomplete -p mlxctl\n"
        + "COMP_WORDS=(mlxctl unload b); COMP_CWORD=2\n"
        + "_mlxctl_completion mlxctl b unload\n"
        + 'printf "reply:%s\\n" "${COMPREPLY[@]}"\n'
    )
    path = f"{SCRIPT.parent}:{os.environ.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-c", probe],
        env=env_for(home, PATH=path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "complete -o nosort -F _mlxctl_completion mlxctl" in done.stdout
    assert done.stdout.splitlines()[-1] == "reply:big"
