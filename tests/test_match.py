"""The training-free matcher (readouts/match.py) and `diffprobe match` (study/match_cli.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from diffprobe.readouts.match import (
    MatchGrid,
    choose,
    feature_frames,
    hyperfeatures,
    match_grid,
    match_points,
    match_split,
)

SIZE = (32, 32)
SHIFT = (0.3, -0.7)  #: (x, y) pixels per frame
TINY = "probeworld:tiny@train_size=4,val_size=4,test_size=4,num_tracks=8"
#: 64x64 clips of 17 frames: at tiny's 32x32 the periodic wall textures defeat global matching (see docs/readouts.md)
SMALL = "probeworld:small@train_size=8,val_size=8,test_size=8,num_tracks=32"


def smooth_field(frames: int, shift: tuple[float, float], channels: int = 32, seed: int = 0) -> np.ndarray:
    """``(T, H, W, C)`` features, one token per pixel, of a smooth random field (sums of random low-frequency
    cosines) sampled at each pixel centre ``p - t * shift``: content at ``p`` in frame 0 is at ``p + t * shift`` in
    frame t."""
    g = np.random.default_rng(seed)
    k = g.normal(0.0, 1.0 / 30, (channels, 4, 2))  # cycles per pixel
    phase = g.uniform(0, 2 * np.pi, (channels, 4))
    h, w = SIZE
    out = []
    for t in range(frames):
        x, y = np.meshgrid(np.arange(w) + 0.5 - t * shift[0], np.arange(h) + 0.5 - t * shift[1])  # (H, W)
        arg = 2 * np.pi * (k[..., 0] * x[..., None, None] + k[..., 1] * y[..., None, None]) + phase  # (H, W, C, 4)
        out.append(np.cos(arg).sum(-1))
    return np.stack(out).astype(np.float32)  # (T, H, W, C)


QUERIES = np.array([[0, 12.3, 14.7], [0, 20.5, 9.1], [0, 15.0, 21.25], [2, 10.4, 18.8]], np.float32)  # (t, y, x)


def expected_tracks(frames: int) -> np.ndarray:
    """``(N, T, 2)`` (x, y) of :data:`QUERIES` under :data:`SHIFT`."""
    start = QUERIES[:, [2, 1]] - QUERIES[:, :1] * np.array(SHIFT)  # (N, 2) where each point is in frame 0
    return start[:, None] + np.arange(frames)[None, :, None] * np.array(SHIFT)  # (N, T, 2)


def test_matcher_recovers_a_known_subpixel_shift() -> None:
    frames = 5
    feats = smooth_field(frames, SHIFT)
    tracks, occluded = match_points(feats, QUERIES, SIZE, temperature=0.003, window=3.0, threshold=0.5, upsample=4)
    want = expected_tracks(frames)
    assert tracks.shape == (4, frames, 2) and occluded.shape == (4, frames)
    assert np.abs(tracks - want).max() < 0.05
    assert np.abs(QUERIES[:, None, [2, 1]] - want).max() > 2.0  # static points would be far off
    assert not occluded.any()


def test_matcher_flags_frames_where_the_point_is_replaced_by_noise() -> None:
    frames = 6
    feats = smooth_field(frames, SHIFT)
    want = expected_tracks(frames)
    g = np.random.default_rng(1)
    hidden = [(0, 2), (0, 4), (1, 3)]  # (query, frame)
    for n, t in hidden:  # a 7x7 pixel patch around the point becomes noise
        x, y = want[n, t].astype(int)
        feats[t, y - 3:y + 4, x - 3:x + 4] = g.normal(size=feats[t, y - 3:y + 4, x - 3:x + 4].shape)
    tracks, occluded = match_points(feats, QUERIES[:2], SIZE, temperature=0.003, window=3.0, threshold=0.9)
    flagged = {(int(n), int(t)) for n, t in zip(*np.nonzero(occluded), strict=True)}
    assert flagged == set(hidden)
    seen = ~occluded
    assert np.abs(tracks - want[:2])[seen].max() < 0.5


def test_queries_matched_in_chunks_give_the_same_tracks(monkeypatch) -> None:
    import diffprobe.readouts.match as match

    feats = torch.randn(3, 4, 4, 8, generator=torch.Generator().manual_seed(0))
    queries = np.c_[np.arange(10) % 3, np.random.default_rng(0).uniform(0, 16, (10, 2))].astype(np.float32)
    whole = match.match_grid(feats, queries, (16, 16), 3, [0.05, 0.2], [1.5])
    monkeypatch.setattr(match, "SIM_ELEMENTS", 3 * 3 * 16 * 16)  # 3 queries at once
    chunked = match.match_grid(feats, queries, (16, 16), 3, [0.05, 0.2], [1.5])
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b)


def test_feature_frames_follow_temporal_compression() -> None:
    assert feature_frames(9, 9).tolist() == list(range(9))
    assert feature_frames(9, 3).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]  # causal: frame 0 alone, then 4s
    assert feature_frames(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert feature_frames(7, 3).max() == 2


def test_hyperfeatures_average_seeds_and_normalise_each_block() -> None:
    g = torch.Generator().manual_seed(0)
    a0, a1 = torch.randn(2, 4, 4, 3, generator=g), torch.randn(2, 4, 4, 3, generator=g)
    b = 10 * torch.randn(2, 2, 2, 5, generator=g)  # a coarser block of larger norm
    out = hyperfeatures([[a0, a1], [b]])
    assert out.shape == (2, 4, 4, 8)
    torch.testing.assert_close(out[..., :3], torch.nn.functional.normalize((a0 + a1) / 2, dim=-1))
    unit_b = torch.nn.functional.normalize(b, dim=-1).permute(0, 3, 1, 2)  # (T, C, 2, 2): normalised before upsampling
    up = torch.nn.functional.interpolate(unit_b, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 3:], up.permute(0, 2, 3, 1))
    torch.testing.assert_close(out[:, 0, 0, 3:].norm(dim=-1), torch.ones(2))  # a corner is the corner token
    with pytest.raises(ValueError, match="frame counts"):
        hyperfeatures([[a0], [torch.randn(3, 4, 4, 3)]])


def test_choose_reads_only_the_validation_score() -> None:
    frames = 4
    feats = smooth_field(frames, SHIFT)
    queries, valid = QUERIES[None, :3], np.ones((1, 3), bool)
    grid = MatchGrid(temperatures=(0.003, 1.0), windows=(3.0,), quantiles=(0.5,))
    seen = []

    def score(preds: dict[str, np.ndarray]) -> float:  # prefers the sharper temperature, never-occluded threshold
        seen.append(preds)
        err = np.abs(preds["tracks"][0] - expected_tracks(frames)[:3]).mean()
        return -err + preds["visible"].mean()

    params, best = choose(grid, [feats], queries, valid, SIZE, frames, score)
    assert len(seen) == 2 * 1 * 2  # temperatures x windows x (never occluded, one quantile)
    assert (params.temperature, params.window, params.threshold) == (0.003, 3.0, -1.0)
    scores = [-np.abs(p["tracks"][0] - expected_tracks(frames)[:3]).mean() + p["visible"].mean() for p in seen]
    assert best == pytest.approx(max(scores))


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Probe World small's val / test targets and pixels@patch=4 features, and the static-points prior's metrics."""
    from diffprobe.backbones.registry import load_backbone
    from diffprobe.features.cache import FeatureCache
    from diffprobe.features.sources import ensure_features
    from diffprobe.tasks import make_task
    from diffprobe.tasks.roles import task_context, task_roles
    from diffprobe.tasks.runner import ensure_targets, prior_metrics
    from diffprobe.tasks.targets import load_targets

    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    roles = task_roles("point_tracking", SMALL)
    task = make_task("point_tracking", task_context(roles))
    backbone = load_backbone("pixels@patch=4", torch.device("cpu")).backbone
    out = {"task": task, "prior": prior_metrics(roles, task.name, cache, progress=False)[0]}
    for role in ("val", "test"):
        clips = roles[role].clips
        out[role] = load_targets(ensure_targets(task, clips, cache, progress=False), task.name)
        out[role + "_features"] = ensure_features(backbone, clips, task.view, [0], 0.0, 0, cache,
                                                  progress=False)[0].load_all()[1]
    return out


