"""Which way is better for each metric diffprobe reports (True: higher is better). Declared once, here; tasks, probe
selection and the report read it."""

from __future__ import annotations

HIGHER_IS_BETTER: dict[str, bool] = {
    "top1": True,
    "cross_entropy": False,
    "abs_rel": False,
    "rmse": False,
    "delta1": True,
    "delta2": True,
    "delta3": True,
    "abs_rel_scale_aligned": False,
    "delta1_scale_aligned": True,
    "rotation_error_deg": False,
    "translation_error": False,
    "translation_angle_deg": False,
    "average_jaccard": True,
    "average_pts_within_thresh": True,
    "occlusion_accuracy": True,
    "mean_iou": True,
    "loss": False,
}
