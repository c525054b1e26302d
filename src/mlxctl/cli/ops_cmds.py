"""``status``, ``down``, ``logs``, ``events``, ``gateway-key`` and ``quickstart``."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

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
from mlxctl.errors import ExitCode, MlxctlError, NotFoundError


def status(path: Path | None = None, files: tuple[Path, ...] = (), output: str = "text") -> int:
    """Per tier and gateway: health, desired vs running (Synced/OutOfSync), PID, port, uptime."""
    from mlxctl.reconcile.context import real_context
    from mlxctl.reconcile.passes import observe_state, resolve
    from mlxctl.status import report
    from mlxctl.status.services import build_status, status_json

    ctx = real_context(paths())
    desired = None
    try:
        desired = resolve(ctx, load_selected(targets(path, files)))
    except MlxctlError as exc:
        err(f"warning: stack files not usable, sync unknown: {str(exc).splitlines()[0]}")
    rows = build_status(desired, observe_state(ctx, desired))
    if output == "json":
        emit_json(status_json(rows))
    elif rows:
        print(report.status_text(rows))
    else:
        print("nothing is running and no stack is defined")
    return int(ExitCode.OK)


def down(output: str = "text") -> int:
    """Stop everything mlxctl owns (the gateway and every tier)."""
    from mlxctl.desired.state import DesiredState
    from mlxctl.plan.actions import PlanOptions
    from mlxctl.reconcile.context import real_context
    from mlxctl.reconcile.lock import StateLock
    from mlxctl.reconcile.passes import run_pass
    from mlxctl.status import report

    ctx = real_context(paths())
    with StateLock(ctx.paths.lock):
        result = run_pass(
            ctx,
            DesiredState(tiers=(), gateway=None),
            options=PlanOptions(allow_empty=True, prune_cause="mlxctl down"),
            verify=False,
        )
    failed = [o for o in result.outcomes if not o.ok]
    if output == "json":
        emit_json(report.version_record())
        for outcome in result.outcomes:
            emit_json(report.outcome_record(outcome))
        code = ExitCode.APPLY_FAILED if failed else ExitCode.OK
        emit_json(report.summary_record(result.plan, result.outcomes, int(code), not failed))
    else:
        for outcome in result.outcomes:
            print(report.outcome_line(outcome))
        if not result.outcomes:
            print("nothing to stop")
    return int(ExitCode.APPLY_FAILED if failed else ExitCode.OK)


def logs(tier: str, follow: bool = False, tail_lines: int = 50) -> int:
    """Print a service's log (TIER: a tier name, or 'gateway')."""
    from mlxctl.machine.logfiles import tail

    log = paths().logs / f"{tier}.log"
    if not log.exists():
        known = sorted(p.stem for p in paths().logs.glob("*.log")) if paths().logs.exists() else []
        hint = f" (known: {', '.join(known)})" if known else ""
        raise NotFoundError(f"no log for '{tier}'{hint}")
    for line in tail(log, tail_lines):
        print(line)
    if follow:
        _follow(log)
    return int(ExitCode.OK)


def _follow(log: Path) -> None:
    """Print lines appended to ``log``, reopening it when it is rotated."""
    handle = open(log, "rb")  # noqa: SIM115 - reopened on rotation
    handle.seek(0, os.SEEK_END)
    inode = os.fstat(handle.fileno()).st_ino
    try:
        while True:
            chunk = handle.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
                continue
            try:
                if os.stat(log).st_ino != inode:
                    handle.close()
                    handle = open(log, "rb")  # noqa: SIM115
                    inode = os.fstat(handle.fileno()).st_ino
                    continue
            except FileNotFoundError:
                pass
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        handle.close()


def events(tail_n: int = 50, output: str = "text") -> int:
    """Recent actions with their causes and results."""
    from mlxctl.apply.events import read_events
    from mlxctl.status.report import event_line

    found = read_events(paths().events, tail_n)
    for event in found:
        if output == "json":
            emit_json(event.to_json())
        else:
            print(event_line(event))
    if not found and output == "text":
        print("no events yet")
    return int(ExitCode.OK)


