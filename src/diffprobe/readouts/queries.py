"""Query encoders: each turns a task's question into readout queries ``(B, Q, D)``.

Each encoder also states ``out_dim``, the numbers the readout head must output per query for its task.
Coordinates given to encoders are normalised to [0, 1] (see :mod:`diffprobe.readouts.coords`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
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
    """One query per frame, encoded by its normalised frame index; the head outputs a 6D rotation and a translation
    (camera pose), and the tracking encoders add it to say which frame each query asks about."""

    def __init__(self, cfg: ReadoutConfig, frames: int) -> None:
        super().__init__()
        t = normalise_time(torch.arange(frames, dtype=torch.float32), frames)[:, None]  # (T, 1)
        self.register_buffer("times", t, persistent=False)
        self.encoder = CoordEncoder(1, cfg)
        self.out_dim = POSE_DIM

    def forward(self, batch: int) -> Tensor:
        """-> ``(B, T, D)``."""
        return self.encoder(self.times).expand(batch, -1, -1)


def sample_tokens(tokens: Tensor, coords: Tensor) -> Tensor:
    """Trilinear samples of a token grid ``(B, T_f, H_f, W_f, D)`` at normalised ``(t, y, x)`` ``coords (B, N, 3)``
    -> ``(B, N, D)``. Space spans the frame (token centres at (i + 0.5) / H_f); time maps the first and last frame to
    the first and last token frame. Points outside the grid take the nearest border value."""
    _, t_f, _, _, _ = tokens.shape
    t, y, x = coords.unbind(-1)  # (B, N) each
    gt = (2 * t * (t_f - 1) + 1) / t_f - 1  # token-frame index t * (T_f - 1) in align_corners=False units
    grid = torch.stack([2 * x - 1, 2 * y - 1, gt], dim=-1)[:, :, None, None]  # (B, N, 1, 1, 3) as (x, y, t)
    volume = rearrange(tokens, "b t h w d -> b d t h w")
    out = F.grid_sample(volume, grid.to(volume.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return rearrange(out, "b d n 1 1 -> b n d")


class _FollowQueries(nn.Module):
    """Shared by the tracking encoders: what to follow (coordinates + sampled appearance), asked once per frame."""

    reads_features = True

    def __init__(self, cfg: ReadoutConfig, frames: int, num_coords: int, out_dim: int) -> None:
        super().__init__()
        self.encoder = CoordEncoder(num_coords, cfg)
        self.frames = FrameQueries(cfg, frames)
        self.appearance = nn.Linear(cfg.width, cfg.width)
        self.out_dim = out_dim

    def _every_frame(self, coords: Tensor, appearance: Tensor) -> Tensor:
        """``coords (B, K, num_coords)``, sampled ``appearance (B, K, D)`` -> ``(B, K * T, D)``, ordered item-major."""
        item = self.encoder(coords) + self.appearance(appearance)  # (B, K, D)
        frame = self.frames(coords.shape[0])  # (B, T, D)
        return rearrange(item[:, :, None] + frame[:, None], "b k t d -> b (k t) d")


class PointQueries(_FollowQueries):
    """One query per (query point, frame): the point's ``(t, y, x)`` encoding, the feature sampled there (what to
    follow) and the target frame's encoding; the head outputs ``(x, y, visibility logit)`` in that frame."""

    def __init__(self, cfg: ReadoutConfig, frames: int) -> None:
        super().__init__(cfg, frames, num_coords=3, out_dim=3)

    def forward(self, tokens: Tensor, points: Tensor) -> Tensor:
        """``tokens (B, T_f, H_f, W_f, D)``, ``points (B, N, 3)`` normalised ``(t, y, x)`` -> ``(B, N * T, D)``,
        ordered point-major."""
        return self._every_frame(points, sample_tokens(tokens, points))


class BoxQueries(_FollowQueries):
    """One query per (object, frame): its box ``(x0, y0, x1, y1)`` on the frame ``t`` where it is given, the mean
    feature of a 3 x 3 lattice inside that box, and the target frame's encoding; the head outputs the box there."""

    def __init__(self, cfg: ReadoutConfig, frames: int) -> None:
        super().__init__(cfg, frames, num_coords=5, out_dim=4)

    def forward(self, tokens: Tensor, boxes: Tensor, t: Tensor) -> Tensor:
        """``tokens (B, T_f, H_f, W_f, D)``, ``boxes (B, K, 4)`` normalised, ``t (B, K)`` normalised frame of the
        box -> ``(B, K * T, D)``, ordered object-major."""
        b, k, _ = boxes.shape
        frac = (torch.arange(3, dtype=boxes.dtype, device=boxes.device) + 0.5) / 3  # (3,)
        ys = boxes[..., 1, None] + frac * (boxes[..., 3, None] - boxes[..., 1, None])  # (B, K, 3)
        xs = boxes[..., 0, None] + frac * (boxes[..., 2, None] - boxes[..., 0, None])  # (B, K, 3)
        lattice = torch.stack(torch.broadcast_tensors(t[..., None, None], ys[..., :, None], xs[..., None, :]), -1)
        feats = sample_tokens(tokens, lattice.reshape(b, k * 9, 3)).reshape(b, k, 9, -1).mean(2)  # (B, K, D)
        return self._every_frame(torch.cat([t[..., None], boxes], dim=-1), feats)
