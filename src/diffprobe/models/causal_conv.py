"""Causal 3D convolution layers for the video tokenizer (after MAGVIT-v2).

Every layer here is causal in time: the output at frame ``i`` depends only on input frames ``<= i``. Time is
padded on the past side only, normalisation is computed per frame, and temporal up/downsampling keep frame 0
on its own, so the first frame of a clip is encoded exactly as a 1-frame video (an image) would be.

Tensors are channels-first video: ``(B, C, T, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class CausalConv3d(nn.Module):
    """3D convolution padded causally in time (``k_t - 1`` frames of the past, zeros) and symmetrically in space.

    With ``stride_t = 2`` and ``k_t = 3`` a clip of ``1 + 2k`` frames gives ``1 + k`` frames; output frame 0 sees
    only input frame 0 (its past is padding).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"CausalConv3d: kernel_size must be odd, got {kernel_size}")
        self.time_pad = kernel_size - 1
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(0, kernel_size // 2, kernel_size // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T, H, W) -> pad (W_left, W_right, H_top, H_bottom, T_past, T_future)
        x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0))
        return self.conv(x)  # (B, C_out, T_out, H_out, W_out)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are taken over one frame at a time (a 3D GroupNorm would mix frames and leak
    the future into the past)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = super().forward(rearrange(x, "b c t h w -> (b t) c h w"))  # (B*T, C, H, W)
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


def _norm(channels: int) -> FrameGroupNorm:
    return FrameGroupNorm(num_groups=min(32, channels // 4) or 1, num_channels=channels, eps=1e-6)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: (norm, SiLU, causal conv) x 2, with a 1x1x1 skip projection when widths differ."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = _norm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, T, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, T, H, W)
        return self.skip(x) + h


class Downsample3d(nn.Module):
    """Strided causal conv: 2x in space, and 2x in time when ``temporal`` (``1 + 2k`` frames -> ``1 + k``)."""

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(channels, channels, stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, T', H/2, W/2)


class Upsample3d(nn.Module):
    """Inverse of :class:`Downsample3d`: 2x in space (nearest, then conv) and, when ``temporal``, 2x in time by
    depth-to-time (a causal conv makes 2 frames per frame; the first extra frame is dropped so ``1 + k`` frames
    become ``1 + 2k`` and frame 0 still comes from latent frame 0 alone)."""

    def __init__(self, channels: int, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        if temporal:
            self.time_conv = CausalConv3d(channels, 2 * channels)
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal:
            x = self.time_conv(x)  # (B, 2C, T, H, W)
            x = rearrange(x, "b (r c) t h w -> b c (t r) h w", r=2)[:, :, 1:]  # (B, C, 2T-1, H, W)
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # (B, C, T, 2H, 2W)
        return self.conv(x)
