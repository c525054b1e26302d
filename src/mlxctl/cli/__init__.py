"""The ``mlxctl`` command line: thin wiring over the core, which imports nothing from here.

Expected failures (:class:`~mlxctl.errors.MlxctlError`) print one line, ``error: ...``,
and exit with their documented code (``docs/exit-codes.md``); a traceback means a bug.
"""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from mlxctl.errors import ExitCode, MlxctlError, SpecError

app = typer.Typer(
    name="mlxctl",
    help="Declarative controller for local LLM model servers (mlx-lm, vllm-mlx) "
    "behind a LiteLLM gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _register() -> None:
    from mlxctl.cli import catalog_cmd, hardware_cmd, init_cmd, ops_cmds, stack_cmds

    for module in (stack_cmds, ops_cmds, catalog_cmd, hardware_cmd, init_cmd):
        module.register(app)


def report_error(exc: MlxctlError) -> None:
    if isinstance(exc, SpecError):
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlxctl`` console script."""
    _register()
    try:
        result = app(args=argv, standalone_mode=False)
    except MlxctlError as exc:
        report_error(exc)
        return int(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except TyperException as exc:  # usage errors: typer shows them like click does
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    return int(result) if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
