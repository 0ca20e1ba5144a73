"""The cross-attention readout, its query encoders, decoders, losses and probe bank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffprobe.config import ConfigError
from diffprobe.readouts import (
    AttentionReadout,
    BoxQueries,
    FrameQueries,
    LearnedQueries,
    PatchQueries,
    PointQueries,
    Probe,
    ReadoutConfig,
    box_loss,
    class_logits,
    classification_loss,
    depth_l1_loss,
    depth_loss,
    generalized_box_iou,
    geodesic_angle,
    head_to_boxes,
    head_to_pose,
    head_to_tracks,
    logits_to_classes,
    matrix_to_rotation_6d,
    normalise_query_points,
    patch_centres,
    patches_to_map,
    pose_loss,
    rotation_6d_to_matrix,
    sample_tokens,
    silog_loss,
    tracking_loss,
)

CFG = ReadoutConfig(width=32, heads=4, mlp_ratio=2.0, num_queries=2, fourier_bands=4)
B, GRID, C = 4, (3, 2, 2), 16  # features (B, T_f, H_f, W_f, C)
T, H, W, P = 4, 8, 8, 4  # output frames, pixels, depth patch


def _features(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, *GRID, C, generator=torch.Generator().manual_seed(seed))


def _rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) via the matrix exponential of the skew matrix."""
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*aa.shape[:-1], 3, 3)
    return torch.linalg.matrix_exp(skew)


# ---- config -----------------------------------------------------------------------------------------------------
def test_config_preset_and_validation() -> None:
    tiny = ReadoutConfig.preset("tiny")
    assert tiny.width == 64 and tiny.width % tiny.heads == 0
    with pytest.raises(ConfigError, match="heads"):
        ReadoutConfig(width=30, heads=4)
    with pytest.raises(ConfigError, match="widht"):
        ReadoutConfig.from_dict({"widht": 32})