def test_matcher_beats_static_points_on_probe_world(small_world: dict) -> None:
    """The whole path with a real signal: pixels features, the setting chosen on val, AJ on test."""
    task, val, test = small_world["task"], small_world["val"], small_world["test"]
    size, frames = (task.ctx.height, task.ctx.width), task.ctx.frames
    params, _ = choose(MatchGrid(), list(small_world["val_features"]), val["query"], val["valid"], size, frames,
                       lambda p: task.metrics(p, val)["average_jaccard"])
    tracks, peaks = match_split(list(small_world["test_features"]), test["query"], test["valid"], size, frames,
                                [params.temperature], [params.window])
    got = task.metrics({"tracks": tracks[0, 0], "visible": peaks >= params.threshold}, test)
    prior = small_world["prior"]
    # measured at this commit: matcher AJ 0.176, static points 0.127 (docs/readouts.md)
    assert got["average_jaccard"] > prior["average_jaccard"] + 0.02
    assert got["average_pts_within_thresh"] > prior["average_pts_within_thresh"]


def test_match_cli_end_to_end_and_a_bad_block(tmp_path, monkeypatch) -> None:
    from diffprobe.cli import main
    from diffprobe.study.match_cli import match_cmd
    from diffprobe.study.store import MATCH_TAG, ResultsStore

    monkeypatch.chdir(tmp_path)
    args = ["--backbone", "pixels@patch=4", "--dataset", TINY, "--block", "0", "--cache", "cache", "--quiet",
            "--device", "cpu"]
    result = CliRunner().invoke(match_cmd, args)
    assert result.exit_code == 0, result.output
    assert "point_tracking (match) on pixels-p4-u1 block 0" in result.output
    assert "average_jaccard=" in result.output and "occlusion_accuracy=" in result.output
    with ResultsStore(tmp_path / "results.sqlite") as store:
        rows = store.query(task="point_tracking")
    assert {r["metric"] for r in rows} >= {"average_jaccard", "average_pts_within_thresh", "occlusion_accuracy"}
    assert {r["config_hash"][:len(MATCH_TAG)] for r in rows} == {MATCH_TAG}
    again = CliRunner().invoke(match_cmd, args)
    assert again.exit_code == 0 and again.output.startswith("already in results.sqlite")

    # through diffprobe itself: a mistake is one line
    bad = CliRunner().invoke(main, ["match", *args[:4], "--block", "3", *args[6:]])
    assert bad.exit_code == 2
    assert bad.output.startswith("Error: ") and bad.output.count("\n") == 1, bad.output


