"""The service platforms, by name, and which one this machine uses."""

from __future__ import annotations

from mlxctl.errors import ExitCode, MlxctlError
from mlxctl.machine.services import launchd, systemd
from mlxctl.machine.services.base import Platform

PLATFORMS: dict[str, Platform] = {
    launchd.PLATFORM.name: launchd.PLATFORM,
    systemd.PLATFORM.name: systemd.PLATFORM,
}


def platform_for(name: str | None, sys_platform: str) -> Platform:
    """``name``'s platform, else this OS's (``sys.platform``): launchd on macOS,
    systemd on Linux; a usage error elsewhere."""
    if name is None:
        name = {"darwin": "launchd", "linux": "systemd"}.get(sys_platform)
        if name is None:
            raise MlxctlError(
                f"no service manager known for {sys_platform}: "
                "`mlxctl service install --dry-run --platform launchd|systemd` prints the files",
                exit_code=ExitCode.USAGE,
            )
    try:
        return PLATFORMS[name]
    except KeyError:
        raise MlxctlError(
            f"unknown platform {name!r} (known: {', '.join(PLATFORMS)})", exit_code=ExitCode.USAGE
        ) from None
