"""TAP-Vid point-tracking metrics (occlusion accuracy, δ^x_avg, average Jaccard) and query sampling.

Conventions (those of TAP-Vid, Doersch et al. 2022):

- query points are ``(t, y, x)``; tracks are ``(x, y)``; pixel centres sit at +0.5, so a frame of width ``W`` spans
  ``[0, W)`` and rescaling is a plain multiplication;
- metrics are computed at 256×256 resolution, thresholds 1, 2, 4, 8, 16 px, "within" is a strict ``<``;
- the query frame itself is never scored; in ``'first'`` mode frames before the query are not scored either, in
  ``'strided'`` mode every other frame is.

Everything is numpy; no project imports.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

THRESHOLDS: tuple[int, ...] = (1, 2, 4, 8, 16)
TAPVID_SIZE: tuple[int, int] = (256, 256)

QueryMode = Literal["first", "strided"]


def _evaluation_mask(query_frames: np.ndarray, num_frames: int, query_mode: QueryMode) -> np.ndarray:
    """Which frames each query is scored on: (B, N) int query frames -> (B, N, T) bool."""
    frames = np.arange(num_frames)  # (T,)
    q = query_frames[..., None]  # (B, N, 1)
    if query_mode == "first":
        return frames > q
    if query_mode == "strided":
        return frames != q
    raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, NaN where ``den == 0`` (a video with nothing to score)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: QueryMode,
) -> dict[str, np.ndarray]:
    """TAP-Vid metrics per video.

    Args:
        query_points: (B, N, 3) float, ``(t, y, x)``; only ``t`` is used (rounded to the nearest frame).
        gt_occluded: (B, N, T) bool, True where the point is occluded or out of frame.
        gt_tracks: (B, N, T, 2) float, ``(x, y)`` pixels at 256×256.
        pred_occluded: (B, N, T) bool.
        pred_tracks: (B, N, T, 2) float, ``(x, y)`` pixels at 256×256.
        query_mode: ``'first'`` or ``'strided'`` (see the module docstring).

    Returns:
        name -> (B,) float64 array: ``occlusion_accuracy``, ``pts_within_{1,2,4,8,16}``, ``jaccard_{1,2,4,8,16}``,
        ``average_jaccard``, ``average_pts_within_thresh``. A video with no scored frame (or no visible scored point
        for the position metrics) gets NaN.
    """
    query_points = np.asarray(query_points)
    gt_occluded = np.asarray(gt_occluded, dtype=bool)
    pred_occluded = np.asarray(pred_occluded, dtype=bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    if gt_tracks.ndim != 4 or gt_tracks.shape[-1] != 2:
        raise ValueError(f"gt_tracks must be (B, N, T, 2), got {gt_tracks.shape}")
    b, n, t, _ = gt_tracks.shape
    expected = {
        "query_points": (query_points.shape, (b, n, 3)),
        "gt_occluded": (gt_occluded.shape, (b, n, t)),
        "pred_occluded": (pred_occluded.shape, (b, n, t)),
        "pred_tracks": (pred_tracks.shape, (b, n, t, 2)),
    }
    for name, (got, want) in expected.items():
        if got != want:
            raise ValueError(f"{name} must have shape {want} to match gt_tracks, got {got}")

    query_frames = np.round(query_points[..., 0]).astype(np.int64)  # (B, N)
    if query_frames.size and (query_frames.min() < 0 or query_frames.max() >= t):
        raise ValueError(f"query frames must lie in [0, {t}), got range [{query_frames.min()}, {query_frames.max()}]")
    evaluated = _evaluation_mask(query_frames, t, query_mode)  # (B, N, T)
    gt_visible = ~gt_occluded  # (B, N, T)
    pred_visible = ~pred_occluded  # (B, N, T)

    out: dict[str, np.ndarray] = {}
    out["occlusion_accuracy"] = _safe_ratio(
        np.sum((gt_occluded == pred_occluded) & evaluated, axis=(1, 2)), np.sum(evaluated, axis=(1, 2))
    )

    sq_dist = np.sum((pred_tracks - gt_tracks) ** 2, axis=-1)  # (B, N, T)
    visible_evaluated = gt_visible & evaluated  # (B, N, T)
    num_visible = np.sum(visible_evaluated, axis=(1, 2))  # (B,)
    within_all, jaccard_all = [], []
    for thresh in THRESHOLDS:
        within = sq_dist < thresh**2  # (B, N, T), strict
        frac_within = _safe_ratio(np.sum(within & visible_evaluated, axis=(1, 2)), num_visible)
        true_pos = np.sum(within & pred_visible & visible_evaluated, axis=(1, 2))  # (B,)
        false_pos = np.sum(pred_visible & (gt_occluded | ~within) & evaluated, axis=(1, 2))  # (B,)
        # num_visible = true positives + misses (gt visible but predicted occluded or too far)
        jaccard = _safe_ratio(true_pos, num_visible + false_pos)
        out[f"pts_within_{thresh}"] = frac_within
        out[f"jaccard_{thresh}"] = jaccard
        within_all.append(frac_within)
        jaccard_all.append(jaccard)
    out["average_jaccard"] = np.mean(np.stack(jaccard_all), axis=0)
    out["average_pts_within_thresh"] = np.mean(np.stack(within_all), axis=0)
    return out


def rescale_tracks(
    tracks: np.ndarray, frame_hw: tuple[int, int], target_hw: tuple[int, int] = TAPVID_SIZE
) -> np.ndarray:
    """Map ``(x, y)`` tracks (..., 2) from an ``(H, W)`` frame to ``target_hw`` (pixel centres at +0.5)."""
    (h, w), (th, tw) = frame_hw, target_hw
    scale = np.array([tw / w, th / h], dtype=np.float64)  # (2,) for (x, y)
    return np.asarray(tracks, dtype=np.float64) * scale


def rescale_query_points(
    query_points: np.ndarray, frame_hw: tuple[int, int], target_hw: tuple[int, int] = TAPVID_SIZE
) -> np.ndarray:
    """Map ``(t, y, x)`` query points (..., 3) from an ``(H, W)`` frame to ``target_hw``; ``t`` is unchanged."""
    (h, w), (th, tw) = frame_hw, target_hw
    scale = np.array([1.0, th / h, tw / w], dtype=np.float64)  # (3,) for (t, y, x)
    return np.asarray(query_points, dtype=np.float64) * scale


def sample_queries(
    tracks: np.ndarray, visible: np.ndarray, query_mode: QueryMode, stride: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Query points for one clip, TAP-Vid style.

    Args:
        tracks: (N, T, 2) ``(x, y)`` pixels.
        visible: (N, T) bool.
        query_mode: ``'first'``: one query per track at its first visible frame (tracks never visible give none);
            ``'strided'``: a query at every frame ``0, stride, 2*stride, ...`` where the track is visible.
        stride: frame step of ``'strided'`` mode (TAP-Vid uses 5).

    Returns:
        query_points (Q, 3) float32 ``(t, y, x)`` and track_index (Q,) int64, the track each query belongs to.
        ``'first'`` queries are ordered by track; ``'strided'`` ones by query frame, then track.
    """
    tracks = np.asarray(tracks)
    visible = np.asarray(visible, dtype=bool)
    if tracks.ndim != 3 or tracks.shape[-1] != 2 or visible.shape != tracks.shape[:2]:
        raise ValueError(f"tracks must be (N, T, 2) and visible (N, T), got {tracks.shape} and {visible.shape}")
    if query_mode == "first":
        track_index = np.flatnonzero(visible.any(axis=1))  # (Q,)
        frames = np.argmax(visible[track_index], axis=1)  # (Q,) first True per row
    elif query_mode == "strided":
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        frame_list, index_list = [], []
        for t in range(0, visible.shape[1], stride):
            idx = np.flatnonzero(visible[:, t])
            index_list.append(idx)
            frame_list.append(np.full(idx.shape, t))
        track_index = np.concatenate(index_list)
        frames = np.concatenate(frame_list)
    else:
        raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")
    track_index = track_index.astype(np.int64)
    xy = tracks[track_index, frames]  # (Q, 2) as (x, y)
    query_points = np.stack([frames.astype(np.float64), xy[:, 1], xy[:, 0]], axis=-1).astype(np.float32)  # (Q, 3)
    return query_points, track_index
