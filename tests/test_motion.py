"""The motion-sensitivity experiment (the paper's Figure 4): variants, first-frame tokens, the ratio, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures_runs import TWO_STEPS, WORLD, _ok, tiny_runs
from PIL import Image

from diffprobe.backbones.registry import load_backbone
from diffprobe.data.registry import open_dataset
from diffprobe.errors import InputError
from diffprobe.features.motion import (
    default_regions,
    first_frame_tokens,
    motion_ratio,
    motion_variants,
    token_change,
    token_regions,
)
from diffprobe.study.motion_cli import motion_cmd

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny video twin of tiny_runs and an image twin of the same tokenizer (two training steps)."""
    runs = tiny_runs(tmp_path_factory.getbasetemp())
    image = tmp_path_factory.getbasetemp() / "motion-image-twin"
    if not image.exists():
        _ok(["train", "--mode", "image", "--tokenizer", str(runs.tokenizer), "--out", str(image), "--dataset", WORLD,
             "--cache", str(runs.cache), "--quiet", *TWO_STEPS, "--set", "train.batch_size=2"])
    return {"video": runs.video, "image": image}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return open_dataset(WORLD).clips("test")[0]["video"]  # (9, 32, 32, 3) uint8


def test_variants_share_frame0_and_play_only_inside_their_region(clip: np.ndarray) -> None:
    regions, names = default_regions(32, 32)
    assert regions.shape == (4, 32, 32) and names == ("top-left", "top-right", "bottom-left", "bottom-right")
    assert (regions.sum(axis=0) == 1).all()  # a partition
    variants = motion_variants(clip, regions)
    assert variants.shape == (4, *clip.shape) and variants.dtype == np.uint8
    for k in range(4):
        np.testing.assert_array_equal(variants[k, 0], clip[0])
        np.testing.assert_array_equal(variants[k][:, regions[k]], clip[:, regions[k]])  # plays inside
        np.testing.assert_array_equal(variants[k][:, ~regions[k]], np.broadcast_to(clip[0][~regions[k]],
                                                                                  (9, *clip[0][~regions[k]].shape)))
    assert not np.array_equal(variants[0], variants[1])  # the clip does move, so the variants differ later


