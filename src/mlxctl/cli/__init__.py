"""The ``mlxctl`` command line: thin wiring over the core, which imports nothing from here.

Expected failures (:class:`~mlxctl.errors.MlxctlError`) print one line, ``error: ...``,
and exit with their documented code (``docs/exit-codes.md``); a traceback means a bug.
Commands return their exit code.
"""

from __future__ import annotations

import sys

import click

from mlxctl import __version__
from mlxctl.errors import ExitCode, MlxctlError, SpecError


@click.group(
    name="mlxctl",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="mlxctl")
def app() -> None:
    """Declarative controller for local LLM model servers (mlx-lm, vllm-mlx) behind a
    LiteLLM gateway."""


def _register() -> None:
    from mlxctl.cli import catalog_cmd, hardware_cmd, init_cmd, models_cmd, ops_cmds, stack_cmds

    for module in (stack_cmds, ops_cmds, catalog_cmd, hardware_cmd, init_cmd, models_cmd):
        module.register(app)


def report_error(exc: MlxctlError) -> None:
    if isinstance(exc, SpecError):
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mlxctl`` console script; returns the exit code."""
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
