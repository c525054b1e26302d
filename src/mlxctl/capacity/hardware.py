"""What machine this is: chip, memory, GPU cores and memory bandwidth.

Detection runs a few commands (``sysctl``, ``system_profiler``, ``nvidia-smi``) and
reads ``/proc`` through two injectable functions, so tests feed recorded outputs.
Everything else here is pure parsing and table lookup.

Bandwidth figures are Apple's published numbers (see ``docs/memory.md``); the ones
Apple did not publish for a binned chip are marked as estimates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

GIB = 1024**3
Accelerator = Literal["metal", "cuda", "cpu"]

# (command argv) -> its stdout, or None when the command is missing or fails.
Runner = Callable[[Sequence[str]], str | None]
# (path) -> its text, or None when it cannot be read.
FileReader = Callable[[str], str | None]


@dataclass(frozen=True)
class ChipBandwidth:
    """Memory bandwidth of one Apple chip configuration."""

    gbps: float
    estimated: bool
    note: str = ""


@dataclass(frozen=True)
class _Chip:
    name: str
    gpu_cores: tuple[int, ...]  # every GPU configuration Apple sells, smallest first
    gbps: float
    # GPU core count -> bandwidth, for binned chips whose memory bus is narrower.
    binned: tuple[tuple[int, float, bool], ...] = ()  # (gpu cores, GB/s, estimated)
    note: str = ""


# Apple's published memory bandwidth per chip. Binned parts (fewer GPU cores) share the
# full chip's bandwidth unless listed in ``binned``.
_CHIPS: tuple[_Chip, ...] = (
    _Chip("M1", (7, 8), 68.25),
    _Chip("M1 Pro", (14, 16), 200),
    _Chip("M1 Max", (24, 32), 400),
    _Chip("M1 Ultra", (48, 64), 800),
    _Chip("M2", (8, 10), 100),
    _Chip("M2 Pro", (16, 19), 200),
    _Chip("M2 Max", (30, 38), 400),
    _Chip("M2 Ultra", (60, 76), 800),
    _Chip("M3", (8, 10), 100),
    _Chip("M3 Pro", (14, 18), 150),
    _Chip("M3 Max", (30, 40), 400, binned=((30, 300, False),)),
    _Chip("M3 Ultra", (60, 80), 819, note="Apple publishes 819 GB/s (often rounded to 800)"),
    _Chip("M4", (8, 10), 120),
    _Chip("M4 Pro", (16, 20), 273),
    _Chip("M4 Max", (32, 40), 546, binned=((32, 410, False),)),
    _Chip("M5", (8, 10), 153),
    _Chip(
        "M5 Pro",
        (16, 20),
        307,
        binned=((16, 307, True),),
        note="Apple publishes 307 GB/s; the 16-core GPU part is assumed to match (as M4 Pro did)",
    ),
    _Chip(
        "M5 Max",
        (32, 40),
        614,
        binned=((32, 460, True),),
        note=(
            "Apple publishes 614 GB/s for the 40-core GPU; the 32-core part's 460 GB/s is "
            "an estimate (3/4 of the bus, as the binned M3 Max and M4 Max have)"
        ),
    ),
)
CHIP_NAMES: tuple[str, ...] = tuple(c.name for c in _CHIPS)


@dataclass(frozen=True)
class HardwareProfile:
    """One machine, as far as serving models is concerned."""

    chip: str
    memory_bytes: int
    gpu_cores: int | None
    bandwidth_gbps: float | None
    bandwidth_estimated: bool
    profile_id: str
    os: str
    accelerator: Accelerator
    cpu_cores: int | None = None
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    @property
    def model_memory_bytes(self) -> int:
        """Memory that models are loaded into: the GPU's on CUDA, unified memory otherwise."""
        if self.accelerator == "cuda" and self.gpu_memory_bytes:
            return self.gpu_memory_bytes
        return self.memory_bytes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["memory_gib"] = round(self.memory_gib, 1)
        return data


def chip_bandwidth(chip: str, gpu_cores: int | None) -> ChipBandwidth | None:
    """Bandwidth of ``chip`` ("M4 Pro", "Apple M4 Pro") with ``gpu_cores``; None if unknown."""
    spec = _chip(chip)
    if spec is None:
        return None
    for cores, gbps, estimated in spec.binned:
        if gpu_cores == cores:
            return ChipBandwidth(gbps, estimated, spec.note)
    if gpu_cores is None and spec.binned:
        return ChipBandwidth(
            spec.gbps, True, f"GPU core count unknown: assumed the full {spec.name}"
        )
    return ChipBandwidth(spec.gbps, False, spec.note)


def bandwidth_for_profile(profile_id: str) -> ChipBandwidth | None:
    """Bandwidth for a profile id like ``m4-pro-64`` (the full chip of that name)."""
    match = re.fullmatch(r"m(\d)(?:-(pro|max|ultra))?-\d+", profile_id)
    if match is None:
        return None
    name = f"M{match.group(1)}" + (f" {match.group(2).title()}" if match.group(2) else "")
    spec = _chip(name)
    return None if spec is None else ChipBandwidth(spec.gbps, False, spec.note)


