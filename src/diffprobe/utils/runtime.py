"""Device selection and seeding, shared by every command (never a hard-coded ``cuda``)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from diffprobe.errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; any other name is passed to ``torch.device``. A name torch does not
    know, or a CUDA device on a machine without one, is an :class:`~diffprobe.errors.InputError` naming it."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device {name!r}: not a device name torch knows (cpu, cuda, cuda:1, mps, auto)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: this machine has no CUDA device (use cpu or auto)")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def cuda_tf32(device: torch.device, enabled: bool) -> Iterator[None]:
    """Within the block, fp32 matmuls and cuDNN convolutions on CUDA may use TF32 tensor cores (``enabled``) or
    must not; the previous settings come back afterwards. A no-op on any other device type."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the precision API (allow_tf32 is deprecated)
        conv = torch.backends.cudnn.conv
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    saved_flags = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_flags


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously; a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """The best of 5 rounds of ten ``n x n`` matmuls in ``dtype`` on ``device``, FLOP/s (the device's practical
    peak, the denominator of an MFU)."""
    import time

    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * n**3 / best
