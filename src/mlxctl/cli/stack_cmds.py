"""``validate``, ``render``, ``diff`` and ``reconcile``: the stack-file commands."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlxctl.cli.common import (
    emit_json,
    err,
    load_selected,
    output_option,
    paths,
    stack_selection,
    targets,
)
from mlxctl.errors import ExitCode

if TYPE_CHECKING:
    from mlxctl.apply.events import Event, Listener
    from mlxctl.plan.actions import Plan, PlanOptions
    from mlxctl.reconcile.context import Context
    from mlxctl.reconcile.passes import PassResult
    from mlxctl.spec.loader import StackSet


Files = tuple[Path, ...]


def validate(path: Path | None = None, files: Files = ()) -> int:
    """Check stack files; print every problem as file:line:column: path: message."""
    from mlxctl.desired.checks import stack_problems
    from mlxctl.errors import SpecError

    stack = load_selected(targets(path, files))
    problems = stack_problems(stack)
    if problems:
        raise SpecError(problems)
    print(f"valid: {len(stack.files)} file(s), {len(stack.tiers)} tier(s)")
    return int(ExitCode.OK)


def render(path: Path | None = None, files: Files = (), output: str = "text") -> int:
    """Print the canonical desired state: files merged, defaults applied, ports assigned."""
    from mlxctl.desired.render import canonical_documents, to_yaml
    from mlxctl.desired.resolve import master_key_ref
    from mlxctl.reconcile.context import read_ports

    stack = load_selected(targets(path, files))
    docs = canonical_documents(stack, read_ports(paths()))
    if output == "json":
        for doc in docs:  # one object per stack (JSON lines)
            emit_json(doc)
    else:
        generated = stack.gateway.master_key is None
        header = f"gateway masterKey: generated, {master_key_ref(stack, paths().state)}"
        sys.stdout.write(to_yaml(docs, stack, header if generated else ""))
    return int(ExitCode.OK)


def diff(
    path: Path | None = None, files: Files = (), output: str = "text", allow_empty: bool = False
) -> int:
    """Show what reconcile would do, with causes. Exit 0: no changes, 1: changes, >=2: error."""
    from mlxctl.reconcile.context import real_context
    from mlxctl.reconcile.passes import resolve, run_pass
    from mlxctl.status import report

    ctx = real_context(paths())
    desired = resolve(ctx, _load(path, files))
    from mlxctl.plan.actions import PlanOptions

    result = run_pass(ctx, desired, options=PlanOptions(allow_empty=allow_empty), dry_run=True)
    the_plan = result.plan
    if output == "json":
        emit_json(report.version_record())
        for record in report.plan_stream(the_plan):
            emit_json(record)
        code = (
            result.refusal_code()
            if the_plan.refused
            else _diff_code(the_plan.has_changes or bool(the_plan.blocked))
        )
        emit_json(report.summary_record(the_plan, (), int(code), None))
        return int(code)
    for line in report.plan_lines(the_plan):
        print(line)
    if the_plan.refused:
        return int(result.refusal_code())
    return int(_diff_code(the_plan.has_changes or bool(the_plan.blocked)))


def _diff_code(changes: bool) -> ExitCode:
    return ExitCode.CHANGES if changes else ExitCode.OK


def _load(path: Path | None, files: Files) -> StackSet:
    return load_selected(targets(path, files))


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
    from mlxctl.plan.actions import PlanOptions
    from mlxctl.reconcile.context import real_context
    from mlxctl.reconcile.lock import StateLock

    if interval <= 0:
        raise click.BadParameter("must be more than 0 seconds", param_hint="--interval")
    json_out = output == "json"
    controller_mode = not (once or dry_run)
    listeners = [] if json_out else [_progress_listener(_stamped if controller_mode else err)]
    ctx = real_context(paths(), listeners=listeners)
    options = PlanOptions(allow_empty=allow_empty, startup_timeout=timeout)
    the_targets = targets(path, files)
    if once or dry_run:
        with StateLock(ctx.paths.lock):
            return _once(ctx, the_targets, options, dry_run=dry_run, json_out=json_out)
    from mlxctl.reconcile.controller import Controller

    if not path and not files:
        ctx.paths.stacks.mkdir(parents=True, exist_ok=True)  # watch it even while empty
        the_targets = [ctx.paths.stacks]
    with StateLock(ctx.paths.lock):
        controller = Controller(ctx, the_targets, options, interval=interval, log=_stamped)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: controller.stop())
        controller.run()
    return int(ExitCode.OK)


def _stamped(line: str) -> None:
    import datetime as _dt

    err(f"{_dt.datetime.now().strftime('%H:%M:%S')} {line}")


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
    ctx: Context, the_targets: list[Path], options: PlanOptions, *, dry_run: bool, json_out: bool
) -> int:
    from mlxctl.reconcile.converge import converge
    from mlxctl.reconcile.passes import resolve, run_pass
    from mlxctl.status import report
    from mlxctl.status.services import build_status

    desired = resolve(ctx, load_selected(the_targets))
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
        dry = run_pass(ctx, desired, options=options, dry_run=True, on_plan=show)
        code = dry.refusal_code() if dry.plan.refused else ExitCode.OK
        if json_out:
            emit_json(report.summary_record(dry.plan, (), int(code), None))
        return int(code)
    waiting = _WaitingLine(enabled=not json_out and sys.stderr.isatty())
    result = converge(ctx, desired, options, on_plan=show, on_pass=waiting.show)
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
    from mlxctl.reconcile.passes import observe_state

    rows = build_status(desired, observe_state(ctx, desired)) if desired.services else []
    if rows:
        print(report.status_text(rows))
    if code == ExitCode.OK:
        err("converged: every service is running and ready.")
    else:
        for outcome in result.failed:
            first = outcome.message.splitlines()[0] if outcome.message else outcome.action.kind
            err(f"error: {outcome.action.target}: {first}")
        if not result.failed:
            for name, why in result.last.plan.blocked.items():
                err(f"error: {name}: {why}")
            waits = [a for a in result.last.plan.actions if a.kind == "wait"]
            for action in waits:
                err(f"error: {action.target}: {action.cause}")
            if not result.last.plan.blocked and not waits:
                err("error: not converged (see mlxctl status)")
    return int(code)


class _WaitingLine:
    """On a terminal, what ``reconcile --once`` is waiting for, when it changes."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.last: tuple[tuple[str, str], ...] = ()

    def show(self, result: PassResult) -> None:
        waits = [
            a
            for a in result.plan.actions
            if a.kind == "wait" and a.reason in ("starting", "preparing", "stopping", "memory")
        ]
        key = tuple((a.target, a.reason) for a in waits)
        if self.enabled and waits and key != self.last:
            err("  . waiting for: " + "; ".join(f"{a.target} ({a.reason})" for a in waits))
        self.last = key


def register(app: click.Group) -> None:
    allow_empty = click.option(
        "--allow-empty", is_flag=True, help="Allow an empty desired state to stop everything."
    )
    app.command("validate")(stack_selection(validate))
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
