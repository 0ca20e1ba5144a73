"""Camera pose: one query per frame, 6D rotation + translation of each frame relative to frame 0 (camera-t from
camera-0), geodesic + L2 loss, rotation error in degrees and translation error in world units."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffprobe.metrics import finite_mean, pose_errors, relative_poses
from diffprobe.readouts import FrameQueries, Probe, ReadoutConfig, head_to_pose, pose_loss
from diffprobe.tasks.base import Clip, Task


class CameraPose(Task):
    name = "camera_pose"
    view = "clip"
    fields = ("video", "camera")
    table_metrics = ("rotation_error_deg", "translation_error")

    def targets(self, clip: Clip) -> dict[str, np.ndarray]:
        rel = relative_poses(clip["camera"].astype(np.float64)).astype(np.float32)  # (T, 4, 4)
        return {"rotation": rel[:, :3, :3], "translation": rel[:, :3, 3]}

    def make_probe(self, cfg: ReadoutConfig, feature_dim: int, feature_grid: tuple[int, int, int]) -> Probe:
        return Probe(cfg, FrameQueries(cfg, self.ctx.frames), feature_dim, feature_grid)

    def loss(self, out: Tensor, targets: dict[str, Tensor]) -> Tensor:
        rot, trans = head_to_pose(out)  # (B, T, 3, 3), (B, T, 3)
        return pose_loss(rot, trans, targets["rotation"], targets["translation"])

    def predict(self, out: Tensor, targets: dict[str, Tensor]) -> dict[str, np.ndarray]:
        rot, trans = head_to_pose(out)
        return {"rotation": rot.detach().float().cpu().numpy(), "translation": trans.detach().float().cpu().numpy()}

    def baseline(self, train: dict[str, np.ndarray]) -> np.ndarray:
        """No rotation offset and each frame's mean training translation, ``(T, 9)``."""
        mean = train["translation"].astype(np.float64).mean(axis=0).astype(np.float32)  # (T, 3)
        return np.concatenate([np.zeros((len(mean), 6), np.float32), mean], axis=1)

    def prior(self, train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """No rotation, and each frame's mean training translation."""
        out = torch.from_numpy(np.repeat(self.baseline(train)[None], len(test["rotation"]), axis=0))  # (N, T, 9)
        return self.predict(out, {})

    def metrics(self, preds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        rows = [pose_errors(_pose(pr, pt), _pose(gr, gt)) for pr, pt, gr, gt in zip(
            preds["rotation"], preds["translation"], targets["rotation"], targets["translation"], strict=True)]
        return {k: finite_mean([r[k] for r in rows]) for k in rows[0]}


def _pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations and (T, 3) translations -> (T, 4, 4) rigid transforms."""
    pose = np.tile(np.eye(4), (rotation.shape[0], 1, 1))
    pose[:, :3, :3], pose[:, :3, 3] = rotation, translation
    return pose
