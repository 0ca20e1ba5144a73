"""Turn readout head outputs ``(B, Q, out_dim)`` into task predictions."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from diffprobe.readouts.geometry import rotation_6d_to_matrix


def class_logits(out: Tensor) -> Tensor:
    """Learned-query logits ``(B, Q, K)`` -> ``(B, K)``, averaged over the queries."""
    return out.mean(dim=1)


def logits_to_classes(logits: Tensor) -> Tensor:
    """``(..., K)`` logits -> ``(...)`` class indices."""
    return logits.argmax(dim=-1)


def patches_to_map(out: Tensor, frames: int, height: int, width: int, patch: int) -> Tensor:
    """Patch-query outputs ``(B, T * H/p * W/p, p * p)`` -> a dense map ``(B, T, H, W)``.

    For depth the map is log-depth (the losses' input); ``exp`` gives depth."""
    return rearrange(
        out, "b (t h w) (p q) -> b t (h p) (w q)", t=frames, h=height // patch, w=width // patch, p=patch, q=patch
    )


def head_to_pose(out: Tensor) -> tuple[Tensor, Tensor]:
    """Frame-query outputs ``(B, T, 9)`` -> rotations ``(B, T, 3, 3)`` and translations ``(B, T, 3)``."""
    return rotation_6d_to_matrix(out[..., :6]), out[..., 6:]


def head_to_tracks(out: Tensor, frames: int) -> tuple[Tensor, Tensor]:
    """Point-query outputs ``(B, N * T, 3)`` (point-major) -> normalised ``(x, y)`` tracks ``(B, N, T, 2)`` and
    visibility logits ``(B, N, T)``."""
    out = rearrange(out, "b (n t) c -> b n t c", t=frames, c=3)
    return out[..., :2], out[..., 2]


def head_to_boxes(out: Tensor, frames: int) -> Tensor:
    """Box-query outputs ``(B, K * T, 4)`` (object-major) -> normalised boxes ``(B, K, T, 4)`` with ``x0 <= x1`` and
    ``y0 <= y1``."""
    out = rearrange(out, "b (k t) c -> b k t c", t=frames, c=4)
    lo = torch.minimum(out[..., :2], out[..., 2:])  # (B, K, T, 2)
    hi = torch.maximum(out[..., :2], out[..., 2:])
    return torch.cat([lo, hi], dim=-1)
