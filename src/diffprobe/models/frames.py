"""Conversions between uint8 video frames (the Clip contract) and the autoencoder's float input."""

from __future__ import annotations

import torch
from einops import rearrange


def frames_to_input(video: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``(B, T, H, W, 3)`` -> float ``(B, 3, T, H, W)`` in [-1, 1]."""
    if video.dtype != torch.uint8:
        raise ValueError(f"frames_to_input: expected uint8 frames, got dtype {video.dtype}")
    if video.ndim != 5 or video.shape[-1] != 3:
        raise ValueError(f"frames_to_input: expected shape (B, T, H, W, 3), got {tuple(video.shape)}")
    x = rearrange(video, "b t h w c -> b c t h w").float()  # (B, 3, T, H, W) in [0, 255]
    return x / 127.5 - 1.0


def output_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float ``(B, 3, T, H, W)`` (nominally in [-1, 1]; clamped) -> uint8 frames ``(B, T, H, W, 3)``."""
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"output_to_frames: expected shape (B, 3, T, H, W), got {tuple(x.shape)}")
    x = ((x.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)  # (B, 3, T, H, W)
    return rearrange(x, "b c t h w -> b t h w c")
