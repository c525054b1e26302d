"""Presentation of plans, outcomes and status: Terraform-like text and a versioned JSON stream.

Pure string building, so the CLI stays thin and the formats are tested directly.
The JSON line stream (``--output json``) starts with a version line, then one object
per planned and per applied action, then a summary; its schema name changes only
with an incompatible change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from mlxctl import __version__

if TYPE_CHECKING:
    from mlxctl.apply.events import Event
    from mlxctl.apply.executor import Outcome
    from mlxctl.plan.actions import Action, Plan
    from mlxctl.status.services import ServiceStatus

PLAN_SCHEMA = "mlxctl.plan/v1"
SYMBOLS = {
    "start": "+",
    "restart": "-/+",
    "stop": "-",
    "forget": "-",
    "prepare": "*",
    "crash": "!",
    "kill": "!",
    "adopt": "~",
    "ready": "=",
    "wait": ".",
    "rehash": "~",
    "reconfigure": "~",
}
VERBS = {
    "start": "start",
    "restart": "restart",
    "stop": "stop",
    "forget": "forget",
    "prepare": "prepare model",
    "crash": "crashed",
    "kill": "kill",
    "adopt": "adopt",
    "ready": "ready",
    "wait": "wait",
    "rehash": "update record",
    "reconfigure": "reload routes",
}


def plan_lines(plan: Plan) -> list[str]:
    """The plan as Terraform-like text lines, ending with a summary line."""
    raised = [f"Memory: {name}: {why}." for name, why in plan.memory_raised.items()]
    if plan.refused:
        return [f"refused: {plan.refused}", *raised]
    names = [a.target for a in plan.actions] + list(plan.blocked) + list(plan.elsewhere)
    width = max([len(n) for n in names] + [7])
    lines = [
        f"  {SYMBOLS[a.kind]:>3} {a.target:<{width}}  {VERBS[a.kind]:<13} {a.cause}"
        for a in plan.ordered()
    ]
    lines += [f"  {'x':>3} {n:<{width}}  {'blocked':<13} {why}" for n, why in plan.blocked.items()]
    # Another machine's tiers: its controller runs them; left alone here.
    lines += [
        f"  {'@':>3} {n:<{width}}  {'elsewhere':<13} on host '{host}' (left alone here)"
        for n, host in sorted(plan.elsewhere.items())
    ]
    memory = []
    if plan.unenforced:
        tiers_by_why: dict[str, list[str]] = {}
        for name, whys in plan.unenforced.items():
            for why in whys:
                tiers_by_why.setdefault(why, []).append(name)
        memory.append(
            "Not enforced by the servers (the memory estimate assumes it): "
            + "; ".join(f"{why} for {', '.join(n)}" for why, n in tiers_by_why.items())
            + "."
        )
    if plan.memory:
        memory.append(f"Memory: {plan.memory.message}.")
    here = [f"This machine is host '{plan.host}'."] if plan.host else []
    return [*lines, summary_line(plan), *here, *memory, *raised]


def summary_line(plan: Plan) -> str:
    counts = {k: sum(1 for a in plan.actions if a.kind == k) for k in SYMBOLS}
    parts = [
        f"{counts['start']} to start",
        f"{counts['restart']} to restart",
        f"{counts['stop'] + counts['forget']} to stop",
    ]
    if counts["prepare"]:
        parts.append(f"{counts['prepare']} model(s) to prepare")
    if plan.blocked:
        parts.append(f"{len(plan.blocked)} blocked")
    if not plan.has_changes and not plan.blocked:
        held = [a for a in plan.actions if a.kind == "wait" and a.reason != "starting"]
        if held:
            return f"No changes to apply now; {len(held)} waiting (see above)."
        return "No changes. The machine matches the stack."
    return "Plan: " + ", ".join(parts) + "."


def version_record() -> dict[str, Any]:
    return {"type": "version", "schema": PLAN_SCHEMA, "mlxctl": __version__}


def action_record(action: Action, kind: str = "planned") -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": kind,
        "action": action.kind,
        "target": action.target,
        "cause": action.cause,
    }
    if action.not_before is not None:
        data["not_before"] = action.not_before
    return data


def outcome_record(outcome: Outcome) -> dict[str, Any]:
    data = action_record(outcome.action, "applied")
    data.update(
        result="ok" if outcome.ok else "failed",
        message=outcome.message,
        duration=round(outcome.duration, 3),
    )
    return data


def plan_stream(plan: Plan) -> list[dict[str, Any]]:
    records = [action_record(a) for a in plan.ordered()]
    records += [{"type": "blocked", "target": n, "cause": why} for n, why in plan.blocked.items()]
    elsewhere = sorted(plan.elsewhere.items())
    records += [{"type": "elsewhere", "target": n, "host": host} for n, host in elsewhere]
    if plan.refused:
        records.append({"type": "refused", "cause": plan.refused})
    return records


def summary_record(
    plan: Plan, outcomes: Sequence[Outcome], exit_code: int, converged: bool | None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "summary",
        "changes": sum(1 for a in plan.actions if a.changes),
        "applied": len(outcomes),
        "failed": sum(1 for o in outcomes if not o.ok),
        "blocked": len(plan.blocked),
        "refused": plan.refused is not None,
        "converged": converged,
        "exit_code": exit_code,
        "memory": (
            {
                "needed": plan.memory.total,
                "budget": plan.memory.budget,
                "fits": plan.memory.fits,
                "unenforced": {n: list(why) for n, why in plan.unenforced.items()},
                "raised": dict(plan.memory_raised),
            }
            if plan.memory
            else None
        ),
    }
    if plan.host is not None:  # a stack of several machines: which one this is
        record["host"] = plan.host
    return record


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=False)


def outcome_line(outcome: Outcome) -> str:
    action = outcome.action
    mark = "ok" if outcome.ok else "FAILED"
    took = f" in {outcome.duration:.1f}s" if outcome.duration >= 0.05 else ""
    first = outcome.message.splitlines()[0] if outcome.message else ""
    line = f"{SYMBOLS[action.kind]:>3} {action.target}: {VERBS[action.kind]} {mark}{took}"
    return f"{line} ({first})" if first and first != "ready" else line


def event_line(event: Event) -> str:
    import datetime as _dt

    stamp = _dt.datetime.fromtimestamp(event.ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    took = f" {event.duration:.1f}s" if event.duration else ""
    msg = f" - {event.message.splitlines()[0]}" if event.message else ""
    return (
        f"{stamp}  {event.target:<12} {event.kind:<8} {event.result:<8}{took}  {event.cause}{msg}"
    )


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


STATUS_COLUMNS = (
    "NAME",
    "RUNTIME",
    "HEALTH",
    "SYNC",
    "PID",
    "PORT",
    "UPTIME",
    "RESTARTS",
    "MODEL / LAST ERROR",
)


def status_cells(rows: Iterable[ServiceStatus]) -> list[tuple[str, ...]]:
    cells: list[tuple[str, ...]] = []
    for r in rows:
        note = r.last_error if r.last_error and r.health != "ready" else (r.model or "")
        if r.restart_in is not None:
            note = f"restart in {r.restart_in:.0f}s: {note}"
        if r.replaced_by and r.health == "ready":
            note = f"being replaced: serves until the new {r.replaced_by} is ready"
        if r.group is not None:
            note = f"{r.group_line}: {note}" if note else r.group_line
        if r.health in ("unloaded", "elsewhere") and not r.model:
            note = r.detail
        elif r.health == "unloaded":
            note = f"{r.detail}: {r.model}" if r.model else r.detail
        elif r.load == "on-demand" and r.health == "ready":
            if r.idle_for is not None:
                when = f", unloads in {_uptime(r.unloads_in)}" if r.unloads_in is not None else ""
                note = f"idle {_uptime(r.idle_for)}{when}: {note}"
            elif r.detail and "in flight" in r.detail:
                note = f"{r.detail}: {note}"
        cells.append(
            (
                r.name,
                r.runtime or "-",
                r.health,
                r.sync,
                str(r.pid) if r.pid else "-",
                str(r.port) if r.port else "-",
                _uptime(r.uptime),
                _restarts(r),
                note,
            )
        )
    return cells


def _restarts(row: ServiceStatus) -> str:
    """The count, and after a crash the word of the death the last restart followed:
    ``2 (oom-killed)``."""
    after = row.restarted_after
    return f"{row.restarts} ({after['word']})" if after and row.restarts else str(row.restarts)


def status_text(rows: Sequence[ServiceStatus]) -> str:
    cells = [STATUS_COLUMNS, *status_cells(rows)]
    if any(r.host for r in rows):  # a stack of several machines: which one serves each
        hosts = ["HOST", *(r.host or "-" for r in rows)]
        cells = [(c[0], host, *c[1:]) for c, host in zip(cells, hosts, strict=True)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
    out = []
    for c in cells:
        out.append(
            "  ".join(v.ljust(w) for v, w in zip(c[:-1], widths, strict=True)) + "  " + c[-1]
        )
    return "\n".join(line.rstrip() for line in out)
