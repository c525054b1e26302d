"""Use cases on stack files: validate, render, diff, reconcile (once or continuously),
status and down.

Each function that acts or observes takes its :class:`~mlxctl.reconcile.context.Context`
(directories, clock, processes, inventory, events) from the caller and never builds one,
and never takes the state lock: the caller holds it where a use case says so. So the
CLI (which builds the context and takes the lock through :mod:`mlxctl.app.context`) and
a controller that already holds the lock call the same functions.
Functions that only read files under the directories (``render``) take
:class:`~mlxctl.paths.Paths` (a context's ``paths``). Each returns plain values (a plan,
a converge result, status rows); the caller decides how to show them. Errors users can
cause are :class:`~mlxctl.errors.MlxctlError` subclasses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxctl.desired.checks import stack_problems
from mlxctl.desired.render import canonical_documents, to_yaml
from mlxctl.desired.resolve import master_key_ref
from mlxctl.desired.state import DesiredState
from mlxctl.errors import MlxctlError, SpecError, StorageError
from mlxctl.paths import Paths
from mlxctl.plan.actions import Plan, PlanOptions
from mlxctl.reconcile import suspension
from mlxctl.reconcile.context import Context, read_ports
from mlxctl.reconcile.converge import ConvergeResult, converge
from mlxctl.reconcile.passes import (
    PassResult,
    load_stack,
    load_stack_keeping_last_good,
    observe_state,
    resolve,
    run_pass,
)
from mlxctl.reconcile.teardown import stop_recorded, stop_strays
from mlxctl.spec.stack_set import StackSet
from mlxctl.status.services import ServiceStatus, build_status

if TYPE_CHECKING:
    from mlxctl.reconcile.controller import Controller


def load(targets: Sequence[Path]) -> StackSet:
    """Read and validate the stack files under ``targets``."""
    return load_stack(targets)


def validate(stack: StackSet, ctx: Context | None = None) -> StackSet:
    """Everything ``diff`` would reject in the files, rejected here too (one validation
    path); with ``ctx``, also the memory admission (the ``always`` tiers plus the largest
    on-demand tier against the budget, AdmissionError), when the stack resolves here
    (a secret that is not set is ``diff``'s to report: validate runs where secrets are not)."""
    problems = stack_problems(stack)
    if problems:
        raise SpecError(problems)
    if ctx is not None and stack.tiers:
        from mlxctl.plan.planner import memory_check

        try:
            desired = resolve(ctx, stack)
        except MlxctlError:
            return stack
        check = memory_check(desired)
        if check is not None:
            check.require()
    return stack


def render(paths: Paths, stack: StackSet) -> list[dict[str, Any]]:
    """The canonical desired state, one stack document per ``metadata.name``: files
    merged, defaults applied, ports assigned, paths resolved."""
    return canonical_documents(stack, read_ports(paths))


def render_yaml(paths: Paths, stack: StackSet, docs: list[dict[str, Any]]) -> str:
    generated = stack.gateway.master_key is None
    header = f"gateway masterKey: generated, {master_key_ref(stack, paths.state)}"
    return to_yaml(docs, stack, header if generated else "")


def diff(ctx: Context, stack: StackSet, *, allow_empty: bool = False) -> PassResult:
    """What a reconcile would do now, with causes; acts on nothing (needs no lock)."""
    desired = resolve(ctx, stack)
    return run_pass(ctx, desired, options=PlanOptions(allow_empty=allow_empty), dry_run=True)


def reconcile_once(
    ctx: Context,
    stack: StackSet,
    options: PlanOptions,
    *,
    on_plan: Callable[[Plan], None] | None = None,
    on_pass: Callable[[PassResult], None] | None = None,
) -> ConvergeResult:
    """Converge once: passes until every service is ready, something started fails, or
    nothing in flight could change the answer. The caller holds the state lock; a
    context with ``online_models`` pins model references missing from a lock file on
    the hub (once). Progress goes to the context's listeners.

    It also lifts a controller's ``down`` (its marker): the user asked to converge, so a
    controller started later applies the stack instead of staying suspended."""
    desired = resolve(ctx, stack)
    result = converge(ctx, desired, options, on_plan=on_plan, on_pass=on_pass)
    if not result.last.plan.refused:
        suspension.clear(ctx.paths)
    return result


def plan_once(ctx: Context, stack: StackSet, options: PlanOptions) -> PassResult:
    """``reconcile --dry-run``: plan (the caller holds the state lock), apply nothing."""
    return run_pass(ctx, resolve(ctx, stack), options=options, dry_run=True)


def down(
    ctx: Context,
    *,
    note: Callable[[str], None] = lambda _line: None,
) -> ConvergeResult:
    """Stop everything mlxctl owns, and wait until every process is gone (the caller
    holds the state lock).

    On a full disk (nothing can be recorded) every recorded server is still stopped,
    each said through ``note``, and the StorageError is raised after; last, any process
    that carries this state directory's marker but no record is stopped too. With an
    inventory that cannot be used (damaged from outside: its error is raised), that
    last sweep stops every process carrying this state directory's markers: they prove
    ownership without the records, so ``down`` still stops everything.
    """
    options = PlanOptions(allow_empty=True, prune_cause="mlxctl down", heal=False)
    try:
        return converge(ctx, DesiredState(tiers=(), gateway=None), options)
    except StorageError:
        for stopped in stop_recorded(
            ctx.inventory.load(), ctx.procs, grace=options.grace, clock=ctx.clock
        ):
            note(f"{stopped.line()} (not recorded: the state cannot be written)")
        raise
    finally:
        try:
            records = ctx.inventory.load()
        except MlxctlError:
            records = {}  # unusable: the markers alone say what is ours
        state = str(ctx.paths.state)
        for stray in stop_strays(state, records, ctx.procs, grace=options.grace, clock=ctx.clock):
            note(stray.line())


@dataclass(frozen=True)
class Status:
    rows: list[ServiceStatus]
    # Why sync is unknown (the stack files are unusable right now), if it is.
    warning: str | None = None
    # Files that are invalid now, with their problems (their last valid version applies).
    invalid: Mapping[Path, tuple[str, ...]] = field(default_factory=dict)
    # (first problem, whether a last valid version stands in) per invalid file.
    invalid_notes: tuple[tuple[str, bool], ...] = ()
    # This machine's name, in a stack of several (docs/multi-host.md).
    host: str | None = None


def status(ctx: Context, targets: Sequence[Path]) -> Status:
    """Per service: health, sync, PID, port, uptime. Works when the files are broken:
    an invalid file's last valid version stands in, as in the controller. Needs no lock."""
    desired = None
    warning = None
    invalid: dict[Path, tuple[str, ...]] = {}
    notes: list[tuple[str, bool]] = []
    try:
        stack = load_stack_keeping_last_good(ctx, targets, save=False)
        invalid = dict(stack.invalid)
        notes = [(p[0], f not in stack.unknown_files) for f, p in stack.invalid.items()]
        desired = resolve(ctx, stack)
    except MlxctlError as exc:
        warning = str(exc).splitlines()[0]
    rows = build_status(desired, observe_state(ctx, desired))
    return Status(rows, warning, invalid, tuple(notes), desired.host if desired else None)


def current_desired(ctx: Context, targets: Sequence[Path]) -> DesiredState | None:
    """What the stack files ask for now (an invalid file's last valid version standing in),
    or None when they cannot be read; reads only."""
    try:
        return resolve(ctx, load_stack_keeping_last_good(ctx, targets, save=False))
    except MlxctlError:
        return None


def service_rows(ctx: Context, desired: DesiredState) -> list[ServiceStatus]:
    """The status rows of ``desired``'s services (health from ``ctx``'s health source)."""
    return build_status(desired, observe_state(ctx, desired)) if desired.services else []


def run_controller(
    ctx: Context,
    targets: Sequence[Path],
    options: PlanOptions,
    *,
    interval: float,
    log: Callable[[str], None],
    on_start: Callable[[Callable[[], None]], None] | None = None,
    serve: Callable[[Controller], AbstractContextManager[object]] | None = None,
) -> None:
    """Run the controller until stopped (the caller holds the state lock); ``on_start``
    receives its stop function; ``serve`` (the admin API) runs beside it, for as long."""
    from mlxctl.reconcile.controller import Controller

    ctl = Controller(ctx, targets, options, interval=interval, log=log)
    if on_start is not None:
        on_start(ctl.stop)
    with serve(ctl) if serve is not None else contextlib.nullcontext():
        ctl.run()
