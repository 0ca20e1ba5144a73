"""The transformers vision baselines (dinov2, siglip, videomae, vjepa2) on tiny random models saved to disk:
shapes and layout, equality with the library's own forward, early stop, no noise, identity, load errors, the
registry, and the pixel preprocessing against the library's image processors."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from hf_models_vision import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    save_tiny_dinov2,
    save_tiny_siglip,
    save_tiny_videomae,
    save_tiny_vjepa2,
)

from diffprobe.backbones.external import BackboneLoadError  # noqa: E402
from diffprobe.backbones.registry import BACKBONES, block_shapes, load_backbone  # noqa: E402
from diffprobe.backbones.vision import VisionBackbone  # noqa: E402
from diffprobe.backbones.vision_pixels import patch_multiple, resample_indices  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402

CPU = torch.device("cpu")
SAVERS = {"dinov2": save_tiny_dinov2, "siglip": save_tiny_siglip, "videomae": save_tiny_videomae,
          "vjepa2": save_tiny_vjepa2}
KINDS = sorted(SAVERS)
#: block shape (T_f, H_f, W_f, C) of a 9-frame 32x32 Probe World clip
PROBE_WORLD_SHAPES = {"dinov2": (9, 8, 8, 32), "siglip": (9, 8, 8, 32), "videomae": (2, 4, 4, 32),
                      "vjepa2": (5, 4, 4, 32)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vision")
    out = {kind: save(root / kind) for kind, save in SAVERS.items()}
    out["dinov2-registers"] = save_tiny_dinov2(root / "dinov2-registers", registers=2)
    out["siglip-full"] = save_tiny_siglip(root / "siglip-full", full=True)
    return out


@pytest.fixture(scope="module")
def world_clips() -> torch.Tensor:
    from diffprobe.data.world.config import ProbeWorldConfig
    from diffprobe.data.world.dataset import ProbeWorld

    world = ProbeWorld(ProbeWorldConfig.preset("tiny"), "train")
    return torch.from_numpy(np.stack([c["video"] for c in world.batch([0, 1])]))  # (2, 9, 32, 32, 3) uint8


def _load(kind: str, folder: Path, **options: object) -> VisionBackbone:
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    backbone = load_backbone(f"{kind}{'@' + opts if opts else ''}:{folder}", CPU).backbone
    assert isinstance(backbone, VisionBackbone)
    return backbone


def _video(b: int, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, t, h, w, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _normalise(video: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> (..., 3, H, W) as the processors do at the model's own size: x / 255, mean, std."""
    x = video.float() / 255
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    return x.movedim(-1, -3)


# ---- shapes, layout, equality with the library's forward ------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_probe_world_clips_shapes(kind: str, folders: dict[str, Path], world_clips: torch.Tensor) -> None:
    backbone = _load(kind, folders[kind])
    shapes = block_shapes(backbone, 9, 32, 32)
    assert shapes == {b: PROBE_WORLD_SHAPES[kind] for b in range(3)}
    feats = backbone.features(world_clips, torch.arange(2), [0, 1, 2], 0.0, 0)
    for b, f in feats.items():
        assert f.shape == (2, *shapes[b]) and f.dtype == torch.float32 and torch.isfinite(f).all()


@pytest.mark.parametrize("kind", KINDS)
def test_token_layout(kind: str, folders: dict[str, Path]) -> None:
    """Changing one patch of one frame changes exactly the block-0 token at its (frame or tubelet, row, col)."""
    backbone = _load(kind, folders[kind])
    video = _video(1, 4, 16, 16)  # native size for every tiny model: patch 4 -> a 4x4 grid
    other = video.clone()
    other[0, 3, 8:12, 4:8] = 255 - other[0, 3, 8:12, 4:8]  # frame 3, patch row 2, col 1
    a, b = (backbone.features(v, torch.zeros(1, dtype=torch.long), [0], 0.0, 0)[0] for v in (video, other))
    changed = ((a - b).abs().amax(-1) > 1e-6).nonzero().tolist()
    frame = 3 if backbone.kind in ("dinov2", "siglip") else 3 // 2
    assert changed == [[0, frame, 2, 1]]


