"""What the benchmarks share: synchronising a device around a timing, and the device's measured fp32 matmul peak."""

from __future__ import annotations

import torch

from diffprobe.utils.runtime import matmul_peak
from diffprobe.utils.runtime import synchronize as sync

__all__ = ["peak_gflops", "sync"]


def peak_gflops(device: torch.device) -> float:
    """Best of 5 fp32 1024^3 matmuls, GFLOP/s (the CPU's peak for MFU)."""
    return matmul_peak(device, torch.float32, 1024) / 1e9
