"""Detecting this machine: the only part of :mod:`mlxctl.capacity` that acts (commands, files).

The parsing of what the commands print is pure and lives in :mod:`mlxctl.capacity.hardware`.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlxctl.capacity.hardware import (
    FileReader,
    HardwareProfile,
    Runner,
    parse_linux,
    parse_macos,
)


def detect_hardware(
    run: Runner | None = None,
    read_file: FileReader | None = None,
    system: str | None = None,
) -> HardwareProfile:
    """Detect this machine; ``run`` and ``read_file`` are the only effects (inject fakes)."""
    runner = run or run_command
    reader = read_file or read_text
    if system is None:
        import platform

        system = platform.system()
    if system == "Darwin":
        brand = runner(["sysctl", "-n", "machdep.cpu.brand_string"])
        memsize = runner(["sysctl", "-n", "hw.memsize"])
        if not brand or not memsize:
            raise OSError("sysctl did not report the chip and memory size")
        return parse_macos(brand, memsize, runner(["system_profiler", "SPDisplaysDataType"]))
    meminfo = reader("/proc/meminfo")
    if meminfo is None:
        raise OSError(f"cannot read /proc/meminfo on {system}")
    nvidia = runner(
        ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    )
    return parse_linux(meminfo, reader("/proc/cpuinfo"), nvidia)


def run_command(argv: Sequence[str]) -> str | None:
    """Run a short query command; its stdout, or None if it is missing or fails."""
    import subprocess

    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None
