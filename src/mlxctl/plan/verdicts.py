"""What the gateway is told of each on-demand tier, read off the plan. Pure.

The gateway holds requests for an on-demand tier and asks the controller what to do
with them; the answer is the planner's decision, translated (the gateway decides
nothing): send them (``ready``), hold them (``cold``, ``loading``, ``draining``), or
answer them now with 503 and ``Retry-After`` (``unavailable``: the load failed, the
tier backs off after crashes, is blocked or suspended, or the stack is refused).
An always tier is only ever ``ready`` or ``draining`` (a planned restart: its new
requests wait for the new process while the running ones finish).
"""

from __future__ import annotations

from mlxctl.desired.state import DesiredService, DesiredState
from mlxctl.observe.state import ObservedState
from mlxctl.plan.actions import Action, Plan
from mlxctl.runtimes.gateway import TierVerdict

# Seconds a client is told to wait when nothing better is known.
DEFAULT_RETRY_AFTER = 5.0
# A tier that cannot be started until someone acts (a missing model, a port held).
BLOCKED_RETRY_AFTER = 60.0


def verdicts(desired: DesiredState, observed: ObservedState, plan: Plan) -> dict[str, TierVerdict]:
    """A verdict for every tier of ``desired`` (an always tier's is ``ready`` or, while a
    planned restart drains it, ``draining``)."""
    if plan.refused:
        first = plan.refused.splitlines()[0]
        return {
            t.name: TierVerdict(
                state="unavailable",
                detail=f"the stack is not applied: {first}",
                retry_after=BLOCKED_RETRY_AFTER,
            )
            for t in desired.tiers
            if t.on_demand
        }
    out = {t.name: verdict(t, observed, plan) for t in desired.tiers if t.on_demand}
    # An always tier's requests are held only while a planned restart drains it; else
    # they go as they always did (a refused connection is held or falls back).
    for t in desired.tiers:
        if not t.on_demand:
            draining = [a for a in plan.for_target(t.name) if a.reason == "draining"]
            out[t.name] = (
                TierVerdict(state="draining", detail=_first(draining[0]))
                if draining
                else TierVerdict(state="ready")
            )
    for name, why in desired.unresolved.items():
        out[name] = TierVerdict(state="unavailable", detail=why, retry_after=BLOCKED_RETRY_AFTER)
    return out


def verdict(service: DesiredService, observed: ObservedState, plan: Plan) -> TierVerdict:
    name = service.name
    now = observed.now
    actions = plan.for_target(name)
    if name in plan.blocked:
        return TierVerdict(
            state="unavailable", detail=plan.blocked[name], retry_after=BLOCKED_RETRY_AFTER
        )
    for action in actions:
        if action.kind == "crash":
            return TierVerdict(
                state="unavailable", detail=_first(action), retry_after=_after(action, now)
            )
        if action.kind == "wait" and action.reason == "backoff":
            return TierVerdict(
                state="unavailable", detail=_first(action), retry_after=_after(action, now)
            )
        if action.kind == "wait" and action.reason == "suspended":
            return TierVerdict(
                state="unavailable",
                detail=f"tier '{name}' is suspended",
                retry_after=BLOCKED_RETRY_AFTER,
            )
        if action.kind == "wait" and action.reason == "draining":
            return TierVerdict(state="draining", detail=_first(action))
    if any(a.kind == "stop" for a in actions):
        return TierVerdict(state="draining", detail=_first(next(a for a in actions)))
    if any(a.kind == "wait" and a.reason == "on-demand" for a in actions):
        return TierVerdict(state="cold", detail="on demand: not loaded")
    seen = observed.services.get(name)
    # Serving, and recorded ready: the gateway is told what status shows, never ahead.
    serving = seen is not None and seen.serves and seen.record.ready_at is not None
    changing = [a for a in actions if a.changes or a.reason not in ("idle", "")]
    if serving and not changing:
        return TierVerdict(state="ready")
    if changing:
        action = changing[0]
        retry = _after(action, now) if action.not_before is not None else None
        return TierVerdict(state="loading", detail=_first(action), retry_after=retry)
    return TierVerdict(state="loading", detail="starting")


def _first(action: Action) -> str:
    return f"{action.kind}: {action.cause.splitlines()[0]}" if action.cause else action.kind


def _after(action: Action, now: float) -> float:
    if action.not_before is None:
        return DEFAULT_RETRY_AFTER
    return max(1.0, action.not_before - now)
