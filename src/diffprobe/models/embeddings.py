"""Embeddings for the WALT denoiser: noise level, class label, and space-time position."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily


def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sin/cos features of the real values ``x`` (any shape ``S``) -> ``(*S, dim)`` (``dim`` even)."""
    if dim % 2:
        raise ValueError(f"sinusoidal_embedding: dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (D/2,)
    args = x.float()[..., None] * freqs  # (*S, D/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (*S, D)


class TimestepEmbedder(nn.Module):
    """Noise level ``t`` (float, 0..1000, any shape ``S``) -> ``(*S, D)``: sinusoidal features, then an MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = sinusoidal_embedding(t, self.frequency_size)  # (*S, F)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # (*S, D)


class LabelEmbedder(nn.Module):
    """Class label ``(B,)`` -> ``(B, D)``; index ``num_classes`` is the null class used for classifier-free guidance.

    Label dropout is not done here (it needs the training generator): the diffusion loss replaces labels by
    ``num_classes`` itself.
    """

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"LabelEmbedder: labels must be an integer tensor, got dtype {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(f"LabelEmbedder: labels must lie in [0, {self.num_classes}] ({self.num_classes} = null "
                             f"class), got range [{int(y.min())}, {int(y.max())}]")
        return self.table(y)  # (B, D)


def spacetime_sincos(frames: int, height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed factorised position code ``(T, H, W, D)``: sincos(t) over all ``D`` channels plus sincos(h) on the
    first ``D/2`` and sincos(w) on the last ``D/2`` (so time and space are added, not concatenated)."""
    if dim % 4:
        raise ValueError(f"spacetime_sincos: dim must be divisible by 4, got {dim}")
    t = sinusoidal_embedding(torch.arange(frames), dim)  # (T, D)
    h = sinusoidal_embedding(torch.arange(height), dim // 2)  # (H, D/2)
    w = sinusoidal_embedding(torch.arange(width), dim // 2)  # (W, D/2)
    space = torch.cat([h[:, None, :].expand(height, width, -1), w[None, :, :].expand(height, width, -1)], dim=-1)
    return t[:, None, None, :] + space[None]  # (T, H, W, D)


class SpaceTimePosEmbed(nn.Module):
    """Additive position embedding for a token grid ``(B, T, H, W, D)``.

    ``sinusoidal``: fixed :func:`spacetime_sincos`, any grid size. ``learned``: a trainable temporal table
    ``(max_frames, D)`` plus a spatial table ``(max_h, max_w, D)``, initialised to the sincos code; smaller grids
    use the leading entries (so a 1-frame image uses the code of frame 0 of a clip).
    """

    def __init__(self, kind: str, dim: int, max_frames: int, max_height: int, max_width: int) -> None:
        super().__init__()
        self.kind = kind
        self.dim = dim
        self.max_grid = (max_frames, max_height, max_width)
        if kind == "learned":
            t = sinusoidal_embedding(torch.arange(max_frames), dim)  # (T_max, D)
            space = spacetime_sincos(1, max_height, max_width, dim)[0] - t[0]  # (H_max, W_max, D), spatial part only
            self.time = nn.Parameter(t)
            self.space = nn.Parameter(space)
        elif kind != "sinusoidal":
            raise ValueError(f"SpaceTimePosEmbed: kind must be 'learned' or 'sinusoidal', got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, t, h, w, d = x.shape
        if self.kind == "sinusoidal":
            return x + _sincos_table(t, h, w, d, x.device, x.dtype)
        if t > self.max_grid[0] or h > self.max_grid[1] or w > self.max_grid[2]:
            raise ValueError(f"SpaceTimePosEmbed: token grid (T, H, W) = {(t, h, w)} exceeds the learned table "
                             f"{self.max_grid}; raise max_latent_frames / max_latent_size")
        pos = self.time[:t, None, None, :] + self.space[None, :h, :w, :]  # (T, H, W, D)
        return x + pos


@functools.lru_cache(maxsize=32)
def _sincos_table(t: int, h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`spacetime_sincos` made once per grid, device and dtype (built on the CPU; copying it to an accelerator
    at every forward would make the host wait for the copy at every training step)."""
    # a plain tensor, whichever mode the first call came from (inference, or the fake tensors of backbone shapes:
    # a cached fake table would reach every later real forward)
    with torch.inference_mode(False), torch.no_grad(), unset_fake_temporarily():
        return spacetime_sincos(t, h, w, dim).to(device=device, dtype=dtype)  # (T, H, W, D)
