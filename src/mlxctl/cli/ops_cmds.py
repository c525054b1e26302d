"""``status``, ``down``, ``up``, ``logs``, ``events``, ``gateway-key`` and ``quickstart``.

Each asks the running controller when there is one (its admin API: the controller
holds the state lock, and knows health and demand first-hand), and otherwise works on
the state directory itself.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlxctl.cli.common import (
    CLOCK,
    context,
    controller,
    emit_json,
    err,
    explicit_files,
    load_selected,
    output_option,
    paths,
    show_converge,
    stack_selection,
    state_lock,
    targets,
)
from mlxctl.cli.completion import complete_event_kinds, complete_services, complete_tiers
from mlxctl.errors import ExitCode, NotFoundError

if TYPE_CHECKING:
    from mlxctl.admin.client import AdminClient


def status(path: Path | None = None, files: tuple[Path, ...] = (), output: str = "text") -> int:
    """Per tier and gateway: health, desired vs running (Synced/OutOfSync), PID, port, uptime."""
    client = controller()
    if client is not None:
        from mlxctl.admin.client import query
        from mlxctl.cli.quick import show_status

        show_status(
            client.call("GET", "/v1/status" + query(file=explicit_files(path, files))), output
        )
        return int(ExitCode.OK)
    from mlxctl.app import stacks
    from mlxctl.status import report
    from mlxctl.status.services import status_json

    result = stacks.status(context(), targets(path, files))
    for problem, kept in result.invalid_notes:
        note = "its last valid version is applied" if kept else "nothing is pruned"
        err(f"invalid: {problem} ({note})")
    if result.warning is not None:
        err(f"warning: stack files not usable, sync unknown: {result.warning}")
    if output == "json":
        emit_json(status_json(result.rows, result.invalid, result.host))
    elif result.rows:
        print(report.status_text(result.rows))
    else:
        print("nothing is running and no stack is defined")
    return int(ExitCode.OK)


def down(output: str = "text") -> int:
    """Stop everything mlxctl owns (the gateway and every tier). A running controller stays
    up, suspended (even across its restarts) until `mlxctl up` or `reconcile --once`."""
    client = controller()
    if client is not None:
        return _down_through(client, output == "json")
    from mlxctl.app import stacks
    from mlxctl.status import report

    notes: list[str] = []

    def note(line: str) -> None:
        notes.append(line)
        (print if output == "text" else err)(line)

    ctx = context()
    with state_lock(ctx):
        result = stacks.down(ctx, note=note)
    failed = [o for o in result.outcomes if not o.ok]
    code = ExitCode.APPLY_FAILED if failed else ExitCode.OK
    if output == "json":
        emit_json(report.version_record())
        for outcome in result.outcomes:
            emit_json(report.outcome_record(outcome))
        emit_json(report.summary_record(result.first.plan, result.outcomes, int(code), not failed))
    else:
        for outcome in result.outcomes:
            print(report.outcome_line(outcome))
        if not result.outcomes and not notes:
            print("nothing to stop")
    return int(code)


def _down_through(client: AdminClient, json_out: bool) -> int:
    answer = client.call("POST", "/v1/down", {}, timeout=None)
    code = int(answer["exit_code"])
    if json_out:
        for record in answer["records"]:
            emit_json(record)
    else:
        for line in answer["outcomes"]:
            print(line)
        for line in answer["notes"]:
            print(line)
        if not answer["outcomes"] and not answer["notes"] and code == 0:
            print("nothing to stop")
        for line in answer["errors"]:
            err(f"error: {line}")
    err("the controller stays up, suspended: `mlxctl up` (or `mlxctl reconcile --once`) resumes")
    return code


def up(output: str = "text") -> int:
    """Resume after `down` and converge: through the running controller, or as
    `reconcile --once` without one."""
    client = controller()
    if client is None:
        from mlxctl.cli.stack_cmds import reconcile

        return reconcile(once=True, output=output)
    answer = client.call("POST", "/v1/up", {}, timeout=None)
    return show_converge(answer, json_out=output == "json")


def logs(tier: str, follow: bool = False, tail_lines: int = 50, output: str = "text") -> int:
    """Print a service's log (TIER: a tier name, or 'gateway'); -o json: one object per
    line, {"service", "line"}."""
    from mlxctl.app import ops

    lines = _LogLines(tier, output == "json")
    for line in ops.log_tail(paths(), tier, tail_lines):
        lines.show(line)
    if follow:
        _follow(ops.log_file(paths(), tier), lines.write)
    return int(ExitCode.OK)


class _LogLines:
    """A log's text as written (text), or one JSON object per whole line (json): a line
    still being written is held until its end arrives."""

    def __init__(self, service: str, json_out: bool) -> None:
        self.service = service
        self.json_out = json_out
        self.partial = ""

    def show(self, line: str) -> None:
        if self.json_out:
            emit_json({"service": self.service, "line": line})
        else:
            print(line)

    def write(self, text: str) -> None:
        if not self.json_out:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        *whole, self.partial = (self.partial + text).split("\n")
        for line in whole:
            self.show(line)


def _follow(log: Path, write: Callable[[str], None]) -> None:
    """Hand text appended to ``log`` to ``write``, reopening the log when it is rotated."""
    handle = open(log, "rb")  # noqa: SIM115 - reopened on rotation
    handle.seek(0, os.SEEK_END)
    inode = os.fstat(handle.fileno()).st_ino
    try:
        while True:
            chunk = handle.read()
            if chunk:
                write(chunk.decode("utf-8", errors="replace"))
                continue
            try:
                if os.stat(log).st_ino != inode:
                    handle.close()
                    handle = open(log, "rb")  # noqa: SIM115
                    inode = os.fstat(handle.fileno()).st_ino
                    continue
            except FileNotFoundError:
                pass
            CLOCK.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        handle.close()


def events(
    tail_n: int = 50,
    output: str = "text",
    follow: bool = False,
    tier: tuple[str, ...] = (),
    kind: tuple[str, ...] = (),
) -> int:
    """Recent actions with their causes and results; -f: then each new one as it happens.
    --tier and --kind keep only those events (a crash's class counts as its kind too:
    --kind oom-killed, --kind SIGSEGV)."""
    import threading

    from mlxctl.app import ops
    from mlxctl.status.report import event_line

    only = ops.EventFilter(tuple(tier), tuple(kind))
    client = controller()
    records: Iterator[Any]
    if client is not None:
        from mlxctl.admin.client import query

        target = "/v1/events" + query(tail=tail_n, follow=follow, tier=list(tier), kind=list(kind))
        records = client.stream(target) if follow else iter(client.call("GET", target)["events"])
    else:
        records = ops.event_records(paths(), tail_n, only, follow=follow, stop=threading.Event())
    shown = 0
    try:
        for record in records:
            shown += 1
            event = ops.event_of(record)
            if output == "json":
                emit_json(record)
            elif event is not None:
                print(event_line(event), flush=True)
    except KeyboardInterrupt:
        return int(ExitCode.OK)  # how -f ends
    if not shown and output == "text" and not follow:
        print("no matching events" if tier or kind else "no events yet")
    return int(ExitCode.OK)


def gateway_key(
    path: Path | None = None, files: tuple[Path, ...] = (), rotate: bool = False
) -> int:
    """Print the gateway's API key (to use as the Bearer token); --rotate replaces it."""
    from mlxctl.app import ops

    stack = load_selected(targets(path, files))
    client = controller() if rotate else None
    if client is not None:
        client.call("POST", "/v1/gateway/key/rotate", {"files": explicit_files(path, files)})
        err(
            "rotated (by the controller): the running gateway accepts only the new key "
            "from its next poll (<1 s)"
        )
    elif rotate:
        ops.rotate_gateway_key(paths(), stack)
        err("rotated: the running gateway accepts only the new key from its next poll (<1 s)")
    print(ops.gateway_key(paths(), stack))
    return int(ExitCode.OK)