def _direct(backbone: VisionBackbone, video: torch.Tensor, mean: list[float], std: list[float]) -> list[torch.Tensor]:
    """The library's own forward with output_hidden_states=True, tokens cut and reshaped by the test."""
    b, t, h, w, _ = video.shape
    x = _normalise(video, mean, std)
    model = backbone.model
    with torch.no_grad():
        if backbone.kind == "dinov2":
            hidden = model(pixel_values=x.reshape(b * t, 3, h, w), output_hidden_states=True).hidden_states
        elif backbone.kind == "siglip":
            hidden = model(pixel_values=x.reshape(b * t, 3, h, w), output_hidden_states=True,
                           interpolate_pos_encoding=True).hidden_states
        elif backbone.kind == "videomae":
            hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
        else:
            hidden = model(pixel_values_videos=x, output_hidden_states=True, skip_predictor=True).hidden_states
    if backbone.kind in ("dinov2", "siglip"):
        return [s[:, backbone.skip:].reshape(b, t, h // 4, w // 4, -1) for s in hidden]
    return [s.reshape(b, t // 2, h // 4, w // 4, -1) for s in hidden]


@pytest.mark.parametrize(("kind", "size"), [("dinov2", (32, 24)), ("dinov2-registers", (32, 24)),
                                            ("siglip", (16, 16)), ("siglip", (24, 32)), ("videomae", (16, 16)),
                                            ("vjepa2", (16, 16))])
def test_blocks_equal_hidden_states(kind: str, size: tuple[int, int], folders: dict[str, Path]) -> None:
    """At the model's own frame count and a size it takes without resizing, block k is hidden_states[k]."""
    backbone = _load(kind.split("-")[0], folders[kind])
    video = _video(2, 4, *size, seed=1)
    mean, std = (0.5,) * 3 if kind == "siglip" else IMAGENET_MEAN, (0.5,) * 3 if kind == "siglip" else IMAGENET_STD
    if kind == "dinov2-registers":
        assert backbone.skip == 3  # CLS + 2 registers
    expected = _direct(backbone, video, list(mean), list(std))
    assert len(expected) == backbone.num_blocks + 1 == 3
    got = backbone.features(video, torch.arange(2), [2, 0, 1], 0.0, 0)
    assert sorted(got) == [0, 1, 2]
    for k in range(3):
        torch.testing.assert_close(got[k], expected[k], atol=1e-5, rtol=1e-5)
    one_by_one = _load(kind.split("-")[0], folders[kind], batch_size=1).features(video, torch.arange(2), [2], 0.0, 0)
    torch.testing.assert_close(one_by_one[2], expected[2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_stops_after_deepest_block(kind: str, folders: dict[str, Path]) -> None:
    backbone = _load(kind, folders[kind])
    ran: list[int] = []
    layers = backbone.taps.modules[1:]
    handles = [m.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, m in enumerate(layers, start=1)]
    try:
        video = _video(1, 4, 16, 16)
        backbone.features(video, torch.zeros(1, dtype=torch.long), [1], 0.0, 0)
        assert ran == [1]
        ran.clear()
        backbone.features(video, torch.zeros(1, dtype=torch.long), [0], 0.0, 0)
        assert ran == []
    finally:
        for h in handles:
            h.remove()
    with pytest.raises(ValueError, match=r"out of range.*0\.\.2"):
        backbone.features(video, torch.zeros(1, dtype=torch.long), [3], 0.0, 0)


def test_siglip_full_model_folder_uses_its_vision_tower(folders: dict[str, Path], tmp_path: Path) -> None:
    from transformers import SiglipModel, SiglipVisionModel

    full = SiglipModel.from_pretrained(folders["siglip-full"])
    vision = SiglipVisionModel(full.config.vision_config)
    vision.load_state_dict(full.vision_model.state_dict())
    vision.save_pretrained(tmp_path / "tower")
    (tmp_path / "tower" / "preprocessor_config.json").write_text(
        (folders["siglip-full"] / "preprocessor_config.json").read_text())
    video = _video(1, 2, 16, 16)
    a = _load("siglip", folders["siglip-full"]).features(video, torch.zeros(1, dtype=torch.long), [0, 2], 0.0, 0)
    b = _load("siglip", tmp_path / "tower").features(video, torch.zeros(1, dtype=torch.long), [0, 2], 0.0, 0)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)


def test_bf16_runs_close_to_fp32(folders: dict[str, Path]) -> None:
    video = _video(1, 2, 16, 16)
    a = _load("dinov2", folders["dinov2"]).features(video, torch.zeros(1, dtype=torch.long), [2], 0.0, 0)[2]
    b = _load("dinov2", folders["dinov2"], dtype="bf16").features(video, torch.zeros(1, dtype=torch.long), [2], 0.0,
                                                                  0)[2]
    assert b.dtype == torch.float32
    assert (a - b).abs().max() < 0.1 * a.abs().max()


# ---- no noise -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_no_noise(kind: str, folders: dict[str, Path]) -> None:
    backbone = _load(kind, folders[kind])
    video = _video(1, 4, 16, 16)
    with pytest.raises(ValueError, match=rf"{kind}.*no noise.*t must be 0"):
        backbone.features(video, torch.zeros(1, dtype=torch.long), [1], 200.0, 0)
    with pytest.raises(ValueError, match=rf"{kind}.*ensemble must be 1"):
        backbone.features(video, torch.zeros(1, dtype=torch.long), [1], 0.0, 0, ensemble=4)
    a = backbone.features(video, torch.zeros(1, dtype=torch.long), [1], 0.0, 0)[1]
    b = backbone.features(video, torch.tensor([7]), [1], 0.0, 123)[1]  # clip id and noise seed change nothing
    torch.testing.assert_close(a, b, atol=0, rtol=0)


# ---- identity -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_identity_follows_dtype_options_and_weights(kind: str, tmp_path: Path) -> None:
    folder = SAVERS[kind](tmp_path / kind)
    base = _load(kind, folder).identity
    assert base.startswith(f"{kind}-{kind}-")
    assert _load(kind, folder).identity == base
    assert _load(kind, folder, dtype="bf16").identity != base
    assert _load(kind, folder, batch_size=1).identity == base  # how much runs at once is not in the identity
    extra = {"dinov2": {"size": 64}, "siglip": {"size": 64}, "vjepa2": {"frames": 4}}.get(kind)
    if extra:
        assert _load(kind, folder, **extra).identity != base
    SAVERS[kind](tmp_path / "other", seed=1)  # other weights, same file names
    os.replace(tmp_path / "other" / "model.safetensors", folder / "model.safetensors")
    assert _load(kind, folder).identity != base
    processor = next(p for p in folder.iterdir() if p.name.endswith("preprocessor_config.json"))
    cfg = json.loads(processor.read_text())
    cfg["image_mean"] = [0.4, 0.4, 0.4]
    processor.write_text(json.dumps(cfg))
    assert _load(kind, folder).identity != base


# ---- load errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_missing_files_are_named(kind: str, tmp_path: Path) -> None:
    folder = SAVERS[kind](tmp_path / kind)
    with pytest.raises(BackboneLoadError, match="no such model folder"):
        _load(kind, tmp_path / "nowhere")
    os.remove(folder / "model.safetensors")
    with pytest.raises(BackboneLoadError, match=r"model\.safetensors: missing"):
        _load(kind, folder)
    os.remove(folder / "config.json")
    with pytest.raises(BackboneLoadError, match=r"config\.json: missing"):
        _load(kind, folder)


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_files_are_named(kind: str, tmp_path: Path) -> None:
    folder = SAVERS[kind](tmp_path / kind)
    config = folder / "config.json"
    original = json.loads(config.read_text())
    wider = dict(original, **({"mlp_ratio": 3} if kind == "dinov2" else {"mlp_ratio": 2.0} if kind == "vjepa2"
                              else {"intermediate_size": 40}))
    config.write_text(json.dumps(wider))
    with pytest.raises(BackboneLoadError, match=r"model\.safetensors: \d+ weight\(s\) do not fit .*config\.json"):
        _load(kind, folder)
    config.write_text(json.dumps(dict(original, num_hidden_layers=3)))  # layer 3 has no weights
    with pytest.raises(BackboneLoadError, match=r"model\.safetensors: \d+ weight\(s\) .*are missing.*layer"):
        _load(kind, folder)
    config.write_text(json.dumps(dict(original, model_type="bert")))
    with pytest.raises(BackboneLoadError, match=rf"config\.json: model_type 'bert' is not a {kind} model"):
        _load(kind, folder)
    config.write_text("{not json")
    with pytest.raises(BackboneLoadError, match=r"config\.json: cannot read"):
        _load(kind, folder)
    config.write_text(json.dumps(original))
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BackboneLoadError, match=r"model\.safetensors: cannot load"):
        _load(kind, folder)


def test_wrong_kind_and_bad_preprocessor_config(folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BackboneLoadError, match=r"model_type 'siglip_vision_model' is not a dinov2 model"):
        _load("dinov2", folders["siglip"])
    folder = save_tiny_videomae(tmp_path / "videomae")
    (folder / "preprocessor_config.json").write_text("[1, 2")
    with pytest.raises(BackboneLoadError, match=r"preprocessor_config\.json: cannot read"):
        _load("videomae", folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5], "image_std": 0.5}))
    with pytest.raises(BackboneLoadError, match=r"preprocessor_config\.json: image_mean"):
        _load("videomae", folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"resample": 1}))
    with pytest.raises(BackboneLoadError, match=r"preprocessor_config\.json: resample=1"):
        _load("videomae", folder)


