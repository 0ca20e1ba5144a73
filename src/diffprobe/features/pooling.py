"""Token pooling at extraction: a block's token grid averaged down to a smaller grid before it is cached.

``pool=HxW`` averages space to an H x W grid per feature frame; ``pool=TxHxW`` also averages time to T frames. Each
output token is the mean of the input tokens its cell covers (adaptive average pooling, so any grid size works; a
grid that divides evenly gives equal cells). The pooled grid is part of the feature key, so pooled and unpooled
features never share a cache entry, and the readouts read the pooled grid as they read any other.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from diffprobe.errors import InputError


@dataclasses.dataclass(frozen=True)
class Pool:
    """The grid features are pooled to: ``frames`` (None: every feature frame kept) x ``height`` x ``width``."""

    frames: int | None
    height: int
    width: int

    @classmethod
    def parse(cls, text: str) -> Pool:
        """``"HxW"`` or ``"TxHxW"`` (positive integers); anything else is an error naming the text."""
        parts = text.lower().split("x")
        if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise InputError(f"pool {text!r}: expected HxW or TxHxW in tokens, e.g. 4x4 or 2x4x4")
        sizes = [int(p) for p in parts]
        return cls(None, *sizes) if len(sizes) == 2 else cls(*sizes)

    def __str__(self) -> str:
        return "x".join(str(n) for n in (self.frames, self.height, self.width) if n is not None)

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A clip's pooled feature shape ``(T', height, width, C)`` from ``(T_f, H_f, W_f, C)``; a grid smaller than
        the pooled one is an error (pooling only averages)."""
        t, h, w, c = shape
        frames = t if self.frames is None else self.frames
        if frames > t or self.height > h or self.width > w:
            raise InputError(f"pool {self}: the features' grid is {t}x{h}x{w}; pooling can only make it smaller")
        return frames, self.height, self.width, c

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """``(n, T_f, H_f, W_f, C)`` -> ``(n, T', height, width, C)`` (see :meth:`shape`)."""
        frames, height, width, _ = self.shape(tuple(feats.shape[1:]))
        x = feats.permute(0, 4, 1, 2, 3).float()  # (n, C, T_f, H_f, W_f)
        pooled = F.adaptive_avg_pool3d(x, (frames, height, width))  # (n, C, T', h, w)
        return pooled.permute(0, 2, 3, 4, 1).to(feats.dtype)  # (n, T', h, w, C)
