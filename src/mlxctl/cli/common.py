"""Options and helpers shared by the commands.

The CLI is plain click: typer, on this machine, costs ~0.23 s more per command
(it imports rich and pydantic before dispatching), which every ``status`` would pay.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mlxctl.machine.clock import SystemClock
from mlxctl.paths import Paths, default_paths

if TYPE_CHECKING:
    from mlxctl.admin.client import AdminClient
    from mlxctl.app.context import Context
    from mlxctl.apply.events import Listener
    from mlxctl.machine.interfaces import Clock
    from mlxctl.spec.stack_set import StackSet

F = TypeVar("F", bound=Callable[..., Any])
# The CLI's clock (the CLI is a composition root): it paces terminal output (progress
# lines, ``logs -f``) and stamps the controller's log lines; it decides nothing.
CLOCK: Clock = SystemClock()

output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)


def files_option(help_text: str) -> Callable[[F], F]:
    """``-f/--file FILE`` (repeatable), bound to the ``files`` parameter."""
    return click.option(
        "--file",
        "-f",
        "files",
        multiple=True,
        type=click.Path(path_type=Path),
        help=help_text,
    )


def stack_selection(func: F) -> F:
    """``[PATH]`` and ``-f/--file`` (repeatable): which stack files a command reads."""
    func = files_option("A stack file to read (repeatable); replaces PATH.")(func)
    return click.argument("path", required=False, type=click.Path(path_type=Path))(func)


def paths() -> Paths:
    return default_paths()


def context(*, listeners: list[Listener] | None = None, online_models: bool = False) -> Context:
    """The real effects for one command: the CLI is where a use case's context is built
    (the admin API hands the controller's own to the same use cases)."""
    from mlxctl.app.context import real

    return real(paths(), listeners=listeners, online_models=online_models)


@contextmanager
def state_lock(ctx: Context) -> Iterator[None]:
    """Hold the state directory's lock (one reconciler at a time) around a use case that
    acts; StateLockHeldError (exit 6) names the holder."""
    from mlxctl.app.context import state_lock as hold

    with hold(ctx):
        yield


def controller() -> AdminClient | None:
    """The running controller of this state directory, or None (then a command works on
    the state directory itself). Costs one connect: no controller is the common case."""
    from mlxctl.admin.client import connect

    return connect(paths())


def need_controller(command: str) -> AdminClient:
    """The running controller; exit 10 in one line when there is none."""
    from mlxctl.errors import ExitCode, MlxctlError

    client = controller()
    if client is None:
        raise MlxctlError(
            f"`mlxctl {command}` needs a running controller: start it with `mlxctl reconcile`",
            exit_code=ExitCode.NO_CONTROLLER,
        )
    return client


def explicit_files(path: Path | None, files: tuple[Path, ...] | list[Path] | None) -> list[str]:
    """The stack files named on the command line, absolute (the controller's working
    directory is not ours); [] when none: the controller applies its own."""
    import os

    chosen = list(files) if files else ([path] if path is not None else [])
    return [os.path.abspath(p) for p in chosen]


def show_converge(answer: dict[str, Any], *, json_out: bool) -> int:
    """Print a converge run the controller carried out, as ``reconcile --once`` prints its
    own: the plan, the status table, then "converged" or one error line per service."""
    if json_out:
        for record in answer["records"]:
            emit_json(record)
        return int(answer["exit_code"])
    for line in answer["plan"]:
        err(line)
    if answer["status"]:
        print(answer["status"])
    if answer["exit_code"] == 0:
        err("converged: every service is running and ready.")
    for line in answer["errors"]:
        err(f"error: {line}")
    return int(answer["exit_code"])


def targets(path: Path | None, files: tuple[Path, ...] | list[Path] | None) -> list[Path]:
    """The stack files or directories to read: ``-f`` files, else PATH, else the default dir."""
    if files:
        return list(files)
    if path is not None:
        return [path]
    default = paths().stacks
    return [default] if default.exists() else []


def load_selected(chosen: list[Path]) -> StackSet:
    """Load the stack files under ``chosen`` (see :func:`targets`).

    When there are none, says so on stderr, and where it looked: an empty selection
    is valid (it is what ``down`` converges to), but a new user's first ``validate``
    or ``diff`` must not read as success about files that do not exist.
    """
    from mlxctl.app.stacks import load

    stack = load(chosen)
    if not stack.files:
        where = ", ".join(str(t) for t in chosen) or f"{paths().stacks} (it does not exist)"
        err(
            f"note: no stack files in {where}; `mlxctl init -o FILE` or "
            "`mlxctl quickstart` writes one"
        )
    return stack


def emit_json(record: dict[str, Any] | list[Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