# ---- registry and options -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_registry(kind: str, folders: dict[str, Path]) -> None:
    assert kind in BACKBONES
    resolved = load_backbone(f"{kind}:{folders[kind]}", CPU)
    assert resolved.mode == ("image" if kind in ("dinov2", "siglip") else "video")
    assert (resolved.step, resolved.trained_on) == (0, None)
    assert resolved.backbone.num_blocks == 2 and resolved.backbone.encoder is None
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['nosuch'\]; known keys are \[.*'batch_size'.*'dtype'"):
        load_backbone(f"{kind}@nosuch=1:{folders[kind]}", CPU)
    with pytest.raises(ConfigError, match="dtype"):
        load_backbone(f"{kind}@dtype=fp64:{folders[kind]}", CPU)


def test_kind_options(folders: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="known keys are.*'size'"):
        load_backbone(f"siglip:{folders['siglip']}@frames=4", CPU)
    with pytest.raises(ConfigError, match="known keys are.*'frames'"):
        load_backbone(f"vjepa2:{folders['vjepa2']}@size=4", CPU)
    with pytest.raises(ConfigError, match="not a multiple of the model's tubelet_size 2"):
        load_backbone(f"vjepa2:{folders['vjepa2']}@frames=3", CPU)
    with pytest.raises(ConfigError, match="size: must be >= 0"):
        load_backbone(f"dinov2:{folders['dinov2']}@size=-1", CPU)
    vjepa = _load("vjepa2", folders["vjepa2"], frames=8)
    assert block_shapes(vjepa, 9, 32, 32)[2] == (4, 4, 4, 32)
    assert block_shapes(vjepa, 1, 32, 32)[2] == (4, 4, 4, 32)
    assert block_shapes(_load("vjepa2", folders["vjepa2"]), 1, 32, 32)[2] == (1, 4, 4, 32)  # 1 frame -> 1 tubelet
    assert block_shapes(_load("videomae", folders["videomae"]), 1, 20, 28)[0] == (2, 4, 4, 32)
    assert block_shapes(_load("dinov2", folders["dinov2"], size=16), 2, 32, 64)[0] == (2, 4, 8, 32)


# ---- pixels ---------------------------------------------------------------------------------------------------------
def test_geometry_helpers() -> None:
    assert resample_indices(9, 4) == [0, 3, 5, 8]
    assert resample_indices(9, 10) == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8]
    assert resample_indices(4, 4) == [0, 1, 2, 3]
    assert resample_indices(5, 1) == [0]
    assert patch_multiple(32, 32, 4) == (32, 32)  # multiples go in as they are
    assert patch_multiple(32, 32, 14) == (28, 28)  # nearest multiple
    assert patch_multiple(30, 36, 4) == (32, 36)
    assert patch_multiple(5, 5, 14) == (14, 14)  # at least one patch
    assert patch_multiple(240, 320, 14, size=224) == (224, 294)  # short side to 224, aspect kept


