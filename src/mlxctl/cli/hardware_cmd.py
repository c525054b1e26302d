"""``mlxctl hardware``: what this machine is, as mlxctl sees it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from mlxctl.cli.common import emit_json, output_option
from mlxctl.errors import ExitCode, MlxctlError

if TYPE_CHECKING:
    from mlxctl.capacity.hardware import HardwareProfile

    Detector = Callable[[], HardwareProfile]


def _detect() -> HardwareProfile:
    from mlxctl.capacity.detect import detect_hardware

    return detect_hardware()


def register(app: click.Group, *, detect: Detector = _detect) -> None:
    """Add ``hardware`` to ``app`` (its modules load when it runs)."""

    @app.command("hardware")
    @output_option
    def hardware(output: str) -> None:
        """Show the chip, memory, GPU and memory bandwidth, and the default memory budget."""
        from mlxctl.capacity.memory import default_budget_bytes, gib

        try:
            profile = detect()
        except OSError as exc:
            raise MlxctlError(
                f"cannot detect the hardware: {exc}", exit_code=ExitCode.APPLY_FAILED
            ) from exc
        budget = default_budget_bytes(profile.model_memory_bytes)
        if output == "json":
            data = profile.to_dict()
            data["default_budget_bytes"] = budget
            emit_json(data)
            return
        bandwidth = (
            f"{profile.bandwidth_gbps:g} GB/s"
            + (" (estimate)" if profile.bandwidth_estimated else "")
            if profile.bandwidth_gbps
            else "unknown"
        )
        lines = [
            f"profile      {profile.profile_id}",
            f"chip         {profile.chip}",
            f"os           {profile.os}",
            f"accelerator  {profile.accelerator}",
            f"memory       {gib(profile.memory_bytes)}",
        ]
        if profile.gpu_cores is not None:
            lines.append(f"gpu cores    {profile.gpu_cores}")
        if profile.gpu_name:
            lines.append(f"gpu          {profile.gpu_name}, {gib(profile.gpu_memory_bytes or 0)}")
        if profile.cpu_cores is not None:
            lines.append(f"cpu cores    {profile.cpu_cores}")
        lines.append(f"bandwidth    {bandwidth}")
        lines.append(f"budget       {gib(budget)} by default (all but max(4 GiB, 25%))")
        lines.extend(f"note         {n}" for n in profile.notes)
        click.echo("\n".join(lines))