# ---- shapes -----------------------------------------------------------------------------------------------------
def test_every_query_type_gives_task_shapes() -> None:
    torch.manual_seed(0)
    feats = _features()
    cases = [
        (LearnedQueries(CFG, num_classes=7), (), (B, 2, 7)),
        (PatchQueries(CFG, T, H, W, P), (), (B, T * (H // P) * (W // P), P * P)),
        (FrameQueries(CFG, T), (), (B, T, 9)),
        (PointQueries(CFG, T), (torch.rand(B, 5, 3),), (B, 5 * T, 3)),
        (BoxQueries(CFG, T), (torch.rand(B, 2, 4), torch.zeros(B, 2)), (B, 2 * T, 4)),
    ]
    tokens = torch.randn(B, *GRID, CFG.width)
    for enc, inputs, shape in cases:
        reads = getattr(enc, "reads_features", False)
        q = enc(tokens, *inputs) if reads else enc(*inputs) if inputs else enc(B)
        assert q.shape == (B, shape[1], CFG.width)
        out = Probe(CFG, enc, C, GRID)(feats, *inputs)
        assert out.shape == shape, type(enc).__name__
        assert torch.isfinite(out).all()
    out = Probe(CFG, LearnedQueries(CFG, 7), C, GRID)(feats)
    assert class_logits(out).shape == (B, 7) and logits_to_classes(class_logits(out)).shape == (B,)
    depth = patches_to_map(torch.randn(B, T * 4, P * P), T, H, W, P)
    assert depth.shape == (B, T, H, W)
    rot, trans = head_to_pose(torch.randn(B, T, 9))
    assert rot.shape == (B, T, 3, 3) and trans.shape == (B, T, 3)
    out = torch.randn(B, 5 * T, 3)
    xy, vis = head_to_tracks(out, T)
    assert xy.shape == (B, 5, T, 2) and vis.shape == (B, 5, T)
    assert torch.equal(xy[:, 1, 2], out[:, T + 2, :2])  # point-major: query n * T + t answers point n in frame t
    boxes = head_to_boxes(torch.randn(B, 2 * T, 4), T)
    assert boxes.shape == (B, 2, T, 4)
    assert (boxes[..., 2:] >= boxes[..., :2]).all()


def test_sample_tokens_reads_the_grid_at_token_centres_and_interpolates() -> None:
    t_f, h_f, w_f = GRID
    tokens = torch.randn(1, t_f, h_f, w_f, 6)
    # token (j, i, k) sits at time j / (T_f - 1) and at the centre ((i + 0.5) / H_f, (k + 0.5) / W_f) of its cell
    coords = torch.tensor([[[0.0, 0.5 / h_f, 0.5 / w_f], [1.0, (h_f - 0.5) / h_f, 1.5 / w_f]]])
    got = sample_tokens(tokens, coords)
    assert torch.allclose(got[0, 0], tokens[0, 0, 0, 0], atol=1e-6)
    assert torch.allclose(got[0, 1], tokens[0, -1, -1, 1], atol=1e-6)
    # halfway between two token frames and two columns: the mean of the four tokens
    mid = torch.tensor([[[0.5 / (t_f - 1), 0.5 / h_f, 1.0 / w_f]]])
    want = tokens[0, 0:2, 0, 0:2].mean(dim=(0, 1))
    assert torch.allclose(sample_tokens(tokens, mid)[0, 0], want, atol=1e-6)


def test_point_queries_carry_the_feature_at_the_query_point() -> None:
    torch.manual_seed(0)
    enc = PointQueries(CFG, T)
    tokens = torch.randn(1, *GRID, CFG.width)
    points = torch.rand(1, 2, 3)
    changed = tokens.clone()
    changed[0, :, :, :] += 1.0  # a different appearance everywhere changes every query
    assert not torch.allclose(enc(changed, points), enc(tokens, points))


def test_batch_feature_norm_standardises_each_channel() -> None:
    torch.manual_seed(0)
    cfg = CFG.replace(feature_norm="batch")
    readout = AttentionReadout(cfg, C, GRID, out_dim=3).train()
    feats = _features() * torch.linspace(0.1, 10, C) + 5.0  # channels on very different scales
    normed = readout.feature_norm(feats.reshape(B, -1, C).transpose(1, 2))  # (B, C, N)
    assert torch.allclose(normed.mean(dim=(0, 2)), torch.zeros(C), atol=1e-5)
    assert torch.allclose(normed.std(dim=(0, 2), unbiased=False), torch.ones(C), atol=1e-3)
    assert readout(feats, torch.randn(B, 2, cfg.width)).shape == (B, 2, 3)


def test_wrong_feature_grid_is_an_error() -> None:
    readout = AttentionReadout(CFG, C, GRID, out_dim=3)
    with pytest.raises(ValueError, match="grid"):
        readout(torch.randn(1, 3, 4, 2, C), torch.randn(1, 1, CFG.width))


# ---- symmetry ---------------------------------------------------------------------------------------------------
def _random_head(readout: AttentionReadout) -> AttentionReadout:
    """The head starts at zero (see the next test); symmetry tests need it to show what the readout computes."""
    with torch.no_grad():
        readout.head.weight.normal_()
    return readout


def test_an_untrained_readout_outputs_the_no_information_baseline() -> None:
    torch.manual_seed(0)
    probe = Probe(CFG, PointQueries(CFG, T), C, GRID)
    points = torch.rand(B, 5, 3)  # normalised (t, y, x)
    xy, _ = head_to_tracks(probe(_features(), points), T, origin=points[..., [2, 1]])
    assert torch.equal(xy, points[..., None, [2, 1]].expand(-1, -1, T, -1))  # static points
    rot, trans = head_to_pose(Probe(CFG, FrameQueries(CFG, T), C, GRID)(_features()))
    assert torch.allclose(rot, torch.eye(3).expand(B, T, 3, 3), atol=1e-6) and not trans.any()  # no camera motion
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6]]).expand(B, 2, 4)
    out = Probe(CFG, BoxQueries(CFG, T), C, GRID)(_features(), boxes, torch.zeros(B, 2))
    assert torch.allclose(head_to_boxes(out, T, origin=boxes), boxes[:, :, None].expand(-1, -1, T, -1))


