"""``load``, ``unload`` and ``ps``: the commands about what is loaded now.

``load`` and ``unload`` are wishes the running controller's planner acts on (its
demand book), so they need one; ``ps`` works without one too, minus what only the
controller knows (requests in flight, idle times).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlxctl.cli.common import (
    CLOCK,
    context,
    controller,
    emit_json,
    err,
    need_controller,
    output_option,
    stack_selection,
    targets,
)
from mlxctl.cli.completion import complete_tiers
from mlxctl.errors import ExitCode, MlxctlError

# Seconds between two looks at a loading tier, and the slack past its startup timeout
# before ``load`` gives up (the controller's own timeout normally decides first).
POLL = 0.5
SLACK = 30.0


def load(tier: str, timeout: float | None = None, output: str = "text") -> int:
    """Load TIER now and wait until it serves (exit 0), fails (4) or times out (5)."""
    client = need_controller("load")
    state = client.call("POST", f"/v1/tiers/{tier}/load", {})
    limit = timeout or (state.get("startup_timeout") or 120.0) + SLACK
    deadline = CLOCK.monotonic() + limit
    shown: tuple[str, str] | None = None
    while True:
        key = (state["state"], state["detail"])
        if state["state"] == "ready":
            if output == "json":
                emit_json(state)
            else:
                print(f"{tier}: ready ({state['detail']})" if state["detail"] else f"{tier}: ready")
            return int(ExitCode.OK)
        if state["state"] == "unavailable":
            raise MlxctlError(f"{tier}: cannot load: {state['detail'] or 'unavailable'}")
        if key != shown:
            err(
                f"  . {tier}: {state['state']}"
                + (f" ({state['detail']})" if state["detail"] else "")
            )
            shown = key
        if CLOCK.monotonic() >= deadline:
            raise MlxctlError(
                f"{tier}: not serving after {limit:.0f}s (still {state['state']})",
                exit_code=ExitCode.HEALTH_TIMEOUT,
            )
        CLOCK.sleep(POLL)
        state = client.call("GET", f"/v1/tiers/{tier}")


def unload(tier: str, output: str = "text") -> int:
    """Unload TIER now (an on-demand tier loads again on its next request)."""
    client = need_controller("unload")
    state = client.call("POST", f"/v1/tiers/{tier}/unload", {})
    if output == "json":
        emit_json(state)
        return int(ExitCode.OK)
    if state.get("note"):
        err(f"note: {state['note']}")
    print(f"{tier}: unloading")
    return int(ExitCode.OK)


COLUMNS = ("TIER", "PID", "RSS", "ESTIMATE", "LOAD", "IN-FLIGHT", "WAITING", "IDLE", "UNLOADS IN")


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    seconds = int(value)
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m{seconds % 60:02d}s"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def ps(path: Path | None = None, files: tuple[Path, ...] = (), output: str = "text") -> int:
    """What is loaded now: tier, PID, memory (resident and estimated), requests in flight,
    idle time, and when the idle timeout unloads it."""
    client = controller()
    notes: list[str]
    if client is not None:
        answer = client.call("GET", "/v1/ps")
        rows: list[dict[str, Any]] = answer["rows"]
        notes = list(answer["notes"])
    else:
        from mlxctl.app import control, stacks

        ctx = context()
        desired = stacks.current_desired(ctx, targets(path, files))
        rows = [r.to_json() for r in control.ps_direct(ctx, desired)]
        notes = [
            "note: no controller runs: requests in flight and idle times are its knowledge "
            "(`mlxctl reconcile`)"
        ]
    if output == "json":
        emit_json({"tiers": rows, "controller": client is not None})
        return int(ExitCode.OK)
    for note in notes:
        err(note)
    if not rows:
        print("nothing is loaded")
        return int(ExitCode.OK)
    cells = [COLUMNS] + [
        (
            r["tier"], str(r["pid"]), _gib(r["rss"]), _gib(r["estimate"]), r["load"],
            _count(r["in_flight"]), _count(r["waiting"]), _secs(r["idle_for"]),
            _secs(r["unloads_in"]),
        )
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
    return int(ExitCode.OK)


def register(app: click.Group) -> None:
    app.command("load")(
        click.argument("tier", shell_complete=complete_tiers)(
            click.option(
                "--timeout",
                type=click.FloatRange(min=0, min_open=True),
                help="Seconds to wait for it to serve (default: its startup timeout + 30).",
            )(output_option(load))
        )
    )
    app.command("unload")(
        click.argument("tier", shell_complete=complete_tiers)(output_option(unload))
    )
    app.command("ps")(stack_selection(output_option(ps)))
