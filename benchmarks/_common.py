"""What the benchmarks share: synchronising a device around a timing, and the device's measured fp32 matmul peak."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously; a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gflops(device: torch.device) -> float:
    """Best of 5 fp32 1024^3 matmuls, GFLOP/s (the CPU's peak for MFU)."""
    a, b = torch.randn(1024, 1024, device=device), torch.randn(1024, 1024, device=device)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * 1024**3 / best / 1e9
