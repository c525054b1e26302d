"""Hardware detection from recorded command outputs: no real sysctl, no real /proc."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mlxctl.capacity.detect import detect_hardware
from mlxctl.capacity.hardware import (
    CHIP_NAMES,
    GIB,
    bandwidth_for_profile,
    chip_bandwidth,
    parse_linux,
    profile_for_memory,
)


def displays(cores: int, chip: str) -> str:
    return f"""Graphics/Displays:

    {chip}:

      Chipset Model: {chip}
      Type: GPU
      Bus: Built-In
      Total Number of Cores: {cores}
      Vendor: Apple (0x106b)
      Metal Support: Metal 3
      Displays:
        Color LCD:
          Display Type: Built-In Liquid Retina XDR Display
          Resolution: 3024 x 1964 Retina
"""


class FakeMac:
    """Answers the three commands like a real Mac would; records what was asked."""

    def __init__(self, chip: str, memory_gib: int, cores: int | None) -> None:
        self.chip, self.memory, self.cores = chip, memory_gib * GIB, cores
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        self.calls.append(tuple(argv))
        if tuple(argv) == ("sysctl", "-n", "machdep.cpu.brand_string"):
            return self.chip + "\n"
        if tuple(argv) == ("sysctl", "-n", "hw.memsize"):
            return f"{self.memory}\n"
        if tuple(argv) == ("system_profiler", "SPDisplaysDataType"):
            return displays(self.cores, self.chip) if self.cores else None
        return None


def no_files(path: str) -> str | None:
    raise AssertionError(f"macOS detection read {path}")


@pytest.mark.parametrize(
    ("chip", "mem", "cores", "profile", "gbps", "estimated"),
    [
        ("Apple M1", 8, 8, "m1-8", 68.25, False),
        ("Apple M1", 8, 7, "m1-8", 68.25, False),
        ("Apple M3 Max", 36, 30, "m3-max-36", 300, False),
        ("Apple M3 Max", 48, 40, "m3-max-48", 400, False),
        ("Apple M4 Pro", 48, 20, "m4-pro-48", 273, False),
        ("Apple M4 Max", 36, 32, "m4-max-36", 410, False),
        ("Apple M5", 16, 10, "m5-16", 153, False),
        ("Apple M5 Pro", 64, 20, "m5-pro-64", 307, False),
        ("Apple M5 Max", 128, 40, "m5-max-128", 614, False),
        ("Apple M5 Max", 36, 32, "m5-max-36", 460, True),
        ("Apple M3 Ultra", 96, 60, "m3-ultra-96", 819, False),
    ],
)
def test_macos_profiles(
    chip: str, mem: int, cores: int, profile: str, gbps: float, estimated: bool
) -> None:
    mac = FakeMac(chip, mem, cores)
    hw = detect_hardware(run=mac, read_file=no_files, system="Darwin")
    assert hw.chip == chip
    assert hw.memory_bytes == mem * GIB
    assert hw.gpu_cores == cores
    assert hw.profile_id == profile
    assert hw.bandwidth_gbps == gbps
    assert hw.bandwidth_estimated is estimated
    assert (hw.os, hw.accelerator) == ("macos", "metal")
    assert ("sysctl", "-n", "hw.memsize") in mac.calls


def test_unknown_gpu_core_count_of_a_binned_chip_is_an_estimate() -> None:
    hw = detect_hardware(run=FakeMac("Apple M3 Max", 64, None), read_file=no_files, system="Darwin")
    assert hw.gpu_cores is None
    assert (hw.bandwidth_gbps, hw.bandwidth_estimated) == (400, True)


def test_unusual_gpu_core_count_is_noted() -> None:
    hw = detect_hardware(run=FakeMac("Apple M4 Pro", 24, 12), read_file=no_files, system="Darwin")
    assert hw.bandwidth_gbps == 273
    assert "12 GPU cores is not a M4 Pro configuration" in hw.notes[0]


def test_intel_mac_is_not_apple_silicon() -> None:
    mac = FakeMac("Intel(R) Core(TM) i9-9980HK CPU @ 2.40GHz", 32, None)
    hw = detect_hardware(run=mac, read_file=no_files, system="Darwin")
    assert hw.accelerator == "cpu"
    assert hw.bandwidth_gbps is None
    assert "not Apple silicon" in hw.notes[0]


def test_sysctl_failure_is_an_os_error() -> None:
    with pytest.raises(OSError):
        detect_hardware(run=lambda argv: None, read_file=no_files, system="Darwin")


def test_every_m_chip_generation_has_pro_max_and_ultra_where_they_exist() -> None:
    for gen in ("M1", "M2", "M3", "M4", "M5"):
        assert gen in CHIP_NAMES
        assert f"{gen} Pro" in CHIP_NAMES
        assert f"{gen} Max" in CHIP_NAMES
    assert {"M1 Ultra", "M2 Ultra", "M3 Ultra"} <= set(CHIP_NAMES)
    assert "M4 Ultra" not in CHIP_NAMES  # never made (mlx-stack lists one)
    m5 = chip_bandwidth("Apple M5", 10)
    assert m5 is not None and m5.gbps == 153


def test_bandwidth_of_benchmark_profiles() -> None:
    pro = bandwidth_for_profile("m4-pro-64")
    assert pro is not None and pro.gbps == 273
    top = bandwidth_for_profile("m5-max-128")
    assert top is not None and top.gbps == 614
    assert bandwidth_for_profile("linux-cpu-32") is None


MEMINFO = """MemTotal:       32768000 kB
MemFree:        10000000 kB
MemAvailable:   20000000 kB
"""
CPUINFO = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7763 64-Core Processor

processor	: 1
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7763 64-Core Processor
"""


