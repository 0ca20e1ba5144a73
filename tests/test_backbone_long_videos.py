"""Long clips in windows of the model's length (``frames`` / ``window=tile`` / ``overlap`` of ``cogvideox``, ``wan``,
``latte``): end-to-end windows are the windows run alone, concatenated; overlapping windows are stitched per frame
from the window where the frame is furthest from an edge, onto the clip's own latent grid; mistakes are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hf_models_dit import random_clip, save_tiny_cogvideox, save_tiny_latte, save_tiny_wan  # noqa: E402

from diffprobe.backbones.registry import load_backbone  # noqa: E402
from diffprobe.backbones.video_windows import stitch_index  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402
from diffprobe.errors import InputError  # noqa: E402

CPU = torch.device("cpu")
IDS = torch.tensor([0])


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("long")
    return {"cogvideox": save_tiny_cogvideox(root / "cogvideox", text_encoder=False),
            "wan": save_tiny_wan(root / "wan", text_encoder=False),
            "latte": save_tiny_latte(root / "latte", text_encoder=False)}  # video_length 9


def features(spec: str, video: torch.Tensor, blocks=(0, 1)) -> dict[int, torch.Tensor]:
    return load_backbone(spec, CPU).backbone.features(video, IDS, list(blocks), 0.0, 0)


@pytest.mark.parametrize("kind", ["cogvideox", "wan"])
def test_three_windows_end_to_end_are_the_windows_run_alone(folders: dict[str, Path], kind: str) -> None:
    """A clip of 3 x 5 frames with frames=5 (overlap 0): each block is the three 5-frame windows, each run as a whole
    clip, concatenated along time (3 x 2 latent frames)."""
    video = random_clip(1, 15, 32)
    tiled = features(f"{kind}:{folders[kind]}@frames=5,overlap=0", video)
    alone = [features(f"{kind}:{folders[kind]}", video[:, s:s + 5]) for s in (0, 5, 10)]
    for block in (0, 1):
        assert tiled[block].shape[1] == 6
        torch.testing.assert_close(tiled[block], torch.cat([a[block] for a in alone], dim=1), atol=1e-5, rtol=1e-5)


def test_overlapping_windows_take_each_frame_from_the_window_furthest_from_its_edge(folders: dict[str, Path]) -> None:
    """CogVideoX, frames=9 (3 latent frames) overlapping by 5 (windows 4 frames = 1 latent frame apart) on 17 frames:
    windows at frames 0, 4, 8. The clip's 5 latent frames (1 + 16 / 4) come from: 0 <- window 0 frame 0, 1 <- window
    0 frame 1 (margin 1), 2 <- window 1 frame 1 (margin 1, against window 0's edge), 3 <- window 2 frame 1, 4 <-
    window 2 frame 2 (the only window there)."""
    folder = folders["cogvideox"]
    video = random_clip(1, 17, 32)
    stitched = features(f"cogvideox:{folder}@frames=9,overlap=5", video)
    alone = [features(f"cogvideox:{folder}", video[:, s:s + 9]) for s in (0, 4, 8)]
    for block in (0, 1):
        want = torch.stack([alone[0][block][:, 0], alone[0][block][:, 1], alone[1][block][:, 1],
                            alone[2][block][:, 1], alone[2][block][:, 2]], dim=1)
        torch.testing.assert_close(stitched[block], want, atol=1e-5, rtol=1e-5)


def test_a_long_clip_has_the_feature_frames_of_one_long_encode(folders: dict[str, Path]) -> None:
    """Causal VAEs: 13 frames in 5-frame windows overlapping by 1 -> 1 + 12 / 4 = 4 latent frames, the count of the
    whole clip encoded at once; latte (per-frame VAE, video_length 9) overlapping by 3 on 15 frames -> 15."""
    video = random_clip(1, 13, 32)
    whole = features(f"wan:{folders['wan']}", video)
    windows = features(f"wan:{folders['wan']}@frames=5,overlap=1", video)
    assert {b: f.shape for b, f in windows.items()} == {b: f.shape for b, f in whole.items()}
    assert windows[1].shape[1] == 4
    latte = features(f"latte:{folders['latte']}@overlap=3", random_clip(1, 15, 32), blocks=(1, 2))
    assert latte[1].shape[1] == latte[2].shape[1] == 15


def test_latte_overlap_matches_its_windows(folders: dict[str, Path]) -> None:
    """Latte windows of 9 frames 6 apart on 15 frames: frames 0-7 from window 0 (frame 6: margin 2 against window
    1's 0; frame 7: margin 1 against window 1's 1, a tie -> the earlier window), 8-14 from window 1 (frame 8: margin
    2 against window 0's 0)."""
    folder = folders["latte"]
    video = random_clip(1, 15, 32)
    stitched = features(f"latte:{folder}@overlap=3", video, blocks=(2,))[2]
    w0, w1 = (features(f"latte:{folder}", video[:, s:s + 9], blocks=(2,))[2] for s in (0, 6))
    index = stitch_index(2, 9, 6, causal=False).tolist()
    assert index == [0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17]
    torch.testing.assert_close(stitched, torch.cat([w0[:, :8], w1[:, 2:]], dim=1), atol=1e-5, rtol=1e-5)


def test_stitch_index_rule() -> None:
    # causal: later windows' first latent frame is never taken; the overlap is cut in its middle
    assert stitch_index(3, 3, 1, causal=True).tolist() == [0, 1, 4, 7, 8]
    # a tie (frame 2: margin 1 in windows 0 and 1) goes to the earlier window
    assert stitch_index(3, 4, 1, causal=False).tolist() == [0, 1, 2, 6, 10, 11]
    assert stitch_index(1, 3, 1, causal=True).tolist() == [0, 1, 2]


def test_overlap_is_in_the_identity_only_when_on(folders: dict[str, Path]) -> None:
    folder = folders["wan"]
    base = load_backbone(f"wan:{folder}@frames=5", CPU).backbone
    assert load_backbone(f"wan:{folder}@frames=5,overlap=0", CPU).backbone.identity == base.identity
    assert load_backbone(f"wan:{folder}@frames=5,overlap=1", CPU).backbone.identity != base.identity


def test_window_mistakes_are_one_line(folders: dict[str, Path]) -> None:
    cog, latte = folders["cogvideox"], folders["latte"]
    with pytest.raises(ConfigError, match=r"overlap must be 1 \+ 4j.*got frames=5, overlap=2$"):
        load_backbone(f"cogvideox:{cog}@frames=5,overlap=2", CPU)
    with pytest.raises(ConfigError, match="overlap must be 1"):
        load_backbone(f"cogvideox:{cog}@overlap=1", CPU)  # frames=0: the whole clip, nothing to overlap
    with pytest.raises(ConfigError, match="only with window=tile"):
        load_backbone(f"wan:{folders['wan']}@frames=5,overlap=1,window=cut", CPU)
    with pytest.raises(ConfigError, match="must be below frames=5"):
        load_backbone(f"wan:{folders['wan']}@frames=5,overlap=5", CPU)
    with pytest.raises(ConfigError, match="below the window's 9 frames"):
        load_backbone(f"latte:{latte}@overlap=9", CPU)
    backbone = load_backbone(f"wan:{folders['wan']}@frames=5,overlap=1", CPU).backbone
    with pytest.raises(InputError, match=r"a clip of 11 frames does not tile.*overlap=1.*do: 9 or 13;"):
        backbone.features(random_clip(1, 11, 32), IDS, [1], 0.0, 0)
