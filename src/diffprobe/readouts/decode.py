"""Turn readout head outputs ``(B, Q, out_dim)`` into task predictions."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from diffprobe.readouts.geometry import matrix_to_rotation_6d, rotation_6d_to_matrix


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
    """Frame-query outputs ``(B, T, 9)`` -> rotations ``(B, T, 3, 3)`` and translations ``(B, T, 3)``.

    The head predicts the pose's offset from the identity (a zero output is "the camera did not move"), so an
    untrained head starts at the no-motion baseline instead of a degenerate 6D rotation."""
    eye = matrix_to_rotation_6d(torch.eye(3, dtype=out.dtype, device=out.device))  # (6,)
    return rotation_6d_to_matrix(out[..., :6] + eye), out[..., 6:]


def head_to_tracks(out: Tensor, frames: int, origin: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Point-query outputs ``(B, N * T, 3)`` (point-major) -> normalised ``(x, y)`` tracks ``(B, N, T, 2)`` and
    visibility logits ``(B, N, T)``. With ``origin (B, N, 2)`` (the query points' normalised ``(x, y)``) the head
    predicts each frame's displacement from it, so a zero output is the static-point baseline."""
    out = rearrange(out, "b (n t) c -> b n t c", t=frames, c=3)
    xy = out[..., :2] if origin is None else out[..., :2] + origin[:, :, None]
    return xy, out[..., 2]


def head_to_boxes(out: Tensor, frames: int, origin: Tensor | None = None) -> Tensor:
    """Box-query outputs ``(B, K * T, 4)`` (object-major) -> normalised boxes ``(B, K, T, 4)`` with ``x0 <= x1`` and
    ``y0 <= y1``. With ``origin (B, K, 4)`` (the given boxes, normalised) the head predicts each frame's offset from
    it, so a zero output copies the given box to every frame."""
    out = rearrange(out, "b (k t) c -> b k t c", t=frames, c=4)
    if origin is not None:
        out = out + origin[:, :, None]
    lo = torch.minimum(out[..., :2], out[..., 2:])  # (B, K, T, 2)
    hi = torch.maximum(out[..., :2], out[..., 2:])
    return torch.cat([lo, hi], dim=-1)