class FakeLinux:
    def __init__(self, nvidia: str | None) -> None:
        self.nvidia = nvidia
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str]) -> str | None:
        self.calls.append(tuple(argv))
        return self.nvidia if argv[0] == "nvidia-smi" else None

    @staticmethod
    def read(path: str) -> str | None:
        return {"/proc/meminfo": MEMINFO, "/proc/cpuinfo": CPUINFO}.get(path)


def test_linux_cpu() -> None:
    fake = FakeLinux(None)
    hw = detect_hardware(run=fake.run, read_file=fake.read, system="Linux")
    assert hw.accelerator == "cpu"
    assert hw.memory_bytes == 32768000 * 1024
    assert hw.chip == "AMD EPYC 7763 64-Core Processor"
    assert hw.cpu_cores == 2
    assert hw.profile_id == "linux-cpu-31"
    assert hw.model_memory_bytes == hw.memory_bytes
    assert fake.calls == [
        ("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits")
    ]


def test_linux_with_nvidia() -> None:
    fake = FakeLinux("NVIDIA GeForce RTX 4090, 24564\n")
    hw = detect_hardware(run=fake.run, read_file=fake.read, system="Linux")
    assert hw.accelerator == "cuda"
    assert hw.gpu_name == "NVIDIA GeForce RTX 4090"
    assert hw.gpu_memory_bytes == 24564 * 1024 * 1024
    assert hw.model_memory_bytes == hw.gpu_memory_bytes
    assert hw.profile_id == "linux-cuda-24"


def test_linux_with_two_gpus_uses_the_first() -> None:
    hw = parse_linux(
        MEMINFO, CPUINFO, "NVIDIA A100-SXM4-80GB, 81920\nNVIDIA A100-SXM4-80GB, 81920\n"
    )
    assert hw.gpu_memory_bytes == 80 * GIB
    assert "2 NVIDIA GPUs" in hw.notes[0]


def test_linux_without_meminfo_is_an_os_error() -> None:
    with pytest.raises(OSError):
        detect_hardware(run=lambda argv: None, read_file=lambda path: None, system="Linux")


def test_stated_memory_profile() -> None:
    hw = profile_for_memory(24)
    assert hw.memory_bytes == 24 * GIB
    assert hw.profile_id == "mac-24"
    assert hw.bandwidth_gbps is None
    assert hw.to_dict()["memory_gib"] == 24.0
