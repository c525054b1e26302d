"""One reconcile pass, shared by ``diff``, ``reconcile --once``, the controller and ``status``.

load stack files -> resolve desired state -> observe -> plan -> (apply).
This module only wires; every decision is the planner's and every effect goes
through the interfaces held by :class:`Context`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlxctl.desired.resolve import ResolveContext, master_key_ref, resolve_desired
from mlxctl.desired.state import GATEWAY, DesiredState
from mlxctl.desired.tier_route import recorded_route_facts
from mlxctl.errors import ExitCode
from mlxctl.machine.record import Record
from mlxctl.observe.gather import observe
from mlxctl.observe.state import ObservedState
from mlxctl.plan.actions import SETTLED, Plan, PlanOptions
from mlxctl.plan.planner import plan
from mlxctl.reconcile.context import Context, read_ports, save_ports
from mlxctl.runtimes.gateway import Route
from mlxctl.runtimes.registry import MODEL_SERVERS
from mlxctl.runtimes.registry import runtime as runtime_named
from mlxctl.spec.last_good import LastGood
from mlxctl.spec.loader import load_stack_set, load_stack_set_keeping_last_good
from mlxctl.spec.schema import GatewaySpec
from mlxctl.spec.stack_set import StackSet

if TYPE_CHECKING:
    from mlxctl.apply.executor import Outcome


def load_stack(targets: Sequence[Path]) -> StackSet:
    return load_stack_set(targets)


def load_stack_keeping_last_good(ctx: Context, targets: Sequence[Path], *, save: bool) -> StackSet:
    """The controller's (``save``) and ``status``'s read: an invalid file's last valid
    version stands in for it (see :mod:`mlxctl.spec.last_good`)."""
    store = LastGood(ctx.paths.last_good)
    return load_stack_set_keeping_last_good(targets, store.read, store.save if save else None)


def other_stacks_routes(ctx: Context, stack: StackSet) -> tuple[Route, ...]:
    """The tiers other stacks own (recorded in the inventory): the one gateway routes to
    every stack's tiers, whichever selection is applied."""
    if stack.scope is None:
        return ()
    mine = {t.spec.name for t in stack.tiers}
    routes = []
    for rec in sorted(ctx.inventory.load().values(), key=lambda r: r.name):
        runtime = str(rec.launch.get("runtime", ""))
        if rec.role != "tier" or not rec.stack or rec.stack in stack.scope or rec.name in mine:
            continue
        if runtime not in MODEL_SERVERS:
            continue
        served = runtime_named(runtime).served_model_name(rec.name)
        # Its capacity, context and key from its record; the rest of the model facts
        # (vocabulary, vision) are its own stack's to give: unknown here, the gateway
        # checks its requests the strictest way.
        facts = recorded_route_facts(rec.launch, runtime)
        routes.append(Route(name=rec.name, port=rec.port, served_model=served, **facts))
    return tuple(routes)


def running_gateway_settings(ctx: Context, stack: StackSet) -> StackSet:
    """A file selection that does not set ``spec.gateway`` keeps the running gateway's
    port and key (they may come from another stack's file), so applying one stack never
    moves the shared gateway."""
    if stack.scope is None or stack.gateway_set:
        return stack
    rec = ctx.inventory.load().get(GATEWAY)
    if rec is None or rec.role != "gateway" or "port" not in rec.launch:
        return stack
    key = str(rec.launch.get("masterKey") or "")
    generated = master_key_ref(dataclasses.replace(stack, gateway=GatewaySpec()), ctx.paths.state)
    gateway = GatewaySpec.model_validate(
        {"port": int(rec.launch["port"]), "masterKey": None if key in ("", generated) else key}
    )
    return dataclasses.replace(stack, gateway=gateway)


def resolve(ctx: Context, stack: StackSet) -> DesiredState:
    from mlxctl.desired.placement import place
    from mlxctl.machine import host_name
    from mlxctl.sources.registry import make_resolver

    stack = running_gateway_settings(ctx, stack)
    placed = place(stack, host_name.local_host(ctx.environ), host_name.how_named(ctx.environ))
    stack = placed.local

    rctx = ResolveContext(
        python=ctx.python,
        state_dir=ctx.paths.state,
        environ=ctx.environ,
        resolve_model=ctx.model_resolver or make_resolver(ctx.paths),
        assigned_ports=read_ports(ctx.paths, ctx.report_state_file),
        extra_routes=other_stacks_routes(ctx, stack),
        port_in_use=lambda port: ctx.procs.port_owner(port) is not None,
        port_held_by_other=lambda name, port: _held_by_other(ctx, name, port),
        host=placed.host,
        elsewhere=placed.elsewhere,
        hosts=stack.hosts,
        peers=placed.peers,
    )
    desired = resolve_desired(stack, rctx)
    from mlxctl.desired.admission import with_budget
    from mlxctl.machine import observed_memory

    raised = observed_memory.read_raised(observed_memory.path_in(ctx.paths.state))
    return with_budget(desired, stack, ctx.memory_bytes, raised)


