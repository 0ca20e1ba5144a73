"""TAP-Vid metrics against hand-counted small cases, and query sampling / rescaling helpers."""

from __future__ import annotations

import numpy as np
import pytest

from diffprobe.metrics import rescale_query_points, rescale_tracks, sample_queries, tapvid_metrics


def _case() -> tuple[np.ndarray, ...]:
    """One video, two tracks, four frames.

    Track 0 (query t=0) is visible at (10, 10) throughout; predictions: t=1 exact, t=2 off by (3, 4) -> 5 px,
    t=3 off by exactly 4 px. Track 1 (query t=1) is visible at (50, 50) except occluded at t=2; predictions: t=0
    exact, t=2 visible (false positive on an occluded point), t=3 visible 100 px away (false positive and miss).
    """
    query = np.array([[[0, 10, 10], [1, 50, 50]]], dtype=np.float32)  # (1, 2, 3) (t, y, x)
    gt_tracks = np.zeros((1, 2, 4, 2))
    gt_tracks[0, 0] = 10.0
    gt_tracks[0, 1] = 50.0
    gt_occ = np.zeros((1, 2, 4), dtype=bool)
    gt_occ[0, 1, 2] = True
    pred_tracks = gt_tracks.copy()
    pred_tracks[0, 0, 0] = (200.0, 200.0)  # query frame: never scored
    pred_tracks[0, 0, 2] = (13.0, 14.0)
    pred_tracks[0, 0, 3] = (14.0, 10.0)
    pred_tracks[0, 1, 3] = (150.0, 50.0)
    pred_occ = np.zeros((1, 2, 4), dtype=bool)
    pred_occ[0, 0, 0] = True  # wrong on the query frame: must not count
    return query, gt_occ, gt_tracks, pred_occ, pred_tracks


def test_first_mode_hand_counted() -> None:
    m = tapvid_metrics(*_case(), query_mode="first")
    # scored: track 0 at t=1,2,3; track 1 at t=2,3. Occlusion right except track 1 t=2.
    assert m["occlusion_accuracy"] == pytest.approx([4 / 5])
    # 4 visible scored points with errors 0, 5, 4 (exactly at a threshold: not within 4), 100.
    for thr in (1, 2, 4):
        assert m[f"pts_within_{thr}"] == pytest.approx([1 / 4])
        # TP 1; FP: t=2 and t=3 of track 0 (too far), track 1 t=2 (occluded), track 1 t=3 (far) -> 1 / (4 + 4)
        assert m[f"jaccard_{thr}"] == pytest.approx([1 / 8])
    for thr in (8, 16):
        assert m[f"pts_within_{thr}"] == pytest.approx([3 / 4])
        assert m[f"jaccard_{thr}"] == pytest.approx([3 / 6])
    assert m["average_pts_within_thresh"] == pytest.approx([(3 * 0.25 + 2 * 0.75) / 5])
    assert m["average_jaccard"] == pytest.approx([(3 * 0.125 + 2 * 0.5) / 5])


def test_strided_mode_differs_on_same_data() -> None:
    m = tapvid_metrics(*_case(), query_mode="strided")
    # strided also scores track 1 at t=0 (before its query), a correct visible prediction.
    assert m["occlusion_accuracy"] == pytest.approx([5 / 6])
    assert m["pts_within_4"] == pytest.approx([2 / 5])
    assert m["pts_within_8"] == pytest.approx([4 / 5])
    assert m["jaccard_1"] == pytest.approx([2 / 9])
    assert m["jaccard_16"] == pytest.approx([4 / 7])
    assert m["average_jaccard"] == pytest.approx([(3 * 2 / 9 + 2 * 4 / 7) / 5])
    assert m["average_pts_within_thresh"] == pytest.approx([(3 * 0.4 + 2 * 0.8) / 5])


def test_threshold_is_strict() -> None:
    query, gt_occ, gt_tracks, pred_occ, pred_tracks = _case()
    pred_tracks = gt_tracks.copy()
    pred_tracks[0, :, :, 0] += 2.0  # every prediction exactly 2 px right
    m = tapvid_metrics(query, gt_occ, gt_tracks, np.zeros_like(pred_occ), pred_tracks, query_mode="first")
    assert m["pts_within_2"] == pytest.approx([0.0]) and m["pts_within_4"] == pytest.approx([1.0])
    assert m["jaccard_2"] == pytest.approx([0.0])


def test_metrics_are_per_video() -> None:
    query, gt_occ, gt_tracks, pred_occ, pred_tracks = _case()
    # video 1 is the hand-counted case, video 2 predicts its ground truth perfectly
    pairs = [(query, query), (gt_occ, gt_occ), (gt_tracks, gt_tracks), (pred_occ, gt_occ), (pred_tracks, gt_tracks)]
    m = tapvid_metrics(*(np.concatenate(p) for p in pairs), query_mode="first")
    assert m["occlusion_accuracy"] == pytest.approx([4 / 5, 1.0])
    assert m["average_jaccard"] == pytest.approx([0.275, 1.0])
    assert m["average_pts_within_thresh"].shape == (2,)


def test_nothing_scored_is_nan() -> None:
    query = np.array([[[3, 0, 0]]], dtype=np.float32)  # query on the last frame: 'first' scores nothing
    tracks = np.zeros((1, 1, 4, 2))
    occ = np.zeros((1, 1, 4), dtype=bool)
    m = tapvid_metrics(query, occ, tracks, occ, tracks, query_mode="first")
    assert np.isnan(m["occlusion_accuracy"][0]) and np.isnan(m["average_jaccard"][0])
    with pytest.raises(ValueError, match="query_mode"):
        tapvid_metrics(query, occ, tracks, occ, tracks, query_mode="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pred_tracks"):
        tapvid_metrics(query, occ, tracks, occ, tracks[..., :1, :], query_mode="first")


def _clip() -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(6)
    tracks = np.stack([np.stack([10 * n + t, np.full(6, 100 + n)], axis=-1) for n in range(3)])  # (3, 6, 2) (x, y)
    visible = np.array([[0, 1, 1, 0, 0, 1], [1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=bool)
    return tracks.astype(np.float32), visible


def test_sample_queries_first() -> None:
    qp, idx = sample_queries(*_clip(), query_mode="first")
    assert idx.tolist() == [0, 1]  # track 2 is never visible
    assert qp.tolist() == [[1, 100, 1], [0, 101, 10]]  # (t, y, x) at the first visible frame


def test_sample_queries_strided() -> None:
    qp, idx = sample_queries(*_clip(), query_mode="strided", stride=5)
    assert idx.tolist() == [1, 0, 1]  # frame 0: track 1; frame 5: tracks 0 and 1
    assert qp.tolist() == [[0, 101, 10], [5, 100, 5], [5, 101, 15]]
    qp2, idx2 = sample_queries(*_clip(), query_mode="strided", stride=2)
    assert idx2.tolist() == [1, 0] and qp2[:, 0].tolist() == [0, 2]


def test_rescale() -> None:
    tracks = np.array([[10.0, 20.0]])  # (x, y) in a 128-high, 64-wide frame
    assert rescale_tracks(tracks, (128, 64)).tolist() == [[40.0, 40.0]]
    assert rescale_query_points(np.array([[3.0, 20.0, 10.0]]), (128, 64)).tolist() == [[3.0, 40.0, 40.0]]
    # the frame's far edge maps to the far edge (pixel centres at +0.5)
    assert rescale_tracks(np.array([64.0, 128.0]), (128, 64)).tolist() == [256.0, 256.0]
