"""Windowed multi-head self-attention over a space-time token grid (WALT's spatial and spatiotemporal windows).

Tokens ``(B, T, H, W, D)`` are cut into non-overlapping ``wt x wh x ww`` boxes with einops; each box attends
within itself through ``scaled_dot_product_attention`` (no masks over the full sequence). A spatial window is the
special case ``wt = 1`` (tokens of one frame). A window larger than the grid is clamped to the grid, so the same
module runs on 1-frame (image) inputs; a grid that the window does not divide is an error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def effective_window(grid: tuple[int, int, int], window: tuple[int, int, int]) -> tuple[int, int, int]:
    """Clamp ``window`` (wt, wh, ww) to ``grid`` (T, H, W); raise if the grid is not a whole number of windows."""
    clamped = tuple(min(w, g) for w, g in zip(window, grid, strict=True))
    if any(g % w for g, w in zip(grid, clamped, strict=True)):
        raise ValueError(f"window attention: token grid (T, H, W) = {tuple(grid)} is not divisible by the window "
                         f"{tuple(clamped)} (configured {tuple(window)}, clamped to the grid)")
    return clamped  # type: ignore[return-value]


class WindowAttention(nn.Module):
    """Multi-head self-attention within non-overlapping ``window = (wt, wh, ww)`` boxes of a token grid."""

    def __init__(self, dim: int, num_heads: int, window: tuple[int, int, int]) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = tuple(window)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, _ = x.shape  # (B, T, H, W, D)
        wt, wh, ww = effective_window((t, h, w), self.window)
        qkv = self.qkv(x)  # (B, T, H, W, 3D)
        # gather windows: each (batch, window) pair becomes one attention sequence of wt*wh*ww tokens
        qkv = rearrange(qkv, "b (nt wt) (nh wh) (nw ww) (k n d) -> k (b nt nh nw) n (wt wh ww) d",
                        wt=wt, wh=wh, ww=ww, k=3, n=self.num_heads)  # (3, B*nW, heads, L, d)
        q, k, v = qkv.unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)  # (B*nW, heads, L, d)
        o = rearrange(o, "(b nt nh nw) n (wt wh ww) d -> b (nt wt) (nh wh) (nw ww) (n d)",
                      b=b, nt=t // wt, nh=h // wh, wt=wt, wh=wh, ww=ww)  # (B, T, H, W, D)
        return self.proj(o)