def test_readout_is_permutation_equivariant_in_queries() -> None:
    torch.manual_seed(0)
    readout = _random_head(AttentionReadout(CFG, C, GRID, out_dim=5)).eval()
    feats, queries = _features(), torch.randn(B, 6, CFG.width)
    perm = torch.randperm(6)
    out = readout(feats, queries)
    assert torch.allclose(readout(feats, queries[:, perm]), out[:, perm], atol=1e-5)


def test_position_embedding_makes_token_order_matter() -> None:
    torch.manual_seed(0)
    readout = _random_head(AttentionReadout(CFG, C, GRID, out_dim=5)).eval()
    feats, queries = _features(), torch.randn(B, 3, CFG.width)
    flat = feats.reshape(B, -1, C)
    perm = torch.randperm(flat.shape[1])
    shuffled = flat[:, perm].reshape(feats.shape)
    assert not torch.allclose(readout(shuffled, queries), readout(feats, queries), atol=1e-4)
    with torch.no_grad():  # without the position embedding, attention cannot see token order
        for table in (readout.pos.t_table, readout.pos.h_table, readout.pos.w_table):
            table.zero_()
    assert torch.allclose(readout(shuffled, queries), readout(feats, queries), atol=1e-5)


# ---- coordinates and decoding -----------------------------------------------------------------------------------
def test_coordinates_are_normalised_tapvid_style() -> None:
    pts = torch.tensor([[0.0, 16.0, 8.0], [8.0, 32.0, 0.0]])  # (t, y, x) pixels, 9 frames, 32x32
    assert torch.allclose(normalise_query_points(pts, 9, 32, 32), torch.tensor([[0.0, 0.5, 0.25], [1.0, 1.0, 0.0]]))
    centres = patch_centres(T, H, W, P)  # (T*2*2, 3)
    assert centres.shape == (T * 4, 3)
    assert torch.allclose(centres[1], torch.tensor([0.0, 0.25, 0.75]))  # frame 0, row 0, column 1
    assert torch.allclose(centres[-1], torch.tensor([1.0, 0.75, 0.75]))


def test_patches_land_where_their_query_points() -> None:
    centres = patch_centres(T, H, W, P)  # (Q, 3) as (t, y, x)
    for axis, dim in ((1, -2), (2, -1)):  # y varies along rows, x along columns
        out = centres[None, :, axis, None].expand(1, -1, P * P)  # each patch filled with its centre coordinate
        got = patches_to_map(out, T, H, W, P)[0]  # (T, H, W)
        pix = (torch.arange(H if dim == -2 else W) // P + 0.5) / (H // P)
        want = pix[:, None].expand(H, W) if dim == -2 else pix[None, :].expand(H, W)
        assert torch.allclose(got, want.expand(T, H, W))
    out = centres[None, :, 0, None].expand(1, -1, P * P)
    assert torch.allclose(patches_to_map(out, T, H, W, P)[0, :, 0, 0], torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))


# ---- rotations --------------------------------------------------------------------------------------------------
def test_6d_gives_proper_rotations_and_round_trips() -> None:
    rot = rotation_6d_to_matrix(torch.randn(64, 6, generator=torch.Generator().manual_seed(1)))
    eye = torch.eye(3).expand(64, 3, 3)
    assert torch.allclose(rot.transpose(-1, -2) @ rot, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(64), atol=1e-5)
    known = _rot_z(0.7) @ _axis_angle_to_matrix(torch.tensor([0.3, -0.2, 0.1]))
    assert torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(known)), known, atol=1e-6)
    a1, a2 = known[:, 0], known[:, 1]
    skewed = torch.cat([2.5 * a1, 0.5 * a2 + 3.0 * a1])  # same span, not orthonormal: Gram-Schmidt recovers it
    assert torch.allclose(rotation_6d_to_matrix(skewed), known, atol=1e-5)
    assert geodesic_angle(known, known @ _rot_z(0.4)).item() == pytest.approx(0.4, abs=1e-3)


# ---- losses against hand-computed values ------------------------------------------------------------------------
def test_classification_loss_by_hand() -> None:
    loss = classification_loss(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 2)), rel=1e-6)