def test_thirds_and_token_regions_partition() -> None:
    regions, names = default_regions(32, 32, "thirds")
    assert names == ("left", "middle", "right") and (regions.sum(axis=0) == 1).all()
    assert regions[0, 0, :11].all() and regions[2, 0, 21:].all()
    tok = token_regions(regions, 4, 4)  # tokens of 8 px: columns 0 | 1, 2 | 3 (by the larger share)
    np.testing.assert_array_equal(tok[:, 0], [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    quad = token_regions(default_regions(32, 32)[0], 4, 4)
    np.testing.assert_array_equal(quad[0], np.pad(np.ones((2, 2), bool), ((0, 2), (0, 2))))
    with pytest.raises(InputError, match="unknown layout"):
        default_regions(32, 32, "halves")


def test_motion_ratio_definition() -> None:
    regions = token_regions(default_regions(4, 4)[0], 4, 4)  # (4, 4, 4): one quadrant of tokens per variant
    base = np.random.default_rng(0).normal(size=(4, 4, 8))  # (H_f, W_f, C)
    same = np.broadcast_to(base, (4, 4, 4, 8))
    assert motion_ratio(same, regions).ratio == 1.0  # 0 / 0 -> 1.0 by convention
    local = same.copy()
    for k in range(4):
        local[k][regions[k]] += 1.0  # a token moves only where its region plays: the maximum, K - 1
    assert motion_ratio(local, regions).ratio == pytest.approx(3.0)
    spread = same + np.arange(4.0)[:, None, None, None]  # every token moves the same in every variant
    assert motion_ratio(spread, regions).ratio == pytest.approx(1.0)
    np.testing.assert_allclose(token_change(spread)[:, 0, 0], [1.5 * np.sqrt(8), 0.5 * np.sqrt(8),
                                                             0.5 * np.sqrt(8), 1.5 * np.sqrt(8)])
    with pytest.raises(InputError, match="partition"):
        motion_ratio(local, np.ones((4, 4, 4), bool))
    with pytest.raises(InputError, match="K>=3"):
        motion_ratio(local[:2], regions[:2])


def test_image_twin_first_frame_tokens_identical_ratio_exactly_one(twins: dict[str, Path], clip: np.ndarray) -> None:
    backbone = load_backbone(f"walt:{twins['image']}", CPU).backbone
    regions = default_regions(32, 32)[0]
    tokens = first_frame_tokens(backbone, motion_variants(clip, regions), block=6, t=200.0, noise_seed=0)
    assert tokens.shape == (4, 4, 4, backbone.features(torch.from_numpy(clip[None]), torch.tensor([0]), [6], 0.0,
                                                       0)[6].shape[-1])
    for k in range(1, 4):
        np.testing.assert_array_equal(tokens[k], tokens[0])
    score = motion_ratio(tokens, token_regions(regions, 4, 4))
    assert score.ratio == 1.0 and score.inside == 0.0 and score.outside == 0.0


def test_video_twin_first_frame_tokens_see_later_motion(twins: dict[str, Path], clip: np.ndarray) -> None:
    """The 2-step tiny video twin: its first-frame tokens differ across the variants (an image model's do not); the
    changes are small (its adaLN-Zero gates have barely left 0) but larger where the region plays (ratio 1.41 on this
    clip at block 6; 1.42 over the 4 test clips)."""
    backbone = load_backbone(f"walt:{twins['video']}", CPU).backbone
    regions = default_regions(32, 32)[0]
    variants = motion_variants(clip, regions)
    tokens = first_frame_tokens(backbone, variants, block=6, t=0.0, noise_seed=0)
    assert all(not np.array_equal(tokens[k], tokens[0]) for k in range(1, 4))
    assert motion_ratio(tokens, token_regions(regions, 4, 4)).ratio > 1.2
    # block 0: the causal tokenizer encodes frame 0 alone; block 1: spatial windows, inside one latent frame
    for block in (0, 1):
        still = first_frame_tokens(backbone, variants, block=block, t=0.0, noise_seed=0)
        assert motion_ratio(still, token_regions(regions, 4, 4)).ratio == 1.0


def test_motion_command_end_to_end(twins: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # from another folder: the paths are given absolute
    results = {}
    for name, run in twins.items():
        out = tmp_path / f"motion-{name}"
        res = CliRunner().invoke(motion_cmd, ["--backbone", f"walt:{run}", "--block", "6", "--clips", "2",
                                              "--out", str(out)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "mean motion ratio over 2 clip(s)" in res.output
        data = json.loads((out / "motion.json").read_text())
        assert data["config"] == {"backbone": f"walt:{run}", "dataset": WORLD, "block": 6, "t": 0.0,
                                  "noise_seed": 0, "clips": 2, "regions": "quadrants"}
        assert [r["figure"] for r in data["clips"]] == ["fig_motion_clip-000.png", "fig_motion_clip-001.png"]
        assert data["mean_ratio"] == pytest.approx(np.mean([r["ratio"] for r in data["clips"]]))
        for r in data["clips"]:
            with Image.open(out / r["figure"]) as im:
                assert im.size[0] > 400 and im.size[1] > 400
        results[name] = data["mean_ratio"]
    assert results["image"] == 1.0 and results["video"] > 1.0


def test_motion_command_user_errors(twins: dict[str, Path], tmp_path: Path) -> None:
    res = CliRunner().invoke(motion_cmd, ["--backbone", f"walt:{twins['video']}", "--block", "6", "--clips", "99",
                                          "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and isinstance(res.exception, InputError) and "has 4 clips" in str(res.exception)
    res = CliRunner().invoke(motion_cmd, ["--backbone", f"walt:{twins['video']}", "--block", "9", "--out",
                                          str(tmp_path / "o")])
    assert isinstance(res.exception, InputError) and "out of range" in str(res.exception)


def test_a_motion_folder_of_another_run_is_not_overwritten(twins: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Through `diffprobe`: the same run again rewrites its folder; another block into it is refused in one line and
    the folder's results are kept."""
    from diffprobe.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["motion", "--backbone", f"walt:{twins['video']}", "--clips", "1", "--out", "m"]
    assert CliRunner().invoke(main, [*args, "--block", "6"]).exit_code == 0
    before = (tmp_path / "m" / "motion.json").read_bytes()
    assert CliRunner().invoke(main, [*args, "--block", "6"]).exit_code == 0
    other = CliRunner().invoke(main, [*args, "--block", "5"])
    assert other.exit_code == 2 and other.output.startswith("Error: ") and "another config" in other.output
    assert len(other.output.strip().splitlines()) == 1
    assert (tmp_path / "m" / "motion.json").read_bytes() == before
