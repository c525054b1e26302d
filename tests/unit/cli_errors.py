"""What ``mlxctl.cli.main`` makes of a command's failure, for tests on a local click group."""

from __future__ import annotations

import pytest
from click.testing import Result

from mlxctl.cli import report_error
from mlxctl.errors import MlxctlError


def reported(result: Result, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and stderr ``main`` gives the :class:`MlxctlError` the command raised.

    Commands raise expected errors and ``main`` reports them; the command itself must
    have printed nothing before failing.
    """
    exc = result.exception
    assert isinstance(exc, MlxctlError), result.output
    assert result.output == ""
    capsys.readouterr()
    report_error(exc)
    return int(exc.exit_code), capsys.readouterr().err