def test_depth_losses_by_hand() -> None:
    # two frames of 1x3 pixels; the last pixel of frame 0 has no depth (0) and is ignored
    target = torch.tensor([[[[1.0, 1.0, 0.0]], [[2.0, 2.0, 2.0]]]])  # (1, 2, 1, 3)
    pred = torch.log(torch.tensor([[[[1.0, 2.0, 5.0]], [[2.0, 2.0, 2.0]]]]))
    l2 = math.log(2) ** 2
    frame0 = l2 / 2 - 0.5 * (math.log(2) / 2) ** 2  # mean(d^2) - 0.5 mean(d)^2 with d = (0, log 2)
    assert silog_loss(pred, target).item() == pytest.approx((frame0 + 0.0) / 2, rel=1e-5)
    assert depth_loss(pred, target).item() == pytest.approx((frame0 + 0.0) / 2, rel=1e-5)  # silog is the default
    assert silog_loss(pred + 3.0, target, lam=1.0).item() == pytest.approx(
        silog_loss(pred, target, lam=1.0).item(), abs=1e-5
    )  # lam = 1: blind to a global scale
    assert depth_l1_loss(pred, target).item() == pytest.approx(1.0 / 5, rel=1e-5)  # |2 - 1| over 5 valid pixels
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[0, 0, 0, 1] = False  # also drop the wrong pixel: everything left is exact
    assert depth_loss(pred, target, valid, kind="l1").item() == pytest.approx(0.0, abs=1e-6)


def test_pose_loss_by_hand() -> None:
    pred_rot, rot = torch.eye(3)[None, None], _rot_z(0.5)[None, None]  # (1, 1, 3, 3)
    loss = pose_loss(pred_rot, torch.zeros(1, 1, 3), rot, torch.tensor([[[1.0, 2.0, 2.0]]]))
    assert loss.item() == pytest.approx(0.5 + 9.0, abs=1e-4)
    loss = pose_loss(pred_rot, torch.zeros(1, 1, 3), rot, torch.tensor([[[1.0, 2.0, 2.0]]]), translation_weight=0.1)
    assert loss.item() == pytest.approx(0.5 + 0.9, abs=1e-4)


def test_tracking_loss_by_hand() -> None:
    delta = 1 / 64
    pred = torch.zeros(1, 1, 2, 2)  # (B, N, T, 2)
    tracks = torch.tensor([[[[0.1, 0.0], [9.0, 9.0]]]])  # frame 1 is occluded: its huge error must not count
    visible = torch.tensor([[[True, False]]])
    logits = torch.zeros(1, 1, 2)
    expected = (0.1 - delta / 2) / 2 + math.log(2)  # smooth-L1 over 2 visible coordinates + BCE at logit 0
    assert tracking_loss(pred, logits, tracks, visible, delta=delta).item() == pytest.approx(expected, rel=1e-5)
    small = torch.tensor([[[[0.005, 0.0], [0.0, 0.0]]]])  # below delta: quadratic branch 0.5 e^2 / delta
    expected = 0.5 * 0.005**2 / delta / 2 + math.log(2)
    assert tracking_loss(pred, logits, small, visible, delta=delta).item() == pytest.approx(expected, rel=1e-5)


def test_box_losses_by_hand() -> None:
    a, b = torch.tensor([0.0, 0.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 3.0, 3.0])
    giou = 1 / 7 - 2 / 9  # intersection 1, union 7, hull 9
    assert generalized_box_iou(a, b).item() == pytest.approx(giou, rel=1e-6)
    assert generalized_box_iou(a, a).item() == pytest.approx(1.0)
    pred = torch.stack([a, a])[None, None]  # (1, 1, T=2, 4)
    target = torch.stack([b, b + 10.0])[None, None]
    visible = torch.tensor([[[True, False]]])
    expected = 5.0 * 1.0 + 2.0 * (1.0 - giou)
    assert box_loss(pred, target, visible).item() == pytest.approx(expected, rel=1e-6)


