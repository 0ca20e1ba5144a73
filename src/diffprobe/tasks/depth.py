"""Depth estimation: one query per output patch of every frame, log-depth patches, scale-invariant log loss,
AbsRel and delta<1.25 against the exact z-depth."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from diffprobe.metrics import depth_metrics
from diffprobe.readouts import PatchQueries, Probe, ReadoutConfig, depth_loss, patches_to_map
from diffprobe.tasks.base import Clip, Task, TaskContext


class DepthEstimation(Task):
    name = "depth"
    view = "clip"
    fields = ("video", "depth")
    version = 2  # 2: pixels without a measurement (depth <= 0) are masked from the baseline
    table_metrics = ("abs_rel", "delta1")

    def __init__(self, ctx: TaskContext, patch: int | None = None) -> None:
        """``patch``: side of the square of depth values each query predicts (default: a 4x4 grid of patches per
        frame, so the query count does not grow with the resolution)."""
        super().__init__(ctx)
        self.patch = patch or max(1, min(ctx.height, ctx.width) // 4)

    def targets(self, clip: Clip) -> dict[str, np.ndarray]:
        return {"depth": clip["depth"].astype(np.float32)}  # (T, H, W)

    def make_probe(self, cfg: ReadoutConfig, feature_dim: int, feature_grid: tuple[int, int, int]) -> Probe:
        c = self.ctx
        return Probe(cfg, PatchQueries(cfg, c.frames, c.height, c.width, self.patch), feature_dim, feature_grid)

    def _log_depth(self, out: Tensor) -> Tensor:
        c = self.ctx
        return patches_to_map(out, c.frames, c.height, c.width, self.patch)  # (B, T, H, W)

    def loss(self, out: Tensor, targets: dict[str, Tensor]) -> Tensor:
        return depth_loss(self._log_depth(out), targets["depth"])

    def predict(self, out: Tensor, targets: dict[str, Tensor]) -> dict[str, np.ndarray]:
        return {"depth": torch.exp(self._log_depth(out)).detach().float().cpu().numpy()}  # (B, T, H, W)

    def baseline(self, train: dict[str, np.ndarray]) -> np.ndarray:
        """Each pixel's mean training log-depth per frame over the clips that measure it (real depth maps have holes,
        ``depth <= 0``; a pixel never measured gets the mean of all measured pixels), as patch-query outputs
        ``(T * H/p * W/p, p * p)``."""
        c, p = self.ctx, self.patch
        depth = train["depth"].astype(np.float64)  # (N, T, H, W)
        valid = np.isfinite(depth) & (depth > 0)
        logd = np.log(np.where(valid, depth, 1.0))
        count = valid.sum(axis=0)  # (T, H, W)
        overall = logd[valid].mean() if valid.any() else 0.0
        mean_log = np.where(count > 0, (logd * valid).sum(axis=0) / np.maximum(count, 1), overall).astype(np.float32)
        return rearrange(mean_log, "t (h p) (w q) -> (t h w) (p q)", h=c.height // p, w=c.width // p, p=p, q=p)

    def prior(self, train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The scene prior: each pixel's geometric-mean training depth, per frame."""
        mean_log = self._log_depth(torch.from_numpy(self.baseline(train))[None])  # (1, T, H, W)
        return {"depth": np.repeat(torch.exp(mean_log).numpy(), len(test["depth"]), axis=0)}

    def metrics(self, preds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        pred, gt = preds["depth"], targets["depth"]  # (N, T, H, W)
        plain = depth_metrics(pred, gt)  # averaged over every frame of every clip
        aligned = depth_metrics(pred, gt, align="scale")
        return {"abs_rel": plain["abs_rel"], "delta1": plain["delta1"], "rmse": plain["rmse"],
                "abs_rel_scale_aligned": aligned["abs_rel"], "delta1_scale_aligned": aligned["delta1"]}
