"""``mlxctl doctor``: one line per check of this installation, each with its fix."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mlxctl.cli.common import context, controller, emit_json, output_option, stack_selection
from mlxctl.cli.common import targets as chosen_targets
from mlxctl.errors import ExitCode

MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}


def doctor(path: Path | None = None, files: tuple[Path, ...] = (), output: str = "text") -> int:
    """Check this installation: runtimes and their versions, the MLX backend, the GPU
    wired-memory limit (macOS), ports, disk space for models not pulled yet, the memory
    budget, an HF token, the controller and its service, the admin socket, the state
    lock and the inventory. Exit 1 when a check fails (warnings exit 0).

    \b
    Examples:
      mlxctl doctor
      mlxctl doctor -o json
    """
    from mlxctl.app import doctor as checks

    client = controller()
    pid = None if client is None else int(client.call("GET", "/v1/controller")["pid"])
    results = checks.run(context(), chosen_targets(path, files), pid)
    code = ExitCode.PROBLEMS if checks.failed(results) else ExitCode.OK
    if output == "json":
        emit_json({"checks": [c.to_json() for c in results], "ok": code == ExitCode.OK})
        return int(code)
    width = max(len(c.name) for c in results)
    for c in results:
        fix = f"  -> fix: {c.fix}" if c.fix and c.level in ("warn", "fail") else ""
        print(f"{MARKS[c.level]}  {c.name.ljust(width)}  {c.detail}{fix}")
    if code != ExitCode.OK:
        print("problems found", file=sys.stderr)
    return int(code)


def register(app: click.Group) -> None:
    app.command("doctor")(stack_selection(output_option(doctor)))
