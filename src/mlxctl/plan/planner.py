"""The planner: ``plan(desired, observed) -> Plan``. Pure: no I/O, no clock.

Every decision mlxctl makes is taken here, as data, with its cause, so that
``diff``, ``reconcile --dry-run``, ``reconcile`` and the controller share one engine
and every action can be explained. Time arrives as ``observed.now``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mlxctl.capacity.memory import BudgetCheck, check_budget
from mlxctl.desired.state import HASH_VERSION, DesiredService, DesiredState
from mlxctl.observe.state import ObservedService, ObservedState
from mlxctl.plan.actions import Action, ActionKind, Plan, PlanOptions


def plan(
    desired: DesiredState, observed: ObservedState, options: PlanOptions | None = None
) -> Plan:
    """Decide what to do to make ``observed`` match ``desired``."""
    opts = options or PlanOptions()
    memory = _memory_check(desired)
    if memory is not None and not memory.fits:
        return Plan(refused=memory.message, refusal="budget", memory=memory)
    refusal = _empty_refusal(desired, observed, opts)
    if refusal:
        return Plan(refused=refusal, refusal="empty", memory=memory)
    actions: list[Action] = []
    blocked: dict[str, str] = {}
    for service in desired.services:
        _plan_service(service, observed, opts, actions, blocked)
    actions = _one_prepare_per_model(desired, actions)
    for name, seen in sorted(observed.services.items()):
        if desired.get(name) is None:
            if seen.alive:
                actions.append(Action("stop", name, opts.prune_cause))
            else:
                actions.append(Action("forget", name, f"{opts.prune_cause} (already exited)"))
    return Plan(actions=tuple(actions), blocked=blocked, memory=memory)


def _one_prepare_per_model(desired: DesiredState, actions: list[Action]) -> list[Action]:
    """Keep the first ``prepare`` of each model: tiers that share a model share its preparation."""
    seen: set[str] = set()
    kept: list[Action] = []
    for action in actions:
        service = desired.get(action.target) if action.kind == "prepare" else None
        if service is not None and service.model is not None:
            if service.model.identity in seen:
                continue
            seen.add(service.model.identity)
        kept.append(action)
    return kept


def _memory_check(desired: DesiredState) -> BudgetCheck | None:
    """The SUM of every tier's estimate against the budget (None when there is no budget)."""
    if desired.budget_bytes is None:
        return None
    estimated = [(t.name, t.memory) for t in desired.tiers if t.memory is not None]
    check = check_budget(estimated, desired.budget_bytes, alternatives=desired.memory_alternatives)
    unknown = [t.name for t in desired.tiers if t.memory is None]
    if unknown and check.fits:
        note = f"; not estimated (no model files yet): {', '.join(unknown)}"
        check = dataclasses.replace(check, message=check.message + note)
    return check


def _empty_refusal(desired: DesiredState, observed: ObservedState, opts: PlanOptions) -> str | None:
    """Why a plan that would stop every tier must not be applied, if it must not."""
    if opts.allow_empty:
        return None
    if desired.empty_files:
        names = ", ".join(str(p) for p in desired.empty_files)
        return (
            f"stack file {names} is empty: not applied (a save in progress?); delete the file "
            "to remove its tiers, or pass --allow-empty"
        )
    running = [n for n, s in observed.services.items() if s.alive and s.record.role == "tier"]
    if not desired.tiers and running:
        return (
            f"the desired state is empty: refusing to stop {len(running)} running tier(s) "
            f"({', '.join(sorted(running))}) without --allow-empty"
        )
    return None


