"""Query encoders: each turns a task's question into readout queries ``(B, Q, D)``.

Each encoder also states ``out_dim``, the numbers the readout head must output per query for its task.
Coordinates given to encoders are normalised to [0, 1] (see :mod:`diffprobe.readouts.coords`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffprobe.readouts.config import ReadoutConfig
from diffprobe.readouts.coords import normalise_time, patch_centres

POSE_DIM = 9  # 6D rotation + 3D translation


def fourier_encode(coords: Tensor, bands: int) -> Tensor:
    """``(..., n)`` coordinates in [0, 1] -> ``(..., n * (1 + 2 * bands))``: raw values, sin/cos at pi * 2^k."""
    freqs = math.pi * 2.0 ** torch.arange(bands, dtype=coords.dtype, device=coords.device)  # (bands,)
    angles = coords[..., None] * freqs  # (..., n, bands)
    enc = torch.cat([coords[..., None], angles.sin(), angles.cos()], dim=-1)  # (..., n, 1 + 2*bands)
    return enc.flatten(-2)


class CoordEncoder(nn.Module):
    """Fourier features of ``n`` normalised coordinates, then a two-layer MLP to the readout width."""

    def __init__(self, num_coords: int, cfg: ReadoutConfig) -> None:
        super().__init__()
        self.bands = cfg.fourier_bands
        in_dim = num_coords * (1 + 2 * cfg.fourier_bands)
        self.mlp = nn.Sequential(nn.Linear(in_dim, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.width))

    def forward(self, coords: Tensor) -> Tensor:
        """``(..., n)`` -> ``(..., D)``."""
        return self.mlp(fourier_encode(coords, self.bands))


class LearnedQueries(nn.Module):
    """``cfg.num_queries`` learned tokens, each mapped to ``num_classes`` logits (classification, action)."""

    def __init__(self, cfg: ReadoutConfig, num_classes: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(cfg.num_queries, cfg.width) * 0.02)
        self.out_dim = num_classes

    def forward(self, batch: int) -> Tensor:
        """-> ``(B, num_queries, D)``."""
        return self.tokens.expand(batch, -1, -1)


class PatchQueries(nn.Module):
    """One query per output patch of a ``frames x height x width`` map, encoded by its centre ``(t, y, x)``.

    The head outputs the ``patch x patch`` values of its patch (depth); reassemble with ``patches_to_map``.
    """

    def __init__(self, cfg: ReadoutConfig, frames: int, height: int, width: int, patch: int) -> None:
        super().__init__()
        self.register_buffer("centres", patch_centres(frames, height, width, patch), persistent=False)  # (Q, 3)
        self.encoder = CoordEncoder(3, cfg)
        self.out_dim = patch * patch

    def forward(self, batch: int) -> Tensor:
        """-> ``(B, T * H/p * W/p, D)``."""
        return self.encoder(self.centres).expand(batch, -1, -1)


class FrameQueries(nn.Module):
    """One query per frame, encoded by its normalised frame index; the head outputs a 6D rotation and a translation."""

    def __init__(self, cfg: ReadoutConfig, frames: int) -> None:
        super().__init__()
        t = normalise_time(torch.arange(frames, dtype=torch.float32), frames)[:, None]  # (T, 1)
        self.register_buffer("times", t, persistent=False)
        self.encoder = CoordEncoder(1, cfg)
        self.out_dim = POSE_DIM

    def forward(self, batch: int) -> Tensor:
        """-> ``(B, T, D)``."""
        return self.encoder(self.times).expand(batch, -1, -1)


class PointQueries(nn.Module):
    """One query per query point ``(t, y, x)``; the head outputs ``(x, y, visibility logit)`` for each of ``frames``."""

    def __init__(self, cfg: ReadoutConfig, frames: int) -> None:
        super().__init__()
        self.encoder = CoordEncoder(3, cfg)
        self.out_dim = 3 * frames

    def forward(self, points: Tensor) -> Tensor:
        """``points (B, N, 3)`` normalised ``(t, y, x)`` -> ``(B, N, D)``."""
        return self.encoder(points)


class BoxQueries(nn.Module):
    """One query per object, encoded from its box ``(x0, y0, x1, y1)`` on the frame ``t`` where it is given;
    the head outputs a box for each of ``frames``."""

    def __init__(self, cfg: ReadoutConfig, frames: int) -> None:
        super().__init__()
        self.encoder = CoordEncoder(5, cfg)
        self.out_dim = 4 * frames

    def forward(self, boxes: Tensor, t: Tensor) -> Tensor:
        """``boxes (B, K, 4)`` normalised, ``t (B, K)`` normalised frame of the box -> ``(B, K, D)``."""
        return self.encoder(torch.cat([t[..., None], boxes], dim=-1))  # (B, K, D)
