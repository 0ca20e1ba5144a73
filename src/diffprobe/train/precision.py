"""Numerical precision of the forward pass: fp32, or bf16 autocast where the device supports it."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch


def check_precision(precision: Literal["fp32", "bf16"], device: torch.device) -> None:
    """Raise ``ValueError`` if ``precision`` cannot run on ``device``."""
    if precision == "fp32":
        return
    if precision != "bf16":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision 'bf16': autocast is not available on device type {device.type!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16': the GPU {torch.cuda.get_device_name(device)} does not support bf16; "
                         f"use precision=fp32")


def autocast(precision: Literal["fp32", "bf16"], device: torch.device) -> contextlib.AbstractContextManager:
    """A context manager running its body in ``precision`` (a no-op for fp32)."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