def profile_id_for(chip: str, memory_bytes: int) -> str:
    """``Apple M4 Pro`` with 48 GiB -> ``m4-pro-48``."""
    slug = re.sub(r"[^a-z0-9]+", "-", chip.lower().removeprefix("apple ")).strip("-")
    return f"{slug}-{round(memory_bytes / GIB)}"


def parse_macos(brand: str, memsize: str, displays: str | None) -> HardwareProfile:
    """A profile from ``sysctl -n machdep.cpu.brand_string``, ``hw.memsize`` and
    ``system_profiler SPDisplaysDataType``; pure."""
    chip = brand.strip()
    memory = int(memsize.strip())
    cores_match = re.search(r"Total Number of Cores:\s*(\d+)", displays or "")
    gpu_cores = int(cores_match.group(1)) if cores_match else None
    notes: list[str] = []
    apple = re.match(r"Apple (M\d+(?: (?:Pro|Max|Ultra))?)\b", chip)
    if apple is None:
        notes.append(f"{chip!r} is not Apple silicon: MLX needs an M-series chip")
        return HardwareProfile(
            chip=chip, memory_bytes=memory, gpu_cores=gpu_cores, bandwidth_gbps=None,
            bandwidth_estimated=True, profile_id=profile_id_for("mac", memory), os="macos",
            accelerator="cpu", notes=tuple(notes),
        )  # fmt: skip
    bandwidth = chip_bandwidth(apple.group(1), gpu_cores)
    spec = _chip(apple.group(1))
    if spec is not None and gpu_cores is not None and gpu_cores not in spec.gpu_cores:
        notes.append(f"{gpu_cores} GPU cores is not a {spec.name} configuration on record")
    if bandwidth is None:
        notes.append(f"no bandwidth on record for {chip}")
    elif bandwidth.note:
        notes.append(bandwidth.note)
    return HardwareProfile(
        chip=chip,
        memory_bytes=memory,
        gpu_cores=gpu_cores,
        bandwidth_gbps=bandwidth.gbps if bandwidth else None,
        bandwidth_estimated=bandwidth.estimated if bandwidth else True,
        profile_id=profile_id_for(apple.group(1), memory),
        os="macos",
        accelerator="metal",
        notes=tuple(notes),
    )


def parse_linux(meminfo: str, cpuinfo: str | None, nvidia_smi: str | None) -> HardwareProfile:
    """A profile from ``/proc/meminfo``, ``/proc/cpuinfo`` and, when an NVIDIA GPU is
    present, ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``;
    pure."""
    total = re.search(r"^MemTotal:\s*(\d+)\s*kB", meminfo, re.MULTILINE)
    if total is None:
        raise ValueError("MemTotal missing from /proc/meminfo")
    memory = int(total.group(1)) * 1024
    text = cpuinfo or ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    cpu = model.group(1).strip() if model else "unknown CPU"
    cores = len(re.findall(r"^processor\s*:", text, re.MULTILINE)) or None
    gpus = _nvidia_gpus(nvidia_smi)
    if gpus:
        name, gpu_memory = gpus[0]
        notes = (f"{len(gpus)} NVIDIA GPUs; models load on the first",) if len(gpus) > 1 else ()
        return HardwareProfile(
            chip=cpu, memory_bytes=memory, gpu_cores=None, bandwidth_gbps=None,
            bandwidth_estimated=True, profile_id=f"linux-cuda-{round(gpu_memory / GIB)}",
            os="linux", accelerator="cuda", cpu_cores=cores, gpu_name=name,
            gpu_memory_bytes=gpu_memory, notes=notes,
        )  # fmt: skip
    return HardwareProfile(
        chip=cpu, memory_bytes=memory, gpu_cores=None, bandwidth_gbps=None,
        bandwidth_estimated=True, profile_id=f"linux-cpu-{round(memory / GIB)}", os="linux",
        accelerator="cpu", cpu_cores=cores,
    )  # fmt: skip


def profile_for_memory(memory_gib: float) -> HardwareProfile:
    """A stated machine (``mlxctl init --memory 24``): Apple's "24GB" is 24 GiB."""
    memory = int(memory_gib * GIB)
    return HardwareProfile(
        chip="unspecified Apple silicon", memory_bytes=memory, gpu_cores=None,
        bandwidth_gbps=None, bandwidth_estimated=True, profile_id=f"mac-{round(memory_gib)}",
        os="macos", accelerator="metal", notes=("memory stated on the command line",),
    )  # fmt: skip


def _chip(name: str) -> _Chip | None:
    wanted = name.strip().removeprefix("Apple ").strip()
    return next((c for c in _CHIPS if c.name == wanted), None)


def _nvidia_gpus(output: str | None) -> list[tuple[str, int]]:
    gpus = []
    for line in (output or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[1].isdigit():
            gpus.append((parts[0], int(parts[1]) * 1024 * 1024))  # MiB
    return gpus
