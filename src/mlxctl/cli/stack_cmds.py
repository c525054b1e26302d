"""``validate``, ``render``, ``diff`` and ``reconcile``: the stack-file commands.

Thin: each command calls a use case in :mod:`mlxctl.app.stacks` and prints its result.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

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
from mlxctl.errors import ExitCode

if TYPE_CHECKING:
    from mlxctl.admin.client import AdminClient
    from mlxctl.apply.events import Event, Listener
    from mlxctl.plan.actions import Plan, PlanOptions
    from mlxctl.reconcile.controller import Controller
    from mlxctl.reconcile.passes import PassResult


Files = tuple[Path, ...]


def validate(path: Path | None = None, files: Files = (), output: str = "text") -> int:
    """Check stack files; print every problem as file:line:column: path: message.
    -o json: {"valid", "files", "tiers", "problems"} (exit code as in text)."""
    from mlxctl.app import stacks
    from mlxctl.errors import MlxctlError, SpecError

    try:
        stack = stacks.validate(load_selected(targets(path, files)), context())
    except MlxctlError as exc:
        if output != "json":
            raise
        problems = list(exc.problems) if isinstance(exc, SpecError) else [str(exc)]
        emit_json({"valid": False, "files": [], "tiers": [], "problems": problems})
        return int(exc.exit_code)
    if output == "json":
        emit_json(
            {
                "valid": True,
                "files": [str(f) for f in stack.files],
                "tiers": [t.spec.name for t in stack.tiers],
                "problems": [],
            }
        )
    else:
        print(f"valid: {len(stack.files)} file(s), {len(stack.tiers)} tier(s)")
    return int(ExitCode.OK)


def render(path: Path | None = None, files: Files = (), output: str = "text") -> int:
    """Print the canonical desired state: files merged, defaults applied, ports assigned."""
    from mlxctl.app import stacks

    stack = load_selected(targets(path, files))
    docs = stacks.render(paths(), stack)
    if output == "json":
        for doc in docs:  # one object per stack (JSON lines)
            emit_json(doc)
    else:
        sys.stdout.write(stacks.render_yaml(paths(), stack, docs))
    return int(ExitCode.OK)


def diff(
    path: Path | None = None, files: Files = (), output: str = "text", allow_empty: bool = False
) -> int:
    """Show what reconcile would do, with causes. Exit 0: no changes, 1: changes, >=2: error."""
    client = controller()
    if client is not None:
        return _remote_plan(client, explicit_files(path, files), allow_empty, output == "json")
    from mlxctl.app import stacks
    from mlxctl.status import report

    stack = load_selected(targets(path, files))
    result = stacks.diff(context(), stack, allow_empty=allow_empty)
    the_plan = result.plan
    changes = the_plan.has_changes or bool(the_plan.blocked)
    code = result.refusal_code() if the_plan.refused else _diff_code(changes)
    if output == "json":
        emit_json(report.version_record())
        for record in report.plan_stream(the_plan):
            emit_json(record)
        emit_json(report.summary_record(the_plan, (), int(code), None))
        return int(code)
    for line in report.plan_lines(the_plan):
        print(line)
    return int(code)


def _remote_plan(client: AdminClient, files: list[str], allow_empty: bool, json_out: bool) -> int:
    """``diff`` (and ``reconcile --dry-run``) answered by the running controller."""
    from mlxctl.admin.client import query

    answer = client.call("GET", "/v1/plan" + query(file=files, allow_empty=allow_empty))
    for note in answer["notes"]:
        err(note)
    if json_out:
        for record in answer["records"]:
            emit_json(record)
    else:
        for line in answer["lines"]:
            print(line)
    return int(answer["exit_code"])


def _diff_code(changes: bool) -> ExitCode:
    return ExitCode.CHANGES if changes else ExitCode.OK


def reconcile(
    path: Path | None = None,
    files: Files = (),
    once: bool = False,
    dry_run: bool = False,
    allow_empty: bool = False,
    timeout: float | None = None,
    interval: float = 10.0,
    output: str = "text",
) -> int:
    """Make the machine match the stack: once (--once), or continuously, watching the files."""
    from mlxctl.app import stacks
    from mlxctl.plan.actions import PlanOptions

    if interval <= 0:
        raise click.BadParameter("must be more than 0 seconds", param_hint="--interval")
    json_out = output == "json"
    controller_mode = not (once or dry_run)
    listeners = [] if json_out else [_progress_listener(_stamped if controller_mode else err)]
    options = PlanOptions(allow_empty=allow_empty, startup_timeout=timeout)
    the_targets = targets(path, files)
    if once or dry_run:
        client = controller()
        if client is not None:
            return _through(
                client, explicit_files(path, files), dry_run, allow_empty, timeout, json_out
            )
        return _once(the_targets, options, dry_run=dry_run, json_out=json_out, listeners=listeners)
    if not path and not files:
        paths().stacks.mkdir(parents=True, exist_ok=True)  # watch it even while empty
        the_targets = [paths().stacks]

    def on_start(stop: Callable[[], None]) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop())

    def serve(ctl: Controller) -> AbstractContextManager[object]:
        from mlxctl.admin.server import serving

        socket = paths().admin_socket
        _stamped(f"controller: admin API on {socket}")
        return serving(ctl, socket, log=_stamped)

    ctx = context(listeners=listeners, online_models=True)
    with state_lock(ctx):
        stacks.run_controller(
            ctx,
            the_targets,
            options,
            interval=interval,
            log=_stamped,
            on_start=on_start,
            serve=serve,
        )
    return int(ExitCode.OK)


def _through(
    client: AdminClient,
    files: list[str],
    dry_run: bool,
    allow_empty: bool,
    timeout: float | None,
    json_out: bool,
) -> int:
    """``reconcile --once`` (or ``--dry-run``) with a controller running: it is asked to
    converge (resuming it after a ``down``) and this waits for its verdict; same exit codes."""
    if dry_run:
        return _remote_plan(client, files, allow_empty, json_out)
    if timeout is not None:
        err("note: --timeout applies without a controller; the controller's own timeouts apply")
    answer = client.call("POST", "/v1/reconcile", {"files": files, "wait": True}, timeout=None)
    return show_converge(answer, json_out=json_out)


def _stamped(line: str) -> None:
    import datetime as _dt

    err(f"{_dt.datetime.fromtimestamp(CLOCK.time()).strftime('%H:%M:%S')} {line}")


def _progress_listener(out: Callable[[str], None]) -> Listener:
    from mlxctl.status.report import SYMBOLS

    def listen(event: Event) -> None:
        if event.kind == "reconcile":
            return  # the controller prints refused passes in full itself
        symbol = SYMBOLS.get(event.kind, " ")
        took = f" in {event.duration:.1f}s" if event.duration else ""
        message = event.message.splitlines()[0] if event.message else ""
        extra = f" ({message})" if message else ""
        if event.result == "failed" and event.message and "\n" in event.message:
            extra += "\n" + "\n".join("      " + line for line in event.message.splitlines()[1:])
        if event.result in ("noticed", "refused"):
            extra = f": {event.cause}"
        out(f"{symbol:>3} {event.target}: {event.kind} {event.result}{took}{extra}")

    return listen


def _once(
    the_targets: list[Path],
    options: PlanOptions,
    *,
    dry_run: bool,
    json_out: bool,
    listeners: list[Listener],
) -> int:
    from mlxctl.app import stacks
    from mlxctl.status import report

    stack = load_selected(the_targets)
    if json_out:
        emit_json(report.version_record())

    def show(the_plan: Plan) -> None:
        if json_out:
            for record in report.plan_stream(the_plan):
                emit_json(record)
        else:
            for line in report.plan_lines(the_plan):
                err(line)

    if dry_run:
        ctx = context()
        with state_lock(ctx):
            dry = stacks.plan_once(ctx, stack, options)
        show(dry.plan)
        code = dry.refusal_code() if dry.plan.refused else ExitCode.OK
        if json_out:
            emit_json(report.summary_record(dry.plan, (), int(code), None))
        return int(code)
    waiting = _WaitingLine(enabled=not json_out and sys.stderr.isatty())
    ctx = context(listeners=listeners, online_models=True)
    with state_lock(ctx):
        result = stacks.reconcile_once(ctx, stack, options, on_plan=show, on_pass=waiting.show)
    code = result.exit_code
    if result.last.plan.refused:
        if json_out:
            emit_json(report.summary_record(result.first.plan, (), int(code), None))
        return int(code)
    if json_out:
        for outcome in result.outcomes:
            emit_json(report.outcome_record(outcome))
        emit_json(
            report.summary_record(result.first.plan, result.outcomes, int(code), result.converged)
        )
        return int(code)
    # A fresh context: the run's own health source is its stopped monitor.
    rows = stacks.service_rows(context(), result.last.desired)
    if rows:
        print(report.status_text(rows))
    if code == ExitCode.OK:
        err("converged: every service is running and ready.")
        return int(code)
    from mlxctl.app.control import converge_errors

    for line in converge_errors(result):
        err(f"error: {line}")
    return int(code)


class _WaitingLine:
    """On a terminal, what ``reconcile --once`` is waiting for: when that changes, and the
    progress of long waits (a download, a model loading) every few seconds."""

    EVERY = 5.0

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.last: tuple[tuple[str, str], ...] = ()
        self.shown_at = 0.0

    def show(self, result: PassResult) -> None:
        waits = [
            a
            for a in result.plan.actions
            if a.kind == "wait" and a.reason in ("starting", "preparing", "stopping", "memory")
        ]
        key = tuple((a.target, a.reason) for a in waits)
        now = CLOCK.monotonic()
        due = key != self.last or now - self.shown_at >= self.EVERY
        if self.enabled and waits and due:
            causes = "; ".join(f"{a.target}: {a.cause.splitlines()[0]}" for a in waits)
            err(f"  . waiting for {causes}")
            self.shown_at = now
        self.last = key


def register(app: click.Group) -> None:
    allow_empty = click.option(
        "--allow-empty", is_flag=True, help="Allow an empty desired state to stop everything."
    )
    app.command("validate")(stack_selection(output_option(validate)))
    app.command("render")(stack_selection(output_option(render)))
    app.command("diff")(stack_selection(output_option(allow_empty(diff))))
    options = [
        click.option("--once", is_flag=True, help="One pass, then exit (for scripts and cron)."),
        click.option("--dry-run", is_flag=True, help="Plan and print; act on nothing."),
        allow_empty,
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            help="Startup timeout in seconds for every service.",
        ),
        click.option(
            "--interval",
            type=float,
            default=10.0,
            show_default=True,
            help="Controller: full resync period (liveness is probed at each), seconds.",
        ),
        output_option,
        stack_selection,
    ]
    command = reconcile
    for option in options:
        command = option(command)
    app.command("reconcile")(command)
