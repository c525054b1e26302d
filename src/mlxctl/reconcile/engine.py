"""One reconcile pass, shared by ``diff``, ``reconcile --once``, the controller and ``status``.

load stack files -> resolve desired state -> observe -> plan -> (apply) -> verify.
This module only wires; every decision is the planner's and every effect goes
through the interfaces held by :class:`Context`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlxctl.apply.events import EventLog, Listener
from mlxctl.apply.executor import ExecutorSettings
from mlxctl.desired.resolve import DesiredState, ModelResolver, ResolveContext, resolve_desired
from mlxctl.errors import ExitCode
from mlxctl.machine.clock import SystemClock
from mlxctl.machine.interfaces import Clock, ModelStore, Prober, ProcessControl
from mlxctl.machine.inventory import Inventory, write_atomic
from mlxctl.observe.gather import ObserveOptions, observe
from mlxctl.observe.state import ObservedState
from mlxctl.paths import Paths
from mlxctl.plan.planner import Plan, PlanOptions, plan
from mlxctl.spec.loader import StackSet, load_stack_set

if TYPE_CHECKING:
    from mlxctl.apply.executor import Executor, Outcome


@dataclass
class Context:
    """Everything a pass touches: directories, environment and the effect implementations."""

    paths: Paths
    environ: Mapping[str, str]
    clock: Clock
    procs: ProcessControl
    prober: Prober
    store: ModelStore
    python: Path = field(default_factory=lambda: Path(sys.executable))
    listeners: list[Listener] = field(default_factory=list)
    settings: ExecutorSettings = field(default_factory=ExecutorSettings)
    # None: the real resolver (local paths and the catalog).
    model_resolver: ModelResolver | None = None
    memory_bytes: Callable[[], int] = field(default_factory=lambda: _system_memory)

    @property
    def inventory(self) -> Inventory:
        return Inventory(self.paths.inventory)

    def event_log(self) -> EventLog:
        return EventLog(self.paths.events, self.listeners)

    def executor(self) -> Executor:
        from mlxctl.apply.executor import Executor

        return Executor(
            procs=self.procs,
            prober=self.prober,
            clock=self.clock,
            store=self.store,
            inventory=self.inventory,
            events=self.event_log(),
            logs_dir=self.paths.logs,
            environ=self.environ,
            settings=self.settings,
        )


def _system_memory() -> int:
    from mlxctl.desired.admission import system_memory

    return system_memory()


def real_context(paths: Paths, *, listeners: list[Listener] | None = None) -> Context:
    """A context with the real effects (processes, HTTP, files, clock)."""
    from mlxctl.machine.probes import HttpProber
    from mlxctl.machine.processes import RealProcessControl
    from mlxctl.sources.store import DiskModelStore

    return Context(
        paths=paths,
        environ=dict(os.environ),
        clock=SystemClock(),
        procs=RealProcessControl(),
        prober=HttpProber(),
        store=DiskModelStore(paths.models),
        listeners=list(listeners or []),
    )


def read_ports(paths: Paths) -> dict[str, int]:
    try:
        raw = json.loads(paths.ports.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): int(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def save_ports(paths: Paths, ports: Mapping[str, int]) -> None:
    merged = {**read_ports(paths), **ports}
    if merged != read_ports(paths):
        write_atomic(paths.ports, json.dumps(merged, indent=2, sort_keys=True) + "\n")


def load_stack(targets: Sequence[Path]) -> StackSet:
    return load_stack_set(targets)


def resolve(ctx: Context, stack: StackSet) -> DesiredState:
    from mlxctl.sources.store import make_resolver

    rctx = ResolveContext(
        python=ctx.python,
        state_dir=ctx.paths.state,
        environ=ctx.environ,
        resolve_model=ctx.model_resolver or make_resolver(ctx.paths),
        assigned_ports=read_ports(ctx.paths),
    )
    desired = resolve_desired(stack, rctx)
    from mlxctl.desired.admission import with_budget

    return with_budget(desired, stack, ctx.memory_bytes)


def observe_state(
    ctx: Context,
    desired: DesiredState | None,
    *,
    probe: bool = True,
    probe_failures: Mapping[str, int] | None = None,
) -> ObservedState:
    return observe(
        ctx.inventory.load(),
        desired,
        procs=ctx.procs,
        prober=ctx.prober,
        clock=ctx.clock,
        store=ctx.store,
        probe_failures=probe_failures,
        options=ObserveOptions(probe=probe),
    )


@dataclass(frozen=True)
class PassResult:
    desired: DesiredState
    observed: ObservedState
    plan: Plan
    outcomes: tuple[Outcome, ...] = ()
    final_plan: Plan | None = None
    final_observed: ObservedState | None = None

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def converged(self) -> bool:
        """Applied without failures and a fresh look finds nothing left to do."""
        final = self.final_plan
        if final is None or self.failed or final.refused or final.blocked:
            return False
        observed = self.final_observed
        ready = observed is not None and all(
            s.alive and s.health == "ready" for s in observed.services.values()
        )
        return ready and not final.actions

    def exit_code(self) -> ExitCode:
        if self.plan.refused:
            return self.refusal_code()
        if self.converged:
            return ExitCode.OK
        if any(o.timed_out for o in self.failed):
            return ExitCode.HEALTH_TIMEOUT
        return ExitCode.APPLY_FAILED

    def refusal_code(self) -> ExitCode:
        if self.plan.refusal == "budget":
            return ExitCode.ADMISSION_REFUSED
        return ExitCode.INVALID_SPEC


def run_pass(
    ctx: Context,
    desired: DesiredState,
    *,
    options: PlanOptions,
    dry_run: bool = False,
    wait_starting: bool = True,
    probe_failures: Mapping[str, int] | None = None,
    verify: bool = True,
    on_plan: Callable[[Plan], None] | None = None,
) -> PassResult:
    """Observe, plan and (unless ``dry_run``) apply, then look again to verify.

    ``on_plan`` sees the plan before anything is applied (the CLI prints it).
    """
    observed = observe_state(ctx, desired, probe_failures=probe_failures)
    the_plan = plan(desired, observed, options)
    if on_plan is not None:
        on_plan(the_plan)
    if dry_run or the_plan.refused:
        return PassResult(desired, observed, the_plan)
    save_ports(ctx.paths, desired.ports)
    outcomes = ctx.executor().apply(the_plan, desired, wait_starting=wait_starting)
    if not verify:
        return PassResult(desired, observed, the_plan, tuple(outcomes))
    final_observed = observe_state(ctx, desired)
    final_plan = plan(desired, final_observed, options)
    return PassResult(desired, observed, the_plan, tuple(outcomes), final_plan, final_observed)