def _held_by_other(ctx: Context, name: str, port: int) -> bool:
    """Someone listens on ``port`` and it is not ``name``'s own process (its server, a
    retiring instance of it, or one being spawned): its remembered port was taken."""
    if ctx.procs.port_owner(port) is None:
        return False
    for rec in ctx.inventory.load().values():
        if rec.port != port or name not in (rec.name, rec.handover_to):
            continue
        if not rec.spawned or ctx.procs.status(rec.identity()).alive:
            return False
    return True


def observe_state(ctx: Context, desired: DesiredState | None) -> ObservedState:
    """What runs now, quickly: health comes from the context's health source, demand
    from the controller's book (none outside a controller)."""
    book = ctx.demand
    return observe(
        ctx.inventory.load(),
        desired,
        procs=ctx.procs,
        health=ctx.health_source(),
        clock=ctx.clock,
        store=ctx.store,
        prepares=ctx.prepares(),
        demand=book.observed() if book is not None else None,
        demand_reported=book.reported if book is not None else False,
        groups=ctx.peers.sample(desired) if ctx.peers is not None else None,
    )


def is_converged(desired: DesiredState, observed: ObservedState, the_plan: Plan) -> bool:
    """Nothing left to do and every desired service running and ready."""
    if the_plan.refused or the_plan.blocked:
        return False
    if any(a.kind != "rehash" and a.reason not in SETTLED for a in the_plan.actions):
        return False
    for service in desired.services:
        if service.suspended:
            continue  # left alone by request: converged is about the others
        if service.on_demand and _unloaded(the_plan, service.name):
            continue  # scaled to zero: its steady state
        seen = observed.services.get(service.name)
        if seen is None or not seen.alive or seen.record.ready_at is None:
            return False
        if seen.health == "unready":
            return False
    return True


def _unloaded(the_plan: Plan, name: str) -> bool:
    return any(a.reason == "on-demand" for a in the_plan.for_target(name))


@dataclass(frozen=True)
class PassResult:
    """One pass: what was seen, what was planned from it, what applying it did, and when
    it wants to run again (as controller-runtime's ``Result``): ``requeue`` at once (it
    applied something, to be observed now), and/or ``requeue_after`` seconds (the
    earliest backoff expiry or deadline). The loop honours both; any trigger may run the
    next pass sooner. A dry run never asks to run again."""

    desired: DesiredState
    observed: ObservedState
    plan: Plan
    outcomes: tuple[Outcome, ...] = ()
    requeue: bool = False
    requeue_after: float | None = None

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def converged(self) -> bool:
        return is_converged(self.desired, self.observed, self.plan)

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
    on_plan: Callable[[Plan], None] | None = None,
    retry_failed_after: float | None = None,
) -> PassResult:
    """Observe, plan and (unless ``dry_run``) apply. Never waits: every action is an
    instant effect, and what takes time is observed by the next pass, which the result
    asks for (see :class:`PassResult`).

    ``on_plan`` sees the plan before anything is applied (the CLI prints it).
    ``retry_failed_after``: seconds before a pass whose actions failed, with no deadline
    pending, wants to run again (None: only on a trigger).
    """
    started = ctx.clock.time()
    observed = observe_state(ctx, desired)
    the_plan = plan(desired, observed, options)
    if on_plan is not None:
        on_plan(the_plan)
    if dry_run:
        return PassResult(desired, observed, the_plan)
    if the_plan.refused:
        result = PassResult(desired, observed, the_plan)
    else:
        save_ports(ctx.paths, desired.ports, ctx.report_state_file)
        outcomes = ctx.executor().apply(the_plan, desired)
        result = PassResult(desired, observed, the_plan, tuple(outcomes))
    wake = next_wake(result, ctx.inventory.load().values(), since=started)
    requeue = any(o.ok for o in result.outcomes)
    now = ctx.clock.time()
    if wake is None and not requeue and result.failed and retry_failed_after is not None:
        wake = now + retry_failed_after
    after = None if wake is None else max(wake - now, 0.0)
    return dataclasses.replace(result, requeue=requeue, requeue_after=after)


def next_wake(result: PassResult, records: Iterable[Record], *, since: float) -> float | None:
    """When the pass must run again without a trigger: the earliest backoff expiry,
    startup deadline or stop deadline; pure.

    Times set during the pass that began at ``since`` count even when already due: a
    first failed start (backoff 0) is retried at once, not at the next resync. Older
    expiries do not, so a tier that cannot start (its model is missing) never spins.
    """
    waits = [a.not_before for a in result.plan.actions if a.kind in ("wait", "crash")]
    waits += [r.not_before for r in records if r.died_at is not None]
    due = [w for w in waits if w is not None and w >= since]
    return min(due) if due else None
