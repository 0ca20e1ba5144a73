"""Coordinate conventions of the readouts: everything a query encoder sees or a head predicts is in [0, 1].

Pixel coordinates follow TAP-Vid (pixel centres at +0.5, so the image spans ``[0, W] x [0, H]``); they are divided
by the image size. A frame index ``t`` of a ``T``-frame clip maps to ``t / (T - 1)`` (0 for a single frame), so the
first and last frames are 0 and 1 whatever the frame count. Query points are ``(t, y, x)``, tracks ``(x, y)``,
boxes ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalise_time(t: Tensor, frames: int) -> Tensor:
    """Frame indices ``t`` of a ``frames``-frame clip -> [0, 1]."""
    return t / (frames - 1) if frames > 1 else torch.zeros_like(t)


def normalise_query_points(points: Tensor, frames: int, height: int, width: int) -> Tensor:
    """Pixel query points ``(..., 3)`` as ``(t, y, x)`` -> normalised ``(t, y, x)``."""
    t, y, x = points.unbind(-1)
    return torch.stack([normalise_time(t, frames), y / height, x / width], dim=-1)


def normalise_xy(xy: Tensor, height: int, width: int) -> Tensor:
    """Pixel ``(..., 2)`` as ``(x, y)`` (tracks) -> [0, 1]."""
    return xy / xy.new_tensor([width, height])


def denormalise_xy(xy: Tensor, height: int, width: int) -> Tensor:
    """Normalised ``(..., 2)`` as ``(x, y)`` -> pixels."""
    return xy * xy.new_tensor([width, height])


def normalise_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Pixel boxes ``(..., 4)`` as ``(x0, y0, x1, y1)`` -> [0, 1]."""
    return boxes / boxes.new_tensor([width, height, width, height])


def denormalise_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Normalised boxes ``(..., 4)`` -> pixels."""
    return boxes * boxes.new_tensor([width, height, width, height])


def patch_centres(frames: int, height: int, width: int, patch: int) -> Tensor:
    """Normalised ``(t, y, x)`` of every output patch, ``(T * H/p * W/p, 3)``, ordered frame, row, column."""
    if height % patch or width % patch:
        raise ValueError(f"output size {height}x{width} is not divisible by patch {patch}")
    h, w = height // patch, width // patch
    t = normalise_time(torch.arange(frames, dtype=torch.float32), frames)  # (T,)
    y = (torch.arange(h, dtype=torch.float32) + 0.5) / h  # (h,)
    x = (torch.arange(w, dtype=torch.float32) + 0.5) / w  # (w,)
    grid = torch.meshgrid(t, y, x, indexing="ij")  # 3 x (T, h, w)
    return torch.stack(grid, dim=-1).reshape(-1, 3)  # (T*h*w, 3)
