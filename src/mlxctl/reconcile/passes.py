"""One reconcile pass, shared by ``diff``, ``reconcile --once``, the controller and ``status``.

load stack files -> resolve desired state -> observe -> plan -> (apply) -> verify.
This module only wires; every decision is the planner's and every effect goes
through the interfaces held by :class:`Context`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlxctl.desired.resolve import ResolveContext, resolve_desired
from mlxctl.desired.state import DesiredState
from mlxctl.errors import ExitCode
from mlxctl.observe.gather import ObserveOptions, observe
from mlxctl.observe.state import ObservedState
from mlxctl.plan.actions import Plan, PlanOptions
from mlxctl.plan.planner import plan
from mlxctl.reconcile.context import Context, read_ports, save_ports
from mlxctl.spec.loader import StackSet, load_stack_set

if TYPE_CHECKING:
    from mlxctl.apply.executor import Outcome


def load_stack(targets: Sequence[Path]) -> StackSet:
    return load_stack_set(targets)


def resolve(ctx: Context, stack: StackSet) -> DesiredState:
    from mlxctl.sources.registry import make_resolver

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
