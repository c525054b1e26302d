"""``python -m mlxctl``: the same as the ``mlxctl`` console script."""

from mlxctl.cli import run

run()