def quickstart(timeout: float | None = None) -> int:
    """Install the demo stack into your stacks directory, converge it, and show how to call it."""
    from mlxctl.app import ops, stacks
    from mlxctl.cli.stack_cmds import reconcile

    compile_own_modules()
    stacks_dir = paths().stacks
    installed = install_demo_stack(stacks_dir)
    if installed is not None:
        err(f"installed the demo stack at {installed}")
    code = reconcile(path=stacks_dir, once=True, timeout=timeout)
    if code != ExitCode.OK:
        return code
    stack = stacks.load([stacks_dir])
    key = ops.gateway_key(paths(), stack)
    tier = stack.tiers[0].spec.name
    port = stack.gateway.port
    print()
    print("Ask the gateway (OpenAI-compatible):")
    body = json.dumps(
        {
            "model": tier,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 30,
            "temperature": 0,
        }
    )
    print(
        f"curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d '{body}'"
    )
    return int(ExitCode.OK)


def compile_own_modules() -> None:
    """Write mlxctl's own bytecode once (dependencies get theirs at install, see
    pyproject's ``compile-bytecode``): where PYTHONDONTWRITEBYTECODE=1 is set, every
    command would otherwise compile mlxctl's modules again. Quiet, and skipped where the
    package directory is not writable."""
    import compileall

    import mlxctl

    package = Path(mlxctl.__file__).parent
    if os.access(package, os.W_OK):
        compileall.compile_dir(package, quiet=2, workers=1)


