"""Camera-pose metrics: poses relative to the first frame, rotation / translation errors. Numpy only.

Convention: ``world_to_camera[t]`` maps homogeneous world points to camera-t coordinates (``x_cam = E_t @ x_world``).
The relative pose of frame t is ``rel[t] = E_t @ inv(E_0)``, which maps camera-0 coordinates to camera-t coordinates
(camera_t-from-camera_0); ``rel[0]`` is the identity. Poses are assumed rigid (rotation block orthonormal).
"""

from __future__ import annotations

import numpy as np


def invert_rigid(pose: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4×4 transforms (..., 4, 4): ``[R t] -> [Rᵀ, −Rᵀ t]``."""
    pose = np.asarray(pose, dtype=np.float64)
    rot_t = np.swapaxes(pose[..., :3, :3], -1, -2)  # (..., 3, 3)
    out = np.zeros_like(pose)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, pose[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def relative_poses(world_to_camera: np.ndarray) -> np.ndarray:
    """(T, 4, 4) world-to-camera -> (T, 4, 4) camera_t-from-camera_0 transforms (``E_t @ inv(E_0)``)."""
    world_to_camera = np.asarray(world_to_camera, dtype=np.float64)
    if world_to_camera.ndim != 3 or world_to_camera.shape[1:] != (4, 4):
        raise ValueError(f"world_to_camera must be (T, 4, 4), got {world_to_camera.shape}")
    return world_to_camera @ invert_rigid(world_to_camera[0])  # (T, 4, 4)


def rotation_angle_deg(rot_a: np.ndarray, rot_b: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotations (..., 3, 3): ``arccos((tr(Aᵀ B) − 1) / 2)``."""
    trace = np.einsum("...ij,...ij->...", rot_a, rot_b)  # tr(Aᵀ B)
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def pose_errors(pred_rel: np.ndarray, gt_rel: np.ndarray, eps: float = 1e-9) -> dict[str, float]:
    """Errors of predicted relative poses (T, 4, 4) against ground truth, averaged over frames 1..T−1.

    - ``rotation_error_deg``: geodesic angle between predicted and true rotations;
    - ``translation_error``: L2 distance between translations (in the ground truth's units);
    - ``translation_angle_deg``: angle between translation directions, for scale-ambiguous settings. Frames whose
      true translation is shorter than ``eps`` have no direction and are left out (NaN if all are); a predicted
      translation shorter than ``eps`` on a moving frame counts as 90° (no direction given).
    """
    pred_rel = np.asarray(pred_rel, dtype=np.float64)
    gt_rel = np.asarray(gt_rel, dtype=np.float64)
    if pred_rel.shape != gt_rel.shape or pred_rel.ndim != 3 or pred_rel.shape[1:] != (4, 4):
        raise ValueError(f"pred_rel and gt_rel must both be (T, 4, 4), got {pred_rel.shape} and {gt_rel.shape}")
    if pred_rel.shape[0] < 2:
        raise ValueError("pose errors need at least 2 frames (frame 0 is the reference and is not scored)")
    pred, gt = pred_rel[1:], gt_rel[1:]  # (T-1, 4, 4)
    rot_err = rotation_angle_deg(pred[:, :3, :3], gt[:, :3, :3])  # (T-1,)
    t_pred, t_gt = pred[:, :3, 3], gt[:, :3, 3]  # (T-1, 3)
    trans_err = np.linalg.norm(t_pred - t_gt, axis=-1)  # (T-1,)

    n_pred = np.linalg.norm(t_pred, axis=-1)  # (T-1,)
    n_gt = np.linalg.norm(t_gt, axis=-1)  # (T-1,)
    moving = n_gt >= eps
    cos = np.zeros_like(n_gt)  # 0 -> 90° where the prediction has no direction
    has_dir = moving & (n_pred >= eps)
    cos[has_dir] = np.sum(t_pred[has_dir] * t_gt[has_dir], axis=-1) / (n_pred[has_dir] * n_gt[has_dir])
    angles = np.degrees(np.arccos(np.clip(cos[moving], -1.0, 1.0)))  # (M,)
    return {
        "rotation_error_deg": float(np.mean(rot_err)),
        "translation_error": float(np.mean(trans_err)),
        "translation_angle_deg": float(np.mean(angles)) if angles.size else float("nan"),
    }
