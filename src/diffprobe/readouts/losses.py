"""Task losses of the readouts. Every function returns a scalar; inputs are decoded head outputs
(see :mod:`diffprobe.readouts.decode`) in normalised coordinates (see :mod:`diffprobe.readouts.coords`).

Masks weight terms instead of selecting them, and nothing branches on values: a probe bank computes every probe's
loss inside one ``torch.func.vmap`` (:mod:`diffprobe.readouts.bank`), where neither works. A loss with nothing to
score is 0 (with zero gradient)."""

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


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is set (0 where it never is); NaN or inf outside the mask never leak."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1).to(values.dtype)


def silog_loss(pred_log_depth: Tensor, target: Tensor, valid: Tensor | None = None, lam: float = 0.5) -> Tensor:
    """Scale-invariant log loss (Eigen et al. 2014), per frame then averaged over frames with valid pixels.

    With ``d = pred_log_depth - log(target)`` over the valid pixels of a frame: ``mean(d^2) - lam * mean(d)^2``.
    ``lam = 0`` is plain L2 on log depth, ``lam = 1`` ignores a global scale entirely.
    Shapes: ``(B, T, H, W)`` each; ``valid`` bool, optional.
    """
    pred, target, mask = _masked_frames(pred_log_depth, target, valid)  # (F, P)
    d = torch.where(mask, pred - torch.log(torch.where(mask, target, torch.ones_like(target))), 0.0)  # (F, P)
    n = mask.sum(-1).clamp(min=1)  # (F,)
    per_frame = (d**2).sum(-1) / n - lam * (d.sum(-1) / n) ** 2  # (F,)
    return _masked_mean(per_frame, mask.any(-1))


def depth_l1_loss(pred_log_depth: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean absolute error of ``exp(pred_log_depth)`` against the target depth over valid pixels."""
    pred, target, mask = _masked_frames(pred_log_depth, target, valid)
    return _masked_mean((torch.exp(pred) - torch.where(mask, target, 0.0)).abs(), mask)


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
    valid: Tensor | None = None,
) -> Tensor:
    """Huber (smooth-L1 with threshold ``delta``, in L1 units) on ``(x, y)`` of visible frames, plus binary
    cross-entropy of the visibility logits on every frame; only queries with ``valid`` set count (default: all).

    Shapes: ``pred_xy, tracks (B, N, T, 2)`` normalised; ``vis_logits (B, N, T)``; ``visible (B, N, T)`` bool;
    ``valid (B, N)`` bool.
    """
    scored = torch.ones_like(visible) if valid is None else valid[..., None].expand_as(visible)  # (B, N, T)
    err = F.smooth_l1_loss(pred_xy, tracks, reduction="none", beta=delta).sum(-1)  # (B, N, T)
    vis = visible.to(err.dtype)
    position = _masked_mean(err, scored & visible) / 2.0  # mean over visible coordinates
    bce = F.binary_cross_entropy_with_logits(vis_logits, vis, reduction="none")  # (B, N, T)
    return position + visibility_weight * _masked_mean(bce, scored)


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
    l1 = _masked_mean((pred - target).abs(), visible[..., None].expand_as(pred))
    return l1_weight * l1 + giou_weight * _masked_mean(1.0 - generalized_box_iou(pred, target), visible)