def install_demo_stack(stacks: Path) -> Path | None:
    """Copy the bundled demo stack into ``stacks``; None when a ``demo.yaml`` is already there.

    An existing file is the user's (they may have edited ports or args): it is kept.
    """
    stacks.mkdir(parents=True, exist_ok=True)
    target = stacks / "demo.yaml"
    if target.exists():
        return None
    shutil.copyfile(bundled_stack("demo.yaml"), target)
    return target


def bundled_stack(name: str) -> Path:
    """A stack file shipped with mlxctl (in the wheel, or the repository's stacks/)."""
    import mlxctl

    here = Path(mlxctl.__file__).parent
    for candidate in (here / "_stacks" / name, here.parent.parent / "stacks" / name):
        if candidate.exists():
            return candidate
    raise NotFoundError(f"bundled stack {name} not found")


def register(app: click.Group) -> None:
    app.command("status")(stack_selection(output_option(status)))
    app.command("down")(output_option(down))
    app.command("up")(output_option(up))
    logs_command = click.argument("tier", shell_complete=complete_services)(
        click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")(
            click.option(
                "--tail",
                "-n",
                "tail_lines",
                default=50,
                show_default=True,
                help="Lines to show first.",
            )(output_option(logs))
        )
    )
    app.command("logs")(logs_command)
    follow = click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
    by_tier = click.option(
        "--tier",
        multiple=True,
        metavar="NAME",
        help="Only this tier's events (repeatable).",
        shell_complete=complete_tiers,
    )
    by_kind = click.option(
        "--kind",
        multiple=True,
        metavar="KIND",
        shell_complete=complete_event_kinds,
        help="Only events of this kind (repeatable): an action (start, crash, stop, ...), "
        "exit, or why a server died (oom-killed, signal, error, could-not-start, "
        "out-of-memory, port-in-use, bad-model, SIGKILL, SIGSEGV, ...).",
    )
    app.command("events")(
        click.option(
            "--tail", "-n", "tail_n", default=50, show_default=True, help="How many recent events."
        )(output_option(follow(by_tier(by_kind(events)))))
    )
    rotate = click.option(
        "--rotate", is_flag=True, help="Replace the generated key (the gateway reloads it)."
    )
    app.command("gateway-key")(stack_selection(rotate(gateway_key)))

    @app.group("gateway")
    def gateway_group() -> None:
        """The gateway in front of every tier."""

    gateway_group.command("key")(stack_selection(rotate(gateway_key)))
    from mlxctl.cli import gateway_env

    gateway_env.register(gateway_group)
    app.command("quickstart")(
        click.option("--timeout", type=float, help="Startup timeout, seconds.")(quickstart)
    )
