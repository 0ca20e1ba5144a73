"""Query-based cross-attention readouts: one readout for every task, task-specific queries, losses and decoders."""

from diffprobe.readouts.bank import Member, ProbeBank
from diffprobe.readouts.config import ReadoutConfig
from diffprobe.readouts.coords import (
    denormalise_boxes,
    denormalise_xy,
    normalise_boxes,
    normalise_query_points,
    normalise_time,
    normalise_xy,
    patch_centres,
)
from diffprobe.readouts.decode import (
    class_logits,
    head_to_boxes,
    head_to_pose,
    head_to_tracks,
    logits_to_classes,
    patches_to_map,
)
from diffprobe.readouts.geometry import geodesic_angle, matrix_to_rotation_6d, rotation_6d_to_matrix
from diffprobe.readouts.losses import (
    box_loss,
    classification_loss,
    depth_l1_loss,
    depth_loss,
    generalized_box_iou,
    pose_loss,
    silog_loss,
    tracking_loss,
)
from diffprobe.readouts.probe import Probe
from diffprobe.readouts.queries import (
    POSE_DIM,
    BoxQueries,
    CoordEncoder,
    FrameQueries,
    LearnedQueries,
    PatchQueries,
    PointQueries,
    fourier_encode,
    sample_tokens,
)
from diffprobe.readouts.readout import AttentionReadout, SpaceTimePosEmbed

__all__ = [
    "POSE_DIM",
    "AttentionReadout",
    "BoxQueries",
    "CoordEncoder",
    "FrameQueries",
    "LearnedQueries",
    "Member",
    "PatchQueries",
    "PointQueries",
    "Probe",
    "ProbeBank",
    "ReadoutConfig",
    "SpaceTimePosEmbed",
    "box_loss",
    "class_logits",
    "classification_loss",
    "denormalise_boxes",
    "denormalise_xy",
    "depth_l1_loss",
    "depth_loss",
    "fourier_encode",
    "generalized_box_iou",
    "geodesic_angle",
    "head_to_boxes",
    "head_to_pose",
    "head_to_tracks",
    "sample_tokens",
    "logits_to_classes",
    "matrix_to_rotation_6d",
    "normalise_boxes",
    "normalise_query_points",
    "normalise_time",
    "normalise_xy",
    "patch_centres",
    "patches_to_map",
    "pose_loss",
    "rotation_6d_to_matrix",
    "silog_loss",
    "tracking_loss",
]