def _processor_pixels(processor: object, frames: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """The library processor's pixel_values of uint8 frames (N, H, W, 3) as one float tensor (N, 3, h, w)."""
    images = [np.asarray(f) for f in frames.numpy()]
    return torch.as_tensor(np.stack(processor(images=images, return_tensors="np", **kwargs)["pixel_values"]))


def _pixels_in_unit_range(x: torch.Tensor, std: list[float]) -> torch.Tensor:
    return x * torch.tensor(std).view(1, 3, 1, 1)


def test_dinov2_pixels_match_its_image_processor(folders: dict[str, Path]) -> None:
    from transformers import AutoImageProcessor

    backbone = _load("dinov2", folders["dinov2"])
    processor = AutoImageProcessor.from_pretrained(folders["dinov2"])
    frames = _video(1, 3, 32, 32)[0]  # (3, 32, 32, 3): multiples of the patch: not resized
    ours, grid = backbone.prepare(frames[None])
    assert grid == (1, 3, 8, 8)
    theirs = _processor_pixels(processor, frames, do_resize=False, do_center_crop=False)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    from skimage import data  # real pixels for resizing: 30x30 -> the nearest patch multiple, 32x32

    frame = torch.from_numpy(np.ascontiguousarray(data.astronaut()[::16, ::16][:30, :30]))[None]  # (1, 30, 30, 3)
    ours, grid = backbone.prepare(frame[None])
    assert grid == (1, 1, 8, 8)
    theirs = _processor_pixels(processor, frame, size={"height": 32, "width": 32}, do_center_crop=False)
    diff = _pixels_in_unit_range(ours - theirs, IMAGENET_STD).abs()  # in 0..1 pixel units
    assert diff.mean() < 0.5 / 255 and diff.max() < 16 / 255  # PIL rounds between its two bicubic passes


def test_siglip_pixels_match_its_image_processor(folders: dict[str, Path]) -> None:
    from transformers import AutoImageProcessor

    pytest.importorskip("skimage")
    from skimage import data

    processor = AutoImageProcessor.from_pretrained(folders["siglip"])
    frame = torch.from_numpy(np.ascontiguousarray(data.chelsea()[::9, ::9][:32, :32]))[None]  # (1, 32, 32, 3)
    ours, _ = _load("siglip", folders["siglip"]).prepare(frame[None])  # as it comes
    theirs = _processor_pixels(processor, frame, do_resize=False)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    ours, grid = _load("siglip", folders["siglip"], size=16).prepare(frame[None])  # the processor's own 16x16
    assert grid == (1, 1, 4, 4)
    diff = _pixels_in_unit_range(ours - _processor_pixels(processor, frame), [0.5] * 3).abs()
    assert diff.mean() < 0.5 / 255 and diff.max() < 16 / 255


def test_videomae_pixels_match_its_image_processor(folders: dict[str, Path]) -> None:
    from transformers import VideoMAEImageProcessorPil

    pytest.importorskip("skimage")
    from skimage import data

    processor = VideoMAEImageProcessorPil.from_pretrained(folders["videomae"])
    image = data.astronaut()[::8, ::8][:32, :32]
    clip = torch.from_numpy(np.stack([np.roll(image, 2 * i, axis=1) for i in range(9)]))  # (9, 32, 32, 3)
    ours, grid = _load("videomae", folders["videomae"]).prepare(clip[None])
    assert ours.shape == (1, 4, 3, 16, 16) and grid == (1, 2, 4, 4)
    theirs = torch.as_tensor(processor([list(clip[[0, 3, 5, 8]].numpy())], return_tensors="np")["pixel_values"])
    diff = (ours - theirs)[0] * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)  # (4, 3, 16, 16) in 0..1 units
    assert diff.abs().mean() < 0.5 / 255 and diff.abs().max() < 2 / 255  # bilinear: PIL's rounding only


