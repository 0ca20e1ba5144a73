"""Depth, camera pose, box IoU and top-1 metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from diffprobe.metrics import (
    box_iou,
    depth_metrics,
    invert_rigid,
    mean_box_iou,
    pose_errors,
    relative_poses,
    top1_accuracy,
)

# ---- depth --------------------------------------------------------------------------------------


def test_depth_hand_values() -> None:
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # the 0 is invalid
    pred = np.array([[2.0, 1.0], [4.0, 99.0]])
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(2 / 3))
    # ratios 2, 2, 1: only the exact pixel is under 1.25, 1.5625 and 1.953125
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    m = depth_metrics(pred, gt, valid=np.array([[True, False], [True, True]]))
    assert m["abs_rel"] == pytest.approx(0.5) and m["delta1"] == pytest.approx(0.5)


def test_depth_scale_alignment_is_exact_per_image() -> None:
    gt = np.array([[[1.0, 2.0], [4.0, 8.0]], [[3.0, 1.0], [2.0, np.nan]]])  # (2, 2, 2); a NaN gt is invalid
    pred = np.stack([gt[0] / 2, gt[1] * 3])  # each image off by its own scale
    raw = depth_metrics(pred, gt)
    assert raw["abs_rel"] == pytest.approx((0.5 + 2.0) / 2)  # per-image means, then the mean over images
    aligned = depth_metrics(pred, gt, align="scale")
    assert aligned["abs_rel"] == pytest.approx(0.0, abs=1e-12) and aligned["delta1"] == 1.0
    assert aligned["rmse"] == pytest.approx(0.0, abs=1e-12)


def test_depth_scale_shift_alignment() -> None:
    gt = np.array([[1.0, 2.0, 4.0, 8.0]])
    pred = 2 * gt - 3  # [-1, 1, 5, 13]: an affine map, recovered only with a shift
    assert depth_metrics(pred, gt, align="scale_shift")["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    s = 125 / 196  # sum(p g) / sum(p²) = (−1 + 2 + 20 + 104) / (1 + 1 + 25 + 169)
    expected = np.mean(np.abs(s * pred[0] - gt[0]) / gt[0])
    assert depth_metrics(pred, gt, align="scale")["abs_rel"] == pytest.approx(expected)
    # a non-positive prediction never counts as within a δ threshold
    assert depth_metrics(-np.ones((1, 2)), np.ones((1, 2)))["delta3"] == 0.0


def test_depth_no_valid_pixels() -> None:
    m = depth_metrics(np.ones((2, 2)), np.zeros((2, 2)))
    assert np.isnan(m["abs_rel"])
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="align"):
        depth_metrics(np.ones((2, 2)), np.ones((2, 2)), align="affine")  # type: ignore[arg-type]


# ---- camera pose --------------------------------------------------------------------------------


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _pose(rot: np.ndarray, trans: tuple[float, float, float]) -> np.ndarray:
    p = np.eye(4)
    p[:3, :3], p[:3, 3] = rot, trans
    return p


def test_relative_poses_hand_value() -> None:
    e0 = _pose(np.eye(3), (1, 0, 0))
    e1 = _pose(_rot("z", 90), (0, 0, 2))
    rel = relative_poses(np.stack([e0, e1]))
    np.testing.assert_allclose(rel[0], np.eye(4), atol=1e-12)
    # E1 inv(E0) = [Rz, tz − Rz t0] with Rz (1, 0, 0) = (0, 1, 0)
    np.testing.assert_allclose(rel[1], _pose(_rot("z", 90), (0, -1, 2)), atol=1e-12)
    # it maps camera-0 coordinates of a world point to its camera-1 coordinates
    x = np.array([0.3, -2.0, 5.0, 1.0])
    np.testing.assert_allclose(rel[1] @ (e0 @ x), e1 @ x, atol=1e-12)
    np.testing.assert_allclose(invert_rigid(e1) @ e1, np.eye(4), atol=1e-12)


def test_pose_errors_known_angles() -> None:
    gt = np.stack([np.eye(4), _pose(_rot("z", 90), (0, 0, 2)), _pose(_rot("x", 45), (1, 0, 0))])
    pred = np.stack([_pose(_rot("y", 70), (5, 5, 5)),  # frame 0 is the reference: never scored
                     _pose(_rot("z", 60), (0, 0, 4)),  # 30° off, 2 units off, same direction
                     _pose(np.eye(3), (0, 1, 0))])  # 45° off, √2 off, orthogonal direction
    e = pose_errors(pred, gt)
    assert e["rotation_error_deg"] == pytest.approx((30 + 45) / 2)
    assert e["translation_error"] == pytest.approx((2 + np.sqrt(2)) / 2)
    assert e["translation_angle_deg"] == pytest.approx((0 + 90) / 2)


def test_pose_translation_direction_edge_cases() -> None:
    still = np.stack([np.eye(4), np.eye(4)])
    assert np.isnan(pose_errors(still, still)["translation_angle_deg"])  # no true motion: no direction
    moving = np.stack([np.eye(4), _pose(np.eye(3), (0, 0, 1))])
    assert pose_errors(still, moving)["translation_angle_deg"] == pytest.approx(90.0)
    same = pose_errors(moving, moving)
    assert same == {"rotation_error_deg": 0.0, "translation_error": 0.0, "translation_angle_deg": 0.0}
    with pytest.raises(ValueError, match="2 frames"):
        pose_errors(still[:1], still[:1])


# ---- boxes --------------------------------------------------------------------------------------


def test_box_iou_hand_values() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 2], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 4, 4], [1, 2, 3, 5]], float)
    b = np.array([[1, 1, 3, 3], [2, 0, 6, 2], [2, 2, 3, 3], [1, 0, 2, 1], [1, 1, 3, 3], [1, 2, 3, 5]], float)
    # overlap 1 of union 7; 4 of 12; disjoint; touching edge; contained 4 of 16; identical
    np.testing.assert_allclose(box_iou(a, b), [1 / 7, 1 / 3, 0, 0, 0.25, 1])
    assert box_iou(a[:2], b[0]).shape == (2,)  # broadcasts
    assert box_iou(np.zeros(4), np.zeros(4)) == 0.0  # empty union


def test_mean_box_iou_visible_frames() -> None:
    gt = np.array([[[0, 0, 2, 2]] * 3, [[0, 0, 4, 4]] * 3], float)  # (K=2, T=3, 4)
    pred = np.array([[[0, 0, 2, 2], [1, 1, 3, 3], [9, 9, 9, 9]],
                     [[5, 5, 6, 6], [1, 1, 3, 3], [0, 0, 4, 3]]], float)
    vis = np.array([[True, True, False], [True, True, True]])
    # frame 0 skipped; box 0 frame 2 invisible -> 1/7, 1/4, 3/4
    assert mean_box_iou(pred, gt, vis) == pytest.approx((1 / 7 + 1 / 4 + 3 / 4) / 3)
    assert mean_box_iou(pred, gt, vis, skip_first=False) == pytest.approx((1 + 1 / 7 + 0 + 1 / 4 + 3 / 4) / 5)
    assert vis[0, 0]  # the caller's mask is not modified
    assert np.isnan(mean_box_iou(pred, gt, np.zeros((2, 3), bool)))


# ---- classification -----------------------------------------------------------------------------


def test_top1_accuracy() -> None:
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.5, 0.5, 0.1], [0.0, 0.0, 3.0]])
    labels = np.array([1, 1, 0, 0])
    assert top1_accuracy(logits, labels) == pytest.approx(2 / 4)  # row 2 ties -> class 0 (correct)
    assert top1_accuracy(np.array([2, 1, 0]), np.array([2, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="integer"):
        top1_accuracy(np.array([1.0, 0.0]), np.array([1, 0]))
    with pytest.raises(ValueError, match="empty"):
        top1_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int))


def test_relative_poses_map_camera0_to_camera_t() -> None:
    def rot_z(angle: float) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    w2c = np.tile(np.eye(4), (2, 1, 1))  # (T=2, 4, 4)
    w2c[0, :3, :3], w2c[0, :3, 3] = rot_z(0.3), [1.0, 0.0, 0.0]
    w2c[1, :3, :3], w2c[1, :3, 3] = rot_z(0.8), [1.0, 2.0, 0.0]
    rel = relative_poses(w2c)
    assert np.allclose(rel[0], np.eye(4), atol=1e-9)
    assert np.allclose(rel[1, :3, :3], rot_z(0.5), atol=1e-9)
    point_world = np.array([0.2, -0.4, 1.5, 1.0])
    assert np.allclose(rel[1] @ (w2c[0] @ point_world), w2c[1] @ point_world, atol=1e-9)
