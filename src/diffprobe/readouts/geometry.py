"""Rotation helpers for the camera-pose head: the continuous 6D representation (Zhou et al. 2019) and geodesics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rotation_6d_to_matrix(x: Tensor) -> Tensor:
    """``(..., 6)`` -> rotation matrices ``(..., 3, 3)`` by Gram-Schmidt; the 6 numbers are the first two columns."""
    a1, a2 = x[..., :3], x[..., 3:]  # (..., 3) each
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # (..., 3, 3), columns b1 b2 b3


def matrix_to_rotation_6d(rot: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` -> ``(..., 6)``: the first two columns, concatenated."""
    return torch.cat([rot[..., :, 0], rot[..., :, 1]], dim=-1)


def geodesic_angle(r1: Tensor, r2: Tensor, eps: float = 1e-6) -> Tensor:
    """Angle in radians of the rotation taking ``r1`` to ``r2``, ``(..., 3, 3)`` x2 -> ``(...)``."""
    cos = ((r1 * r2).sum((-2, -1)) - 1.0) / 2.0  # trace(r1^T r2) = sum of elementwise products
    return torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))