# ---- a readout overfits a tiny batch on every task --------------------------------------------------------------
def _overfit(probe: Probe, loss_fn, inputs: tuple = (), steps: int = 200, lr: float = 3e-3) -> tuple[float, float]:
    feats = _features()
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(probe(feats, *inputs))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], sum(losses[-5:]) / 5


def _targets() -> dict[str, torch.Tensor]:
    """Targets that are functions of the fixed random features."""
    g = torch.Generator().manual_seed(2)
    feats = _features()
    pooled = feats.mean((1, 2, 3))  # (B, C)
    motion = (feats[:, -1] - feats[:, 0]).mean((1, 2))  # (B, C)
    per_frame = F.interpolate(feats.mean((2, 3)).transpose(1, 2), size=T, mode="linear").transpose(1, 2)  # (B, T, C)
    grid = F.interpolate(feats[..., 0][:, None], size=(T, H, W), mode="trilinear")[:, 0]  # (B, T, H, W)
    start = torch.rand(B, 2, 2, generator=g) * 0.5 + 0.25  # (B, N, 2) xy in [0.25, 0.75]
    velocity = 0.2 * torch.tanh(pooled[:, None, :2] + start)  # (B, N, 2), differs per point
    time = torch.linspace(0, 1, T)[None, None, :, None]  # (1, 1, T, 1)
    tracks = start[:, :, None] + time * velocity[:, :, None]  # (B, N, T, 2)
    visible = torch.rand(B, 2, T, generator=g) > 0.3
    visible[..., 0] = True
    size = 0.3 + 0.2 * torch.sigmoid(pooled[:, None, 2:4])  # (B, 1, 2)
    boxes = torch.cat([tracks, tracks + size[:, :, None]], dim=-1)  # (B, N, T, 4)
    return {
        "label": (pooled @ torch.randn(C, 5, generator=g)).argmax(-1),
        "action": (motion @ torch.randn(C, 4, generator=g)).argmax(-1),
        "depth": torch.exp(0.5 * torch.tanh(grid)) + 1.0,
        "rot": _axis_angle_to_matrix(0.6 * torch.tanh(per_frame[..., :3])),
        "trans": torch.tanh(per_frame[..., 3:6]),
        "query": torch.cat([torch.zeros(B, 2, 1), start.flip(-1)], dim=-1),  # (t=0, y, x)
        "tracks": tracks,
        "visible": visible,
        "boxes": boxes,
    }


@pytest.fixture
def one_thread():
    """Tiny models train several times faster on one thread than on a busy shared pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_readout_overfits_a_tiny_batch_on_every_task(one_thread) -> None:
    torch.manual_seed(0)
    y = _targets()
    runs = {
        "image classification": _overfit(
            Probe(CFG, LearnedQueries(CFG, 5), C, GRID), lambda o: classification_loss(class_logits(o), y["label"])
        ),
        "action recognition": _overfit(
            Probe(CFG, LearnedQueries(CFG, 4), C, GRID), lambda o: classification_loss(class_logits(o), y["action"])
        ),
        "depth": _overfit(
            Probe(CFG, PatchQueries(CFG, T, H, W, P), C, GRID),
            lambda o: depth_loss(patches_to_map(o, T, H, W, P), y["depth"]),
        ),
        "camera pose": _overfit(
            Probe(CFG, FrameQueries(CFG, T), C, GRID), lambda o: pose_loss(*head_to_pose(o), y["rot"], y["trans"])
        ),
        "point tracking": _overfit(
            Probe(CFG, PointQueries(CFG, T), C, GRID),
            lambda o: tracking_loss(*head_to_tracks(o, T), y["tracks"], y["visible"]),
            (y["query"],),
        ),
        "box tracking": _overfit(
            Probe(CFG, BoxQueries(CFG, T), C, GRID),
            lambda o: box_loss(head_to_boxes(o, T, origin=y["boxes"][:, :, 0]), y["boxes"], y["visible"]),
            (y["boxes"][:, :, 0], torch.zeros(B, 2)), steps=400,
        ),
    }
    for task, (first, last) in runs.items():
        assert last < first / 10, f"{task}: loss {first:.4f} -> {last:.4f}"