def gateway_key(
    path: Path | None = None, files: tuple[Path, ...] = (), rotate: bool = False
) -> int:
    """Print the gateway's API key (to use as the Bearer token); --rotate replaces it."""
    from mlxctl.desired.resolve import generated_key_path, master_key_ref
    from mlxctl.spec import secrets

    stack = load_selected(targets(path, files))
    if rotate:
        if stack.gateway.master_key is not None:
            raise MlxctlError(
                f"the gateway key is yours ({stack.gateway.master_key}): change it there, "
                "then run mlxctl reconcile --once (only the gateway restarts)",
                exit_code=ExitCode.USAGE,
            )
        rotate_generated_key(generated_key_path(paths().state))
        err("rotated: the running gateway accepts only the new key from its next poll (<1 s)")
    ref = master_key_ref(stack, paths().state)
    try:
        print(secrets.resolve(ref, os.environ, where="gateway key"))
    except secrets.MissingSecretError:
        if stack.gateway.master_key is not None:
            raise  # the user's reference: its own message says what is missing
        raise NotFoundError(
            "no gateway key yet: mlxctl generates it when the gateway first starts "
            "(mlxctl reconcile --once)"
        ) from None
    return int(ExitCode.OK)


def rotate_generated_key(path: Path) -> None:
    """Replace the generated key atomically (0600); the gateway re-reads the file in place."""
    import secrets as pysecrets

    from mlxctl.machine.inventory import write_atomic

    write_atomic(path, "sk-mlxctl-" + pysecrets.token_urlsafe(32) + "\n", mode=0o600)


def quickstart(timeout: float | None = None) -> int:
    """Install the demo stack into your stacks directory, converge it, and show how to call it."""
    from mlxctl.cli.stack_cmds import reconcile
    from mlxctl.desired.resolve import master_key_ref
    from mlxctl.reconcile.passes import load_stack
    from mlxctl.spec import secrets

    stacks = paths().stacks
    installed = install_demo_stack(stacks)
    if installed is not None:
        err(f"installed the demo stack at {installed}")
    code = reconcile(path=stacks, once=True, timeout=timeout)
    if code != ExitCode.OK:
        return code
    stack = load_stack([stacks])
    key = secrets.resolve(master_key_ref(stack, paths().state), os.environ, where="gateway key")
    tier = stack.tiers[0].spec.name
    port = stack.gateway.port
    print()
    print("Ask the gateway (OpenAI-compatible):")
    body = json.dumps(
        {
            "model": tier,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 30,
            "temperature": 0,
        }
    )
    print(
        f"curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d '{body}'"
    )
    return int(ExitCode.OK)


def install_demo_stack(stacks: Path) -> Path | None:
    """Copy the bundled demo stack into ``stacks``; None when a ``demo.yaml`` is already there.

    An existing file is the user's (they may have edited ports or args): it is kept.
    """
    stacks.mkdir(parents=True, exist_ok=True)
    target = stacks / "demo.yaml"
    if target.exists():
        return None
    shutil.copyfile(bundled_stack("demo.yaml"), target)
    return target


def bundled_stack(name: str) -> Path:
    """A stack file shipped with mlxctl (in the wheel, or the repository's stacks/)."""
    import mlxctl

    here = Path(mlxctl.__file__).parent
    for candidate in (here / "_stacks" / name, here.parent.parent / "stacks" / name):
        if candidate.exists():
            return candidate
    raise NotFoundError(f"bundled stack {name} not found")


def register(app: click.Group) -> None:
    app.command("status")(stack_selection(output_option(status)))
    app.command("down")(output_option(down))
    logs_command = click.argument("tier")(
        click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")(
            click.option(
                "--tail",
                "-n",
                "tail_lines",
                default=50,
                show_default=True,
                help="Lines to show first.",
            )(logs)
        )
    )
    app.command("logs")(logs_command)
    app.command("events")(
        click.option(
            "--tail", "-n", "tail_n", default=50, show_default=True, help="How many recent events."
        )(output_option(events))
    )
    rotate = click.option(
        "--rotate", is_flag=True, help="Replace the generated key (the gateway reloads it)."
    )
    app.command("gateway-key")(stack_selection(rotate(gateway_key)))

    @app.group("gateway")
    def gateway_group() -> None:
        """The gateway in front of every tier."""

    gateway_group.command("key")(stack_selection(rotate(gateway_key)))
    app.command("quickstart")(
        click.option("--timeout", type=float, help="Startup timeout, seconds.")(quickstart)
    )
