"""Box-tracking metrics: IoU of ``(x0, y0, x1, y1)`` pixel boxes and mean IoU over visible frames. Numpy only."""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of boxes (..., 4); inverted boxes (x1 < x0 or y1 < y0) have area 0."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``a`` (..., 4) and ``b`` (..., 4) (broadcast); 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[-1] != 4 or b.shape[-1] != 4:
        raise ValueError(f"boxes must end in 4 coordinates (x0, y0, x1, y1), got {a.shape} and {b.shape}")
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)  # (...,)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)  # (...,)
    inter = ix * iy
    union = box_area(a) + box_area(b) - inter
    out = np.zeros(np.broadcast(inter, union).shape)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def mean_box_iou(pred: np.ndarray, gt: np.ndarray, gt_visible: np.ndarray, skip_first: bool = True) -> float:
    """Mean IoU of ``pred`` (K, T, 4) against ``gt`` (K, T, 4) over (box, frame) pairs where ``gt_visible`` (K, T).

    With ``skip_first`` the first frame (whose box is given to the tracker) is not scored. NaN when nothing is scored.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    scored = np.array(gt_visible, dtype=bool)  # (K, T), a copy
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 4 or scored.shape != gt.shape[:2]:
        raise ValueError(f"expected pred/gt (K, T, 4) and gt_visible (K, T), got {pred.shape}, {gt.shape}, "
                         f"{scored.shape}")
    if skip_first:
        scored[:, 0] = False
    if not scored.any():
        return float("nan")
    return float(np.mean(box_iou(pred, gt)[scored]))
