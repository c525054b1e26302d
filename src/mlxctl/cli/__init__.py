"""The ``mlxctl`` command line: thin wiring over the core, which imports nothing from here.

Expected failures (:class:`~mlxctl.errors.MlxctlError`) print one line, ``error: ...``,
and exit with their documented code (``docs/exit-codes.md``); a traceback means a bug.
Commands return their exit code.

click is imported only once a command needs parsing: ``mlxctl status`` with a
controller running takes the quick path (:mod:`mlxctl.cli.quick`) and never pays for it.
Shell completion (``mlxctl completion SHELL``) goes through the console script and
click's ``main``, which answers ``_MLXCTL_COMPLETE=...`` calls before parsing.
"""

from __future__ import annotations

import sys

from mlxctl.errors import ExitCode, MlxctlError, SpecError


def _register() -> None:
    from mlxctl.cli import (
        bench_cmd,
        catalog_cmd,
        chat_cmd,
        completion,
        control_cmds,
        doctor_cmd,
        hardware_cmd,
        init_cmd,
        models_cmd,
        ops_cmds,
        root,
        service_cmd,
        stack_cmds,
    )

    for module in (
        stack_cmds, ops_cmds, control_cmds, catalog_cmd, hardware_cmd, init_cmd, models_cmd,
        service_cmd, doctor_cmd, bench_cmd, chat_cmd, completion,
    ):  # fmt: skip
        module.register(root.app)
    from mlxctl.cli.examples import add_examples

    add_examples(root.app)


def report_error(exc: MlxctlError) -> None:
    if isinstance(exc, SpecError):
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlxctl`` console script; returns the exit code."""
    import os

    from mlxctl.cli.quick import quick

    # A shell asking for completions (``_MLXCTL_COMPLETE``, see mlxctl.cli.completion)
    # passes its words in the environment: click answers it, never the quick path.
    if "_MLXCTL_COMPLETE" not in os.environ:
        code = quick(sys.argv[1:] if argv is None else argv)
        if code is not None:
            return code
    import click

    from mlxctl.cli.root import app

    _register()
    try:
        result = app.main(args=argv, prog_name="mlxctl", standalone_mode=False)
    except MlxctlError as exc:
        report_error(exc)
        return int(exc.exit_code)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    return int(result) if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
