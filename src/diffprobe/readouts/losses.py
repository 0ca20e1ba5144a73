"""Task losses of the readouts. Every function returns a scalar; inputs are decoded head outputs
(see :mod:`diffprobe.readouts.decode`) in normalised coordinates (see :mod:`diffprobe.readouts.coords`)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from diffprobe.readouts.geometry import geodesic_angle

DepthLoss = Literal["silog", "l1"]


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of ``(B, K)`` logits against ``(B,)`` integer labels (image category or action class)."""
    return F.cross_entropy(logits, labels)


def _masked_frames(pred: Tensor, target: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten to ``(frames, pixels)``; the mask defaults to pixels with a positive, finite target depth."""
    mask = torch.isfinite(target) & (target > 0)
    if valid is not None:
        mask = mask & valid
    return pred.flatten(-2).flatten(0, -2), target.flatten(-2).flatten(0, -2), mask.flatten(-2).flatten(0, -2)


def silog_loss(pred_log_depth: Tensor, target: Tensor, valid: Tensor | None = None, lam: float = 0.5) -> Tensor:
    """Scale-invariant log loss (Eigen et al. 2014), per frame then averaged over frames with valid pixels.

    With ``d = pred_log_depth - log(target)`` over the valid pixels of a frame: ``mean(d^2) - lam * mean(d)^2``.
    ``lam = 0`` is plain L2 on log depth, ``lam = 1`` ignores a global scale entirely.
    Shapes: ``(B, T, H, W)`` each; ``valid`` bool, optional.
    """
    pred, target, mask = _masked_frames(pred_log_depth, target, valid)  # (F, P)
    d = torch.where(mask, pred - torch.log(torch.where(mask, target, torch.ones_like(target))), 0.0)  # (F, P)
    n = mask.sum(-1)  # (F,)
    has = n > 0
    n = n.clamp(min=1)
    if not has.any():
        return pred.sum() * 0.0
    per_frame = (d**2).sum(-1) / n - lam * (d.sum(-1) / n) ** 2  # (F,)
    return per_frame[has].mean()


def depth_l1_loss(pred_log_depth: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean absolute error of ``exp(pred_log_depth)`` against the target depth over valid pixels."""
    pred, target, mask = _masked_frames(pred_log_depth, target, valid)
    if not mask.any():
        return pred.sum() * 0.0
    return (torch.exp(pred) - target).abs()[mask].mean()


def depth_loss(
    pred_log_depth: Tensor, target: Tensor, valid: Tensor | None = None, kind: DepthLoss = "silog"
) -> Tensor:
    """The depth loss by name: ``silog`` (default, lam = 0.5) or ``l1``; the head predicts log depth either way."""
    if kind == "silog":
        return silog_loss(pred_log_depth, target, valid)
    if kind == "l1":
        return depth_l1_loss(pred_log_depth, target, valid)
    raise ValueError(f"unknown depth loss {kind!r}; known: silog, l1")


def pose_loss(
    pred_rot: Tensor, pred_trans: Tensor, rot: Tensor, trans: Tensor, translation_weight: float = 1.0
) -> Tensor:
    """Mean geodesic angle (radians) between rotations ``(B, T, 3, 3)`` plus ``translation_weight`` times the mean
    squared Euclidean distance between translations ``(B, T, 3)`` (poses relative to frame 0)."""
    angle = geodesic_angle(pred_rot, rot).mean()
    return angle + translation_weight * ((pred_trans - trans) ** 2).sum(-1).mean()


def tracking_loss(
    pred_xy: Tensor,
    vis_logits: Tensor,
    tracks: Tensor,
    visible: Tensor,
    delta: float = 1.0 / 64.0,
    visibility_weight: float = 1.0,
) -> Tensor:
    """Huber (smooth-L1 with threshold ``delta``, in L1 units) on ``(x, y)`` of visible frames, plus binary
    cross-entropy of the visibility logits on every frame.

    Shapes: ``pred_xy, tracks (B, N, T, 2)`` normalised; ``vis_logits (B, N, T)``; ``visible (B, N, T)`` bool.
    """
    err = F.smooth_l1_loss(pred_xy, tracks, reduction="none", beta=delta).sum(-1)  # (B, N, T)
    vis = visible.to(err.dtype)
    position = (err * vis).sum() / (2.0 * vis.sum()).clamp(min=1.0)  # mean over visible coordinates
    return position + visibility_weight * F.binary_cross_entropy_with_logits(vis_logits, vis)


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise generalised IoU (Rezatofighi 2019) of boxes ``(..., 4)`` as ``(x0, y0, x1, y1)`` -> ``(...)``."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lo = torch.maximum(a[..., :2], b[..., :2])
    hi = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def box_loss(
    pred: Tensor, target: Tensor, visible: Tensor, l1_weight: float = 5.0, giou_weight: float = 2.0
) -> Tensor:
    """``l1_weight`` x mean L1 over box coordinates + ``giou_weight`` x mean ``(1 - GIoU)``, on visible frames only
    (DETR's weights). Shapes: ``pred, target (B, K, T, 4)`` normalised; ``visible (B, K, T)`` bool."""
    if not visible.any():
        return pred.sum() * 0.0
    p, t = pred[visible], target[visible]  # (V, 4)
    return l1_weight * (p - t).abs().mean() + giou_weight * (1.0 - generalized_box_iou(p, t)).mean()
