"""``mlxctl service install|uninstall|status``: run the controller at login.

Thin: :mod:`mlxctl.app.service` decides and acts; this parses, asks the running
controller its PID (the admin socket) and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlxctl.cli.common import controller, emit_json, err, output_option, paths
from mlxctl.errors import ExitCode

if TYPE_CHECKING:
    from mlxctl.app.service import Platform, ServiceSpec

PLATFORM_CHOICE = click.Choice(["launchd", "systemd"])


def _setup(platform: str | None, stacks: Path | None = None) -> tuple[Platform, ServiceSpec]:
    from mlxctl.app import service

    return service.platform_for(platform, sys.platform), service.spec_for(paths(), stacks)


def install(
    path: Path | None = None,
    dry_run: bool = False,
    platform: str | None = None,
    output: str = "text",
) -> int:
    """Run the controller (`mlxctl reconcile PATH`) at login: a LaunchAgent on macOS, a
    systemd user unit on Linux. PATH defaults to the stack directory. Installing again
    rewrites nothing unless the file changed; the model servers keep running across
    controller restarts.

    \b
    Examples:
      mlxctl service install
      mlxctl service install --dry-run --platform launchd   # print the plist, any OS
    """
    from mlxctl.app import service

    the_platform, spec = _setup(platform, path)
    if dry_run:
        file = service.render(the_platform, spec)
        commands = the_platform.load(spec, file)
        if output == "json":
            emit_json(
                {
                    "platform": the_platform.name,
                    "file": str(file.path),
                    "mode": f"{file.mode:04o}",
                    "content": file.content,
                    "commands": commands,
                }
            )
            return int(ExitCode.OK)
        err(f"# would write {file.path} (mode {file.mode:04o}), then run:")
        for argv in commands:
            err(f"#   {' '.join(argv)}")
        sys.stdout.write(file.content)
        return int(ExitCode.OK)
    running = controller()
    done = service.install(the_platform, spec, service.real_runner())
    _show_done(the_platform.name, service.render(the_platform, spec).path, done, output)
    if running is not None:
        pid = running.call("GET", "/v1/controller")["pid"]
        status = service.status(the_platform, spec, service.real_runner(), paths(), None)
        if status.manager.pid != pid:
            err(
                f"note: a controller started by hand (pid {pid}) holds the state directory: "
                "the service's controller starts once it stops"
            )
    return int(ExitCode.OK)


def _show_done(platform: str, file: Path, done: list[str], output: str) -> None:
    """What install or uninstall did: its lines, or -o json {"platform", "file", "done"}."""
    if output == "json":
        emit_json({"platform": platform, "file": str(file), "done": done})
    else:
        for line in done:
            print(line)


def uninstall(dry_run: bool = False, platform: str | None = None, output: str = "text") -> int:
    """Stop the service's controller and remove its file. The model servers keep running
    (`mlxctl down` stops them).

    \b
    Example:
      mlxctl service uninstall
    """
    from mlxctl.app import service

    the_platform, spec = _setup(platform)
    file = service.render(the_platform, spec)
    if dry_run:
        commands = [
            *the_platform.unload(spec, file),
            ["rm", str(file.path)],
            *the_platform.forget(spec),
        ]
        if output == "json":
            emit_json({"platform": the_platform.name, "file": str(file.path), "commands": commands})
        else:
            for argv in commands:
                print(" ".join(argv))
        return int(ExitCode.OK)
    done = service.uninstall(the_platform, spec, service.real_runner())
    _show_done(the_platform.name, file.path, done, output)
    return int(ExitCode.OK)


def status(platform: str | None = None, output: str = "text") -> int:
    """Whether the service is installed, loaded and running, with the controller's PID
    (from the admin socket and the state lock) and where its log is.

    \b
    Example:
      mlxctl service status -o json
    """
    from mlxctl.app import service

    the_platform, spec = _setup(platform)
    client = controller()
    pid = None if client is None else int(client.call("GET", "/v1/controller")["pid"])
    result = service.status(the_platform, spec, service.real_runner(), paths(), pid)
    if output == "json":
        emit_json(result.to_json())
    else:
        for line in result.lines():
            print(line)
    return int(ExitCode.OK)


def register(app: click.Group) -> None:
    @app.group("service")
    def group() -> None:
        """Run the controller at login (launchd on macOS, systemd --user on Linux).

        \b
        Examples:
          mlxctl service install
          mlxctl service status
          mlxctl service uninstall
        """

    platform_option = click.option(
        "--platform",
        type=PLATFORM_CHOICE,
        help="Service manager (default: launchd on macOS, systemd on Linux).",
    )
    dry_run = click.option("--dry-run", is_flag=True, help="Print what would be done; do nothing.")
    group.command("install")(
        click.argument("path", required=False, type=click.Path(path_type=Path))(
            dry_run(platform_option(output_option(install)))
        )
    )
    group.command("uninstall")(dry_run(platform_option(output_option(uninstall))))
    group.command("status")(platform_option(output_option(status)))