def _plan_service(
    service: DesiredService,
    observed: ObservedState,
    opts: PlanOptions,
    actions: list[Action],
    blocked: dict[str, str],
) -> None:
    seen = observed.services.get(service.name)
    name = service.name

    def start(kind: ActionKind, cause: str) -> None:
        model = service.model
        if model is not None and model.identity not in observed.models_present:
            if model.prepare is None:
                hint = f"; {model.hint}" if model.hint else ""
                blocked[name] = f"model {model.display} is not present at {model.directory}{hint}"
                return
            actions.append(Action("prepare", name, f"model {model.display} is not prepared yet"))
        actions.append(Action(kind, name, cause))

    if seen is None:
        start("start", "new gateway" if service.role == "gateway" else "new tier")
        return
    rec = seen.record
    changed = _launch_changed(service, seen)
    if not seen.alive:
        if changed:
            start("start", f"{changed} (was not running)")
        elif rec.died_at is None:
            _crashed(service, seen, observed.now, opts, actions, start, stop=False)
        elif rec.not_before is None or observed.now >= rec.not_before:
            start("start", f"restarting after crash #{rec.consecutive_crashes}")
        else:
            wait = rec.not_before - observed.now
            actions.append(
                Action(
                    "wait",
                    name,
                    f"crash-loop backoff: restart in {wait:.0f}s "
                    f"(crash #{rec.consecutive_crashes})",
                    not_before=rec.not_before,
                )
            )
        return
    if changed:
        start("restart", changed)
        return
    if rec.spec_hash != service.spec_hash:
        actions.append(Action("rehash", name, "hash recipe changed; launch unchanged"))
    if service.role == "gateway" and observed.files:
        stale = [p for p, text in service.files if observed.files.get(p) != text]
        if stale:
            actions.append(Action("reconfigure", name, _routes_cause(service, observed, stale)))
    if seen.health == "ready":
        if rec.ready_at is None:  # became ready while nobody was waiting: record it
            actions.append(Action("wait", name, "starting: ready now", starting=True))
        return
    if rec.ready_at is None:
        deadline = rec.started_at + service.startup_timeout
        if observed.now < deadline:
            actions.append(
                Action(
                    "wait",
                    name,
                    "starting: waiting until ready",
                    not_before=deadline,
                    starting=True,
                )
            )
        else:
            detail = f": {seen.detail}" if seen.detail else ""
            cause = f"not ready {service.startup_timeout:.0f}s after start{detail}"
            _crashed(service, seen, observed.now, opts, actions, start, stop=True, cause=cause)
        return
    if seen.probe_failures >= opts.liveness_threshold:
        cause = f"liveness failed {seen.probe_failures} times: {seen.detail}"
        _crashed(service, seen, observed.now, opts, actions, start, stop=True, cause=cause)


def _crashed(
    service: DesiredService,
    seen: ObservedService,
    now: float,
    opts: PlanOptions,
    actions: list[Action],
    start: Any,
    *,
    stop: bool,
    cause: str | None = None,
) -> None:
    rec = seen.record
    uptime = now - rec.started_at
    crashes = opts.backoff.count_after_crash(rec.consecutive_crashes, uptime)
    delay = opts.backoff.delay(crashes)
    if cause is None:
        code = f" with code {seen.exit_code}" if seen.exit_code is not None else ""
        cause = f"exited{code} after {_duration(uptime)}"
    actions.append(
        Action(
            "crash",
            service.name,
            f"{cause}; crash #{crashes}",
            crashes=crashes,
            not_before=now + delay,
            stop_process=stop,
        )
    )
    if delay == 0:
        start("start", f"restarting after crash #{crashes}")
    else:
        actions.append(
            Action(
                "wait",
                service.name,
                f"crash-loop backoff: restart in {delay:.0f}s (crash #{crashes})",
                not_before=now + delay,
            )
        )


def _routes_cause(service: DesiredService, observed: ObservedState, stale: list[str]) -> str:
    """``routes changed: + big, - small`` (the gateway reloads its routes file in place)."""
    import json

    def names(text: str | None) -> set[str]:
        try:
            data = json.loads(text or "{}")
            return {n for r in data.get("routes", []) for n in (r["name"], *r.get("aliases", []))}
        except (ValueError, TypeError, KeyError, AttributeError):
            return set()

    files = dict(service.files)
    old = set().union(*(names(observed.files.get(p)) for p in stale))
    new = set().union(*(names(files[p]) for p in stale))
    delta = [f"+ {n}" for n in sorted(new - old)] + [f"- {n}" for n in sorted(old - new)]
    return "routes changed" + (f": {', '.join(delta)}" if delta else " (fallbacks, limits)")


def _launch_changed(service: DesiredService, seen: ObservedService) -> str:
    """Why the running launch differs from the desired one ("" when it does not)."""
    rec = seen.record
    same_recipe = rec.spec_hash.split(":", 1)[0] == HASH_VERSION
    if same_recipe and rec.spec_hash == service.spec_hash:
        return ""
    reasons = describe_changes(rec.launch, service.launch)
    if reasons:
        return reasons
    if same_recipe:
        return "launch environment changed (a secret's value, or mlxctl's python)"
    return ""


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Human causes like ``args changed: max-tokens 512 -> 4096``."""
    parts: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) or isinstance(b, Mapping):
            parts.append(f"{key} changed: {_dict_delta(a or {}, b or {})}")
        else:
            parts.append(f"{key} changed: {_show(a)} -> {_show(b)}")
    return "; ".join(parts)


def _dict_delta(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            out.append(f"+{key}={_show(new[key])}")
        elif key not in new:
            out.append(f"-{key}")
        elif old[key] != new[key]:
            out.append(f"{key} {_show(old[key])} -> {_show(new[key])}")
    return ", ".join(out)


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
