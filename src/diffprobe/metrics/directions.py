"""Which way is better for each metric diffprobe reports (True: higher is better), and which metrics are proportions
of test clips. Declared once, here; tasks, probe selection, standard errors and the report read it."""

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

#: metrics that are a share of the test clips (each clip scored 0 or 1 alone): their standard error is a proportion's
#: (:func:`~diffprobe.metrics.stats.proportion_standard_error`)
PROPORTIONS: frozenset[str] = frozenset({"top1"})
