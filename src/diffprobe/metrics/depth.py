"""Monocular depth metrics: AbsRel, RMSE and δ1/δ2/δ3, with optional per-image least-squares alignment.

Arrays are (..., H, W); every leading index is one image. A pixel is valid where the ground truth is finite and
positive (and the optional mask is True). Metrics are computed per image over its valid pixels, then averaged over
the images that have at least one valid pixel. Numpy only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Align = Literal["none", "scale", "scale_shift"]


def align_depth(pred: np.ndarray, gt: np.ndarray, align: Align) -> np.ndarray:
    """Least-squares fit of 1-D ``pred`` (P,) to ``gt`` (P,): ``s * pred`` or ``s * pred + b`` minimising the L2 error.

    Uses the minimum-norm solution, so a constant or all-zero prediction still gets a defined fit.
    """
    if align == "none":
        return pred
    if align == "scale":
        design = pred[:, None]  # (P, 1)
    elif align == "scale_shift":
        design = np.stack([pred, np.ones_like(pred)], axis=-1)  # (P, 2)
    else:
        raise ValueError(f"align must be 'none', 'scale' or 'scale_shift', got {align!r}")
    coef, *_ = np.linalg.lstsq(design, gt, rcond=None)
    return design @ coef  # (P,)


def depth_metrics(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, align: Align = "none"
) -> dict[str, float]:
    """Depth errors of ``pred`` against ``gt``, both (..., H, W).

    - ``abs_rel`` = mean |p − g| / g; ``rmse`` = sqrt(mean (p − g)²) per image;
    - ``delta1/2/3`` = share of pixels with max(p/g, g/p) < 1.25, 1.25², 1.25³ (a non-positive p never counts);
    - ``align``: ``'scale'`` or ``'scale_shift'`` first fits pred to gt by least squares per image on valid pixels.

    Returns floats averaged over images with at least one valid pixel (all NaN when no image has one).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim < 2:
        raise ValueError(f"pred and gt must share a (..., H, W) shape, got {pred.shape} and {gt.shape}")
    mask = np.isfinite(gt) & (gt > 0)  # (..., H, W)
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != gt.shape:
            raise ValueError(f"valid must have shape {gt.shape}, got {valid.shape}")
        mask &= valid.astype(bool)
    h, w = gt.shape[-2:]
    pred_i = pred.reshape(-1, h * w)  # (I, H*W)
    gt_i = gt.reshape(-1, h * w)  # (I, H*W)
    mask_i = mask.reshape(-1, h * w)  # (I, H*W)

    names = ("abs_rel", "rmse", "delta1", "delta2", "delta3")
    rows = []
    for p_all, g_all, m in zip(pred_i, gt_i, mask_i, strict=True):
        if not m.any():
            continue
        g = g_all[m]  # (P,)
        p = align_depth(p_all[m], g, align)  # (P,)
        with np.errstate(divide="ignore"):
            ratio = np.where(p > 0, np.maximum(p / g, g / p), np.inf)  # (P,)
        rows.append([
            np.mean(np.abs(p - g) / g),
            np.sqrt(np.mean((p - g) ** 2)),
            np.mean(ratio < 1.25),
            np.mean(ratio < 1.25**2),
            np.mean(ratio < 1.25**3),
        ])
    if not rows:
        return {name: float("nan") for name in names}
    means = np.mean(np.asarray(rows), axis=0)  # (5,)
    return {name: float(v) for name, v in zip(names, means, strict=True)}
