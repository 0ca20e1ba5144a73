"""Standard metrics of every probing task, as numpy functions of arrays (no torch, no project imports).

Conventions are documented in each module and in ``docs/metrics.md``. The I3D video network for FVD lives in
:mod:`diffprobe.metrics.i3d`, which imports torch and is therefore not imported here: import it explicitly.
"""

from diffprobe.metrics.boxes import box_area, box_iou, mean_box_iou
from diffprobe.metrics.classification import top1_accuracy
from diffprobe.metrics.depth import align_depth, depth_metrics
from diffprobe.metrics.directions import HIGHER_IS_BETTER, PROPORTIONS
from diffprobe.metrics.frechet import feature_statistics, frechet_distance, psd_sqrt
from diffprobe.metrics.pose import invert_rigid, pose_errors, relative_poses, rotation_angle_deg
from diffprobe.metrics.stats import (
    finite_mean,
    metric_standard_error,
    paired_difference,
    proportion_standard_error,
    standard_error,
)
from diffprobe.metrics.tapvid import (
    THRESHOLDS,
    rescale_query_points,
    rescale_tracks,
    sample_queries,
    tapvid_metrics,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "PROPORTIONS",
    "THRESHOLDS",
    "align_depth",
    "box_area",
    "box_iou",
    "depth_metrics",
    "feature_statistics",
    "finite_mean",
    "frechet_distance",
    "invert_rigid",
    "mean_box_iou",
    "metric_standard_error",
    "paired_difference",
    "pose_errors",
    "proportion_standard_error",
    "psd_sqrt",
    "relative_poses",
    "rescale_query_points",
    "rescale_tracks",
    "rotation_angle_deg",
    "sample_queries",
    "standard_error",
    "tapvid_metrics",
    "top1_accuracy",
]