def _dense_soft_argmax(feats: np.ndarray, queries: np.ndarray, size: tuple[int, int], frames: int, temp: float,
                       radius: float, upsample: int) -> np.ndarray:
    """The matcher by hand: the whole grid's softmax (cells farther than ``radius`` tokens from the peak at -inf),
    one (query, frame) at a time, in numpy; features upsampled with torch's bilinear, as the definition says."""
    h, w = size
    t_f, h_f, w_f, c = feats.shape
    fmap = torch.from_numpy(feats).permute(0, 3, 1, 2)
    up = F.interpolate(fmap, size=(h * upsample, w * upsample), mode="bilinear", align_corners=False).numpy()
    up /= np.linalg.norm(up, axis=1, keepdims=True)  # (T_f, C, gh, gw)
    ys, xs = np.meshgrid((np.arange(h * upsample) + 0.5) / upsample, (np.arange(w * upsample) + 0.5) / upsample,
                         indexing="ij")
    frame_of = feature_frames(frames, t_f)
    out = np.zeros((len(queries), frames, 2))
    for n, (t, y, x) in enumerate(queries):
        grid = torch.tensor([[[[2 * x / w - 1, 2 * y / h - 1]]]], dtype=torch.float32)
        q = F.grid_sample(fmap[frame_of[int(round(t))]][None], grid, padding_mode="border",
                          align_corners=False)[0, :, 0, 0].numpy()
        q /= np.linalg.norm(q)
        for f in range(frames):
            sim = np.einsum("c,chw->hw", q, up[frame_of[f]])
            py, px = np.unravel_index(sim.argmax(), sim.shape)
            d2 = ((xs - xs[py, px]) / (w / w_f)) ** 2 + ((ys - ys[py, px]) / (h / h_f)) ** 2
            logits = np.where(d2 <= radius ** 2, sim / temp, -np.inf)
            weight = np.exp(logits - logits.max())
            weight /= weight.sum()
            out[n, f] = (weight * xs).sum(), (weight * ys).sum()
        out[n, int(round(t))] = x, y
    return out


@pytest.mark.parametrize(("grid", "upsample"), [((8, 24), 1), ((16, 24), 2)])
def test_the_windowed_soft_argmax_equals_the_dense_one_by_hand(grid: tuple[int, int], upsample: int) -> None:
    """The matcher reads only the box around each peak where the window is smaller than the grid: the tracks equal
    the whole grid's masked softmax, for windows inside the grid, crossing its border and larger than it (the dense
    path), with tokens of 2 x 1 px and of 1 px at two cells a pixel. (Tokens of a cell or two, so that the bilinear
    upsampling is nowhere flat over several cells: a flat border would tie peaks, which either may break.)"""
    g = np.random.default_rng(3)
    feats = g.normal(size=(3, *grid, 8)).astype(np.float32)  # (T_f, H_f, W_f, C): a causal 1 + 2k grid of 5 frames
    queries = np.c_[g.integers(0, 5, 12), g.uniform(0, 16, 12), g.uniform(0, 24, 12)].astype(np.float32)
    temps, windows = [0.05, 0.5], [0.7, 1.5, 3.0, 40.0]
    tracks, _ = match_grid(feats, queries, (16, 24), 5, temps, windows, upsample=upsample)
    for (i, temp), (j, radius) in itertools.product(enumerate(temps), enumerate(windows)):
        want = _dense_soft_argmax(feats, queries, (16, 24), 5, temp, radius, upsample)
        np.testing.assert_allclose(tracks[i, j].numpy(), want, atol=1e-4)
