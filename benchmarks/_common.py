"""What the benchmarks share: synchronising a device around a timing, the device's measured fp32 matmul peak, and
the CPU's name."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from diffprobe.utils.runtime import matmul_peak
from diffprobe.utils.runtime import synchronize as sync

__all__ = ["cpu_name", "peak_gflops", "sync"]


def peak_gflops(device: torch.device) -> float:
    """Best of 5 fp32 1024^3 matmuls, GFLOP/s (the CPU's peak for MFU)."""
    return matmul_peak(device, torch.float32, 1024) / 1e9


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()
