"""Point tracking (TAP-Vid style, 'first' query mode) and box tracking (from the first-frame box).

Both read a fixed number of query slots per clip; slots with nothing to track are padded and masked by ``valid``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffprobe.metrics import (
    finite_mean,
    mean_box_iou,
    rescale_query_points,
    rescale_tracks,
    sample_queries,
    tapvid_metrics,
)
from diffprobe.readouts import (
    BoxQueries,
    PointQueries,
    Probe,
    ReadoutConfig,
    box_loss,
    denormalise_boxes,
    denormalise_xy,
    head_to_boxes,
    head_to_tracks,
    normalise_boxes,
    normalise_query_points,
    normalise_xy,
    tracking_loss,
)
from diffprobe.tasks.base import Clip, Task

#: TAP-Vid's frame step between the queries of one track in 'strided' mode
QUERY_STRIDE = 5


class PointTracking(Task):
    """Tracks are queried as TAP-Vid's evaluator queries them (``ctx.query_mode``): ``first``, each track once at
    its first visible frame; ``strided``, every 5th frame where it is visible. The probe predicts (x, y) and
    visibility of the queried track in every frame."""

    name = "point_tracking"
    view = "clip"
    fields = ("video", "tracks", "visible")
    table_metrics = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")

    def targets(self, clip: Clip) -> dict[str, np.ndarray]:
        """One slot per possible query (``first``: one per track, slot n = track n; ``strided``: one per track and
        query frame), each holding its query point and its track; unused slots have ``valid`` False. Clips with
        fewer tracks than ``ctx.max_tracks`` are padded to it (real datasets differ in tracks per video)."""
        tracks, visible = clip["tracks"].astype(np.float32), clip["visible"].astype(bool)  # (N, T, 2), (N, T)
        n, frames = visible.shape
        if self.ctx.max_tracks and n > self.ctx.max_tracks:
            raise ValueError(f"clip has {n} tracks but the task was built for at most {self.ctx.max_tracks}")
        if n < self.ctx.max_tracks:  # padding tracks are never visible, so they give no query
            pad = self.ctx.max_tracks - n
            tracks = np.concatenate([tracks, np.zeros((pad, frames, 2), np.float32)])
            visible = np.concatenate([visible, np.zeros((pad, frames), bool)])
            n = self.ctx.max_tracks
        mode = self.ctx.query_mode
        points, index = sample_queries(tracks, visible, mode, QUERY_STRIDE)  # (Q, 3), (Q,)
        if mode == "first":
            query = np.zeros((n, 3), np.float32)
            valid = np.zeros(n, bool)
            query[index], valid[index] = points, True
            return {"query": query, "tracks": tracks, "visible": visible, "valid": valid}
        slots = n * len(range(0, frames, QUERY_STRIDE))
        query, valid = np.zeros((slots, 3), np.float32), np.zeros(slots, bool)
        q_tracks, q_visible = np.zeros((slots, frames, 2), np.float32), np.zeros((slots, frames), bool)
        k = len(index)
        query[:k], valid[:k], q_tracks[:k], q_visible[:k] = points, True, tracks[index], visible[index]
        return {"query": query, "tracks": q_tracks, "visible": q_visible, "valid": valid}

    def make_probe(self, cfg: ReadoutConfig, feature_dim: int, feature_grid: tuple[int, int, int]) -> Probe:
        return Probe(cfg, PointQueries(cfg, self.ctx.frames), feature_dim, feature_grid)

    def query_inputs(self, targets: dict[str, Tensor]) -> tuple[Tensor, ...]:
        c = self.ctx
        return (normalise_query_points(targets["query"], c.frames, c.height, c.width),)  # (B, N, 3)

    def training_batch(self, targets: dict[str, Tensor], queries: int, generator: torch.Generator
                       ) -> dict[str, Tensor]:
        """``queries`` random tracks of each clip, valid ones first (each (track, frame) is a readout query)."""
        n = targets["valid"].shape[1]
        if not queries or queries >= n:
            return targets
        priority = torch.rand(targets["valid"].shape, generator=generator).to(targets["valid"].device)
        pick = (priority + targets["valid"].float()).topk(queries, dim=1).indices  # (B, K)
        return {k: v[torch.arange(len(v), device=v.device)[:, None], pick] for k, v in targets.items()}

    def _origin(self, targets: dict[str, Tensor]) -> Tensor:
        """Normalised ``(x, y)`` of the query points, ``(B, N, 2)``: the head predicts displacements from them."""
        return self.query_inputs(targets)[0][..., [2, 1]]  # (t, y, x) -> (x, y)

    def loss(self, out: Tensor, targets: dict[str, Tensor]) -> Tensor:
        c = self.ctx
        xy, vis_logits = head_to_tracks(out, c.frames, self._origin(targets))  # (B, N, T, 2), (B, N, T)
        return tracking_loss(xy, vis_logits, normalise_xy(targets["tracks"], c.height, c.width), targets["visible"],
                             valid=targets["valid"])

    def predict(self, out: Tensor, targets: dict[str, Tensor]) -> dict[str, np.ndarray]:
        c = self.ctx
        xy, vis_logits = head_to_tracks(out, c.frames, self._origin(targets))
        return {"tracks": denormalise_xy(xy, c.height, c.width).detach().float().cpu().numpy(),  # (B, N, T, 2)
                "visible": (vis_logits > 0).cpu().numpy()}  # (B, N, T)

    def baseline(self, train: dict[str, np.ndarray]) -> np.ndarray:
        """No displacement, and the log-odds of a valid track being visible in a training frame, ``(1, 3)``."""
        share = float(train["visible"][train["valid"]].mean())
        share = min(max(share, 1e-3), 1.0 - 1e-3)
        return np.array([[0.0, 0.0, np.log(share / (1.0 - share))]], np.float32)

    def prior(self, train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Static points: every track stays at its query point, visible in every frame if most training points
        are (occluded in every frame otherwise)."""
        xy = test["query"][..., [2, 1]]  # (N, Q, 2) as (x, y)
        return {"tracks": np.repeat(xy[:, :, None], self.ctx.frames, axis=2),  # (N, Q, T, 2)
                "visible": np.full(test["visible"].shape, bool(self.baseline(train)[0, 2] > 0))}

    def metrics(self, preds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        hw = (self.ctx.height, self.ctx.width)
        names = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")
        per_video: dict[str, list[float]] = {k: [] for k in names}  # NaN for a split with no valid query
        for i, valid in enumerate(targets["valid"]):  # one video at a time: only its valid queries
            if not valid.any():
                continue
            m = tapvid_metrics(
                rescale_query_points(targets["query"][i][valid], hw)[None],
                ~targets["visible"][i][valid][None], rescale_tracks(targets["tracks"][i][valid], hw)[None],
                ~preds["visible"][i][valid][None], rescale_tracks(preds["tracks"][i][valid], hw)[None],
                self.ctx.query_mode)
            for k in names:
                per_video[k].append(float(m[k][0]))
        return {k: finite_mean(v) for k, v in per_video.items()}


class BoxTracking(Task):
    """Each object visible in frame 0 is queried by its frame-0 box; the probe predicts its box in every frame."""

    name = "box_tracking"
    view = "clip"
    fields = ("video", "boxes", "box_visible")
    table_metrics = ("mean_iou",)

    def targets(self, clip: Clip) -> dict[str, np.ndarray]:
        k_max, frames = self.ctx.max_objects, self.ctx.frames
        boxes, visible = clip["boxes"].astype(np.float32), clip["box_visible"].astype(bool)  # (K, T, 4), (K, T)
        k = boxes.shape[0]
        if k > k_max:
            raise ValueError(f"clip has {k} boxes but the task was built for at most {k_max}")
        out_boxes = np.zeros((k_max, frames, 4), np.float32)
        out_visible = np.zeros((k_max, frames), bool)
        out_boxes[:k], out_visible[:k] = boxes, visible
        return {"boxes": out_boxes, "visible": out_visible, "valid": out_visible[:, 0].copy()}

    def make_probe(self, cfg: ReadoutConfig, feature_dim: int, feature_grid: tuple[int, int, int]) -> Probe:
        return Probe(cfg, BoxQueries(cfg, self.ctx.frames), feature_dim, feature_grid)

    def _origin(self, targets: dict[str, Tensor]) -> Tensor:
        """The frame-0 boxes, normalised, ``(B, K, 4)``: the head predicts offsets from them."""
        return normalise_boxes(targets["boxes"][:, :, 0], self.ctx.height, self.ctx.width)

    def query_inputs(self, targets: dict[str, Tensor]) -> tuple[Tensor, ...]:
        first = self._origin(targets)  # (B, K, 4)
        return first, torch.zeros(first.shape[:2], dtype=first.dtype, device=first.device)  # given at frame 0

    def loss(self, out: Tensor, targets: dict[str, Tensor]) -> Tensor:
        c = self.ctx
        pred = head_to_boxes(out, c.frames, self._origin(targets))  # (B, K, T, 4) normalised
        scored = targets["visible"] & targets["valid"][..., None]  # (B, K, T)
        return box_loss(pred, normalise_boxes(targets["boxes"], c.height, c.width), scored)

    def predict(self, out: Tensor, targets: dict[str, Tensor]) -> dict[str, np.ndarray]:
        c = self.ctx
        boxes = denormalise_boxes(head_to_boxes(out, c.frames, self._origin(targets)), c.height, c.width)
        return {"boxes": boxes.detach().float().cpu().numpy()}  # (B, K, T, 4)

    def prior(self, train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Still boxes: the frame-0 box copied to every frame."""
        return {"boxes": np.repeat(test["boxes"][:, :, :1], self.ctx.frames, axis=2)}  # (N, K, T, 4)

    def metrics(self, preds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
        valid = targets["valid"]  # (N, K)
        iou = mean_box_iou(preds["boxes"][valid], targets["boxes"][valid], targets["visible"][valid])
        return {"mean_iou": iou}
