"""The admin API's routes: one handler each, the use cases of :mod:`mlxctl.app` behind them.

Adding a route is a handler and a line in :data:`ROUTES`. Handlers answer what the
CLI prints (text already formatted, so the client stays light) and what ``-o json``
emits (the same records as without a controller). ``docs/admin-api.md`` documents
every route.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlxctl.admin.api import ApiError, Request, Response, Route
from mlxctl.app import control, models, ops, stacks
from mlxctl.app.control import ControllerPort, Convergence
from mlxctl.errors import ExitCode
from mlxctl.reconcile.controller import NotConverged
from mlxctl.runtimes.gateway import DemandReport
from mlxctl.spec.schema import NAME_PATTERN
from mlxctl.status import report
from mlxctl.status.services import status_json


def _targets(ctl: ControllerPort, files: list[Path]) -> list[Path]:
    return files or list(ctl.targets)


def _suspended_line(ctl: ControllerPort) -> list[str]:
    s = ctl.suspended
    if s is None:
        return []
    since = _dt.datetime.fromtimestamp(s.since).strftime("%Y-%m-%d %H:%M:%S") if s.since else "?"
    return [
        f"note: the controller (pid {os.getpid()}) is suspended by {s.by} since {since}: "
        "nothing runs until `mlxctl up` (or `mlxctl reconcile --once`)"
    ]


def _tier_name(req: Request) -> str:
    name = req.params["tier"]
    if not re.fullmatch(NAME_PATTERN, name):
        raise ApiError(400, "bad_request", f"{name[:60]!r} is not a tier name")
    return name


# --------------------------------------------------------------------------- read


def controller(ctl: ControllerPort, req: Request) -> Response:
    return Response(200, control.info(ctl))


def status(ctl: ControllerPort, req: Request) -> Response:
    result = stacks.status(ctl.ctx, _targets(ctl, req.files()))
    notes = []
    for problem, kept in result.invalid_notes:
        note = "its last valid version is applied" if kept else "nothing is pruned"
        notes.append(f"invalid: {problem} ({note})")
    if result.warning is not None:
        notes.append(f"warning: stack files not usable, sync unknown: {result.warning}")
    notes += _suspended_line(ctl)
    text = (
        report.status_text(result.rows)
        if result.rows
        else "nothing is running and no stack is defined"
    )
    return Response(
        200,
        {
            "status": status_json(result.rows, result.invalid, result.host),
            "text": text,
            "notes": notes,
            "controller": control.info(ctl),
        },
    )


def plan(ctl: ControllerPort, req: Request) -> Response:
    """What ``diff`` shows: a dry-run pass on the controller's context (its health and
    demand), of its files or the ones asked."""
    targets = _targets(ctl, req.files())
    stack = stacks.load(targets)
    notes = _suspended_line(ctl)
    if not stack.files:
        notes.append(f"note: no stack files in {', '.join(map(str, targets)) or '(nothing)'}")
    result = stacks.diff(ctl.ctx, stack, allow_empty=req.flag("allow_empty"))
    the_plan = result.plan
    changes = the_plan.has_changes or bool(the_plan.blocked)
    if the_plan.refused:
        code = result.refusal_code()
    else:
        code = ExitCode.CHANGES if changes else ExitCode.OK
    records = [
        report.version_record(),
        *report.plan_stream(the_plan),
        report.summary_record(the_plan, (), int(code), None),
    ]
    body = {
        "exit_code": int(code),
        "lines": report.plan_lines(the_plan),
        "records": records,
        "notes": notes,
    }
    return Response(200, body)


def events(ctl: ControllerPort, req: Request) -> Response:
    """The last ``tail`` events; with ``follow``, then every new one, as NDJSON."""
    tail = int(req.number("tail", 50, low=0, high=100_000) or 0)
    # A bad name or kind is a usage error (400), as on the command line.
    only = ops.EventFilter(tuple(req.query.get("tier", ())), tuple(req.query.get("kind", ())))
    follow = req.flag("follow")
    records = ops.event_records(ctl.ctx.paths, tail, only, follow=follow, stop=req.closing)
    if not follow:
        return Response(200, {"events": list(records)})
    return Response(200, stream=records)


def ps(ctl: ControllerPort, req: Request) -> Response:
    rows = control.ps_through(ctl)
    return Response(
        200, {"rows": [r.to_json() for r in rows], "demand": True, "notes": _suspended_line(ctl)}
    )


def tier(ctl: ControllerPort, req: Request) -> Response:
    return Response(200, control.tier_state(ctl, _tier_name(req)).to_json())


# --------------------------------------------------------------------------- act


def _wait_timeout(body: dict[str, Any]) -> float | None:
    timeout = body.get("timeout")
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise ApiError(400, "bad_request", "timeout must be a number of seconds over 0")
    return float(timeout)


def reconcile(ctl: ControllerPort, req: Request) -> Response:
    """Converge now: resume if suspended, a pass, and (``wait``, the default) the passes
    after it until converged, failed or stuck; the answer carries the exit code."""
    body = req.json()
    files = req.files(body)
    if not body.get("wait", True):
        control.same_targets(ctl, files)
        resumed = ctl.resume("mlxctl reconcile")
        return Response(202, {"triggered": True, "resumed": resumed})
    result = control.converge_now(ctl, files, by="mlxctl reconcile", timeout=_wait_timeout(body))
    return Response(200, converge_answer(ctl, result))


def up(ctl: ControllerPort, req: Request) -> Response:
    body = req.json()
    result = control.converge_now(ctl, [], by="mlxctl up", timeout=_wait_timeout(body))
    return Response(200, converge_answer(ctl, result))


def down(ctl: ControllerPort, req: Request) -> Response:
    body = req.json()
    done = control.down(ctl, timeout=_wait_timeout(body))
    answer = converge_answer(ctl, done.result, status_rows=False)
    answer["notes"] = list(done.notes)
    return Response(200, answer)


def load(ctl: ControllerPort, req: Request) -> Response:
    return Response(202, control.load(ctl, _tier_name(req)).to_json())


def unload(ctl: ControllerPort, req: Request) -> Response:
    return Response(202, control.unload(ctl, _tier_name(req)).to_json())


def demand(ctl: ControllerPort, req: Request) -> Response:
    """The gateway's report in, the verdicts of the last pass out."""
    try:
        the_report = DemandReport.model_validate_json(req.body or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        message = f"not a demand report: {where}: {first['msg']}"
        raise ApiError(400, "bad_request", message) from None
    answer = control.report_demand(ctl, the_report)
    return Response(200, answer.model_dump(mode="json"))


def ranks(ctl: ControllerPort, req: Request) -> Response:
    """This machine's ranks of distributed tiers (relayed by the gateway to the other
    members: docs/multi-host.md)."""
    return Response(200, control.ranks(ctl))


def models_update(ctl: ControllerPort, req: Request) -> Response:
    body = req.json()
    tiers = body.get("tiers", [])
    if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
        raise ApiError(400, "bad_request", "tiers must be a list of tier names")
    stack = stacks.load(_targets(ctl, req.files(body)))
    changes = models.update_locks(stack, ctl.ctx.paths, tiers)
    if changes:
        ctl.trigger("mlxctl models update")
    return Response(
        200,
        {
            "changes": [
                {
                    "tier": c.tier,
                    "repo": c.repo,
                    "requested": c.requested,
                    "old": c.old,
                    "new": c.new,
                    "lock_file": str(c.lock_file),
                }
                for c in changes
            ]
        },
    )


def rotate_key(ctl: ControllerPort, req: Request) -> Response:
    body = req.json()
    stack = stacks.load(_targets(ctl, req.files(body)))
    ops.rotate_gateway_key(ctl.ctx.paths, stack)
    control.note_event(ctl.ctx, "rotate", "gateway", "mlxctl gateway key --rotate", "key replaced")
    return Response(200, {"rotated": True})


# --------------------------------------------------------------------------- answers


def converge_answer(
    ctl: ControllerPort, result: Convergence, *, status_rows: bool = True
) -> dict[str, Any]:
    """A converge run as the CLI shows it: the first plan, each outcome, the status table,
    the errors; ``records`` is the ``-o json`` stream."""
    if isinstance(result, NotConverged):
        return {
            "exit_code": int(result.exit_code),
            "converged": False,
            "plan": [],
            "outcomes": [],
            "status": "",
            "errors": result.message.splitlines() or ["not converged"],
            "records": [
                report.version_record(),
                {"type": "summary", "exit_code": int(result.exit_code), "error": result.message},
            ],
        }
    first, last = result.first, result.last
    refused = last.plan.refused is not None
    rows = stacks.service_rows(ctl.ctx, last.desired) if status_rows and not refused else []
    code = result.exit_code
    records = [report.version_record(), *report.plan_stream(first.plan)]
    if not refused:
        records += [report.outcome_record(o) for o in result.outcomes]
    records.append(
        report.summary_record(
            first.plan, () if refused else result.outcomes, int(code),
            None if refused else result.converged,
        )
    )  # fmt: skip
    return {
        "exit_code": int(code),
        "converged": result.converged,
        "plan": report.plan_lines(first.plan),
        "outcomes": [report.outcome_line(o) for o in result.outcomes],
        "status": report.status_text(rows) if rows else "",
        "errors": [] if code == ExitCode.OK or refused else control.converge_errors(result),
        "records": records,
    }


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/controller", controller),
    Route("GET", "/v1/status", status),
    Route("GET", "/v1/plan", plan),
    Route("GET", "/v1/events", events),
    Route("GET", "/v1/ps", ps),
    Route("GET", "/v1/tiers/{tier}", tier),
    Route("POST", "/v1/tiers/{tier}/load", load),
    Route("POST", "/v1/tiers/{tier}/unload", unload),
    Route("POST", "/v1/reconcile", reconcile),
    Route("POST", "/v1/up", up),
    Route("POST", "/v1/down", down),
    Route("PUT", "/v1/demand", demand),
    Route("GET", "/v1/ranks", ranks),
    Route("POST", "/v1/models/update", models_update),
    Route("POST", "/v1/gateway/key/rotate", rotate_key),
)