def test_vjepa2_pixels(folders: dict[str, Path]) -> None:
    backbone = _load("vjepa2", folders["vjepa2"])
    clip = _video(1, 3, 16, 16)
    ours, grid = backbone.prepare(clip)  # 3 frames -> 4 (a multiple of the tubelet), evenly spaced
    assert grid == (1, 2, 4, 4)
    torch.testing.assert_close(ours, _normalise(clip[:, [0, 1, 1, 2]], IMAGENET_MEAN, IMAGENET_STD))
    try:
        from transformers import VJEPA2VideoProcessor

        processor = VJEPA2VideoProcessor.from_pretrained(folders["vjepa2"])
    except ImportError:  # the video processor needs torchvision
        return
    theirs = processor(list(clip[0, [0, 1, 1, 2]].numpy()), do_resize=False, do_center_crop=False,
                       return_tensors="pt")["pixel_values_videos"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_missing_preprocessor_config_uses_the_kind_defaults(tmp_path: Path) -> None:
    clip = _video(1, 1, 16, 16)
    for kind, mean, std in [("dinov2", IMAGENET_MEAN, IMAGENET_STD), ("siglip", [0.5] * 3, [0.5] * 3)]:
        folder = SAVERS[kind](tmp_path / kind)
        os.remove(folder / "preprocessor_config.json")
        with pytest.warns(UserWarning, match="no preprocessor_config.json"):
            backbone = _load(kind, folder)
        torch.testing.assert_close(backbone.prepare(clip)[0], _normalise(clip[0], mean, std))
    folder = save_tiny_videomae(tmp_path / "custom")
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": 0.25, "image_std": [1, 2, 4],
                                                                 "rescale_factor": 0.5}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = _load("videomae", folder)
    expected = ((clip[:, [0, 0, 0, 0]].float() * 0.5 - 0.25) / torch.tensor([1.0, 2.0, 4.0])).movedim(-1, -3)
    torch.testing.assert_close(backbone.prepare(clip)[0], expected)
