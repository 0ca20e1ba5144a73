"""The ``animatediff`` kind on tiny random folders (SD + motion_adapter/, and the AnimateDiff pipeline's own save):
shapes, windows, hooks, DDPM noising, identity, load errors, null prompt, pipeline latents, the registry, denoising."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from einops import rearrange

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hf_models_unet import Calls, random_video, save_tiny_animatediff, tiny_motion_adapter, unet_blocks  # noqa: E402

from diffprobe.backbones.base import clip_noise  # noqa: E402
from diffprobe.backbones.external import BackboneLoadError  # noqa: E402
from diffprobe.backbones.registry import block_shapes, load_backbone  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402
from diffprobe.utils.io import load_tensors  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ad_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_animatediff(tmp_path_factory.mktemp("ad") / "tiny-ad", layout="adapter")


@pytest.fixture(scope="module")
def ad(ad_folder: Path):
    return load_backbone(f"animatediff:{ad_folder}", CPU)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_registry_video_mode_and_block_shapes(ad) -> None:
    assert ad.mode == "video" and ad.step == 0
    bb = ad.backbone
    assert type(bb.unet).__name__ == "UNetMotionModel" and bb.num_blocks == 5
    shapes = block_shapes(bb, 9, 32, 32)
    assert shapes == {0: (9, 8, 8, 4), 1: (9, 4, 4, 32), 2: (9, 4, 4, 64), 3: (9, 4, 4, 64), 4: (9, 8, 8, 64),
                      5: (9, 8, 8, 32)}
    feats = bb.features(random_video(2, 4), torch.tensor([0, 1]), list(range(6)), 100.0, 0)
    assert {b: tuple(f.shape[1:]) for b, f in feats.items()} == block_shapes(bb, 4, 32, 32)


def test_the_clip_is_one_video(ad) -> None:
    """Unlike ``sd``, a frame's features depend on the other frames (the motion modules mix time)."""
    bb = ad.backbone
    video = random_video(1, 3, seed=1)
    whole = bb.features(video, torch.tensor([0]), [2], 0.0, 0)[2]
    alone = bb.features(video[:, 1:2], torch.tensor([0]), [2], 0.0, 0)[2]
    assert not torch.allclose(whole[:, 1:2], alone, atol=1e-4)


def test_t0_features_equal_a_direct_forward(ad) -> None:
    bb = ad.backbone
    video = random_video(2, 3, seed=2)
    feats = bb.features(video, torch.tensor([0, 1]), [0, 2, 4], 0.0, 0)
    x = rearrange(video, "b t h w c -> (b t) c h w").float() / 255 * 2 - 1
    with torch.no_grad():
        z = rearrange(bb.vae.encode(x).latent_dist.mode() * bb.vae.config.scaling_factor, "(b t) c h w -> b c t h w",
                      b=2)
        with Calls(modules=unet_blocks(bb.unet)) as calls:  # as the pipeline calls it: prompt repeated per frame
            bb.unet(z, torch.tensor(0), encoder_hidden_states=bb.null.repeat_interleave(6, dim=0))
    torch.testing.assert_close(feats[0], rearrange(z, "b c t h w -> b t h w c"), atol=1e-4, rtol=1e-4)
    for b in (2, 4):
        ref = rearrange(calls.outputs[b - 1][0], "(b t) c h w -> b t h w c", b=2)
        torch.testing.assert_close(feats[b], ref, atol=1e-4, rtol=1e-4)


def test_windows_are_separate_videos(ad, ad_folder: Path) -> None:
    """``frames=4`` on 9 frames: windows [0, 4), [4, 8), [8, 9), each run as its own clip."""
    bb = load_backbone(f"animatediff:{ad_folder}@frames=4", CPU).backbone
    video = random_video(1, 9, seed=3)
    feats = bb.features(video, torch.tensor([0]), [1, 3, 5], 0.0, 0)
    parts = [ad.backbone.features(video[:, lo:hi], torch.tensor([0]), [1, 3, 5], 0.0, 0) for lo, hi in
             [(0, 4), (4, 8), (8, 9)]]
    for b in (1, 3, 5):
        torch.testing.assert_close(feats[b], torch.cat([p[b] for p in parts], dim=1), atol=1e-4, rtol=1e-4)
    # the noise is drawn for the whole clip, so windows do not repeat it
    with Calls(model=bb.unet) as calls:
        bb.features(video, torch.tensor([0]), [1], 500.0, 0)
    first, second = calls.calls[0][0][0][0], calls.calls[0][0][0][1]  # (C, n, h, w) windows 0 and 1
    assert not torch.allclose(first, second)


def test_windows_longer_than_the_motion_modules_are_an_error(ad_folder: Path) -> None:
    bb = load_backbone(f"animatediff:{ad_folder}@frames=40", CPU).backbone
    with pytest.raises(ValueError, match="at most 32.*frames="):  # before the VAE runs
        bb.features(random_video(1, 33, size=8), torch.tensor([0]), [1], 0.0, 0)
    with pytest.raises(ValueError, match="at most 32.*frames="):
        bb.features_from_encoded(torch.zeros(1, 33, 2, 2, 4), torch.tensor([0]), [1], 0.0, 0)


def test_noising_follows_the_schedulers_ddpm_mapping(ad, ad_folder: Path) -> None:
    from diffusers import PNDMScheduler

    bb = ad.backbone
    scheduler = PNDMScheduler.from_pretrained(ad_folder / "scheduler")
    video, ids = random_video(2, 3, seed=4), torch.tensor([5, 9])
    z = bb.features(video, ids, [0], 0.0, 0)[0]
    with Calls(model=bb.unet) as calls:
        bb.features(video, ids, [1], 250.0, noise_seed=2)
    (sample, timestep), kwargs = calls.calls[0]
    eps = clip_noise(z, ids, 2, 0)
    ab = float(scheduler.alphas_cumprod[250])
    ref = scheduler.add_noise(z, eps, torch.tensor(250))
    torch.testing.assert_close(ref, math.sqrt(ab) * z + math.sqrt(1 - ab) * eps)
    torch.testing.assert_close(rearrange(sample, "b c t h w -> b t h w c"), ref, atol=1e-4, rtol=1e-4)
    assert timestep.tolist() == [250, 250]
    assert kwargs["encoder_hidden_states"].shape == (6, 77, 32)  # the null prompt for every frame


def test_latents_are_scaled_as_the_video2video_pipeline_scales_them(ad) -> None:
    from diffusers.pipelines.animatediff.pipeline_animatediff_video2video import retrieve_latents
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    bb = ad.backbone
    video = random_video(1, 3, seed=5)
    z = bb.features(video, torch.tensor([0]), [0], 0.0, 0)[0]
    processor = VideoProcessor(vae_scale_factor=2 ** (len(bb.vae.config.block_out_channels) - 1))
    frames = processor.preprocess_video([[Image.fromarray(f.numpy()) for f in video[0]]])  # (1, 3, T, H, W)
    with torch.no_grad():
        ref = retrieve_latents(bb.vae.encode(rearrange(frames, "b c t h w -> (b t) c h w")), sample_mode="argmax")
    torch.testing.assert_close(z[0], rearrange(ref * bb.vae.config.scaling_factor, "t c h w -> t h w c"), atol=1e-4,
                               rtol=1e-4)


def test_the_pipelines_own_save_loads_the_same_model(ad, tmp_path: Path) -> None:
    folder = save_tiny_animatediff(tmp_path / "pipe", layout="pipeline")
    other = load_backbone(f"animatediff:{folder}", CPU).backbone
    video = random_video(1, 3, seed=6)
    ref = ad.backbone.features(video, torch.tensor([0]), [3, 5], 150.0, 1)
    got = other.features(video, torch.tensor([0]), [3, 5], 150.0, 1)
    for b in (3, 5):
        torch.testing.assert_close(got[b], ref[b], atol=1e-4, rtol=1e-4)
    assert other.identity != ad.backbone.identity


def test_null_prompt_is_computed_once_and_saved(ad_folder: Path, tmp_path: Path) -> None:
    folder = _copy(ad_folder, tmp_path)
    (folder / "null_embeds.safetensors").unlink(missing_ok=True)
    bb = load_backbone(f"animatediff:{folder}", CPU).backbone
    saved = load_tensors(folder / "null_embeds.safetensors")["prompt_embeds"]
    torch.testing.assert_close(bb.null, saved)
    sd_null = load_backbone(f"sd:{folder}", CPU).backbone.null  # the same SD text encoder, read from the file
    torch.testing.assert_close(sd_null, saved)


def test_identity_changes_with_dtype_options_and_adapter_weights(ad_folder: Path, tmp_path: Path) -> None:
    folder = _copy(ad_folder, tmp_path)
    base = load_backbone(f"animatediff:{folder}", CPU).backbone.identity
    assert load_backbone(f"animatediff:{folder}", CPU).backbone.identity == base
    assert load_backbone(f"animatediff:{folder}@dtype=bf16", CPU).backbone.identity != base
    assert load_backbone(f"animatediff:{folder}@frames=4", CPU).backbone.identity != base
    tiny_motion_adapter(seed=9).save_pretrained(folder / "motion_adapter")
    assert load_backbone(f"animatediff:{folder}", CPU).backbone.identity != base


def test_missing_and_mismatched_files_name_the_file(ad_folder: Path, tmp_path: Path) -> None:
    import json

    folder = _copy(ad_folder, tmp_path)
    with pytest.raises(ConfigError, match=r"unknown key.*\['cond'\].*frames"):
        load_backbone(f"animatediff:{folder}@cond=zero", CPU)
    shutil.move(folder / "motion_adapter", tmp_path / "adapter")
    with pytest.raises(BackboneLoadError, match=r"motion_adapter: missing.*UNet2DConditionModel"):
        load_backbone(f"animatediff:{folder}", CPU)
    (folder / "motion_adapter").mkdir()
    with pytest.raises(BackboneLoadError, match=r"motion_adapter/config\.json: missing"):
        load_backbone(f"animatediff:{folder}", CPU)
    (folder / "motion_adapter").rmdir()
    shutil.move(tmp_path / "adapter", folder / "motion_adapter")
    config = json.loads((folder / "motion_adapter" / "config.json").read_text())
    (folder / "motion_adapter" / "config.json").write_text(json.dumps({**config, "block_out_channels": [32, 32]}))
    with pytest.raises(BackboneLoadError, match=r"motion_adapter"):
        load_backbone(f"animatediff:{folder}", CPU)
    (folder / "motion_adapter" / "config.json").write_text(json.dumps(config))
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(BackboneLoadError, match=r"scheduler/scheduler_config\.json: missing"):
        load_backbone(f"animatediff:{folder}", CPU)


def test_denoise_runs_the_schedulers_loop(ad) -> None:
    """A random UNet cannot denoise (the loop must run and keep the shape); an oracle UNet predicting the true
    noise is led back to the clean latents by the folder's scheduler."""
    bb = ad.backbone
    video, ids = random_video(1, 3, seed=7), torch.tensor([0])
    z = bb.encoder.features(video, ids, [0], 0.0, 0)[0]
    x_t, _ = bb.noise(z, 400.0, clip_noise(z, ids, 0, 0))
    est = bb.denoise(x_t, 400.0, z, steps=3)
    assert est.shape == z.shape and torch.isfinite(est).all()

    class Oracle(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
            ab = bb.scheduler.alphas_cumprod[timestep.long()].view(-1, 1, 1, 1, 1)
            clean = rearrange(z, "b t h w c -> b c t h w")
            return ((sample - ab.sqrt() * clean) / (1 - ab).sqrt(),)

    real, bb.unet = bb.unet, Oracle()
    try:
        est = bb.denoise(x_t, 400.0, z, steps=3)
    finally:
        bb.unet = real
    assert (est - z).pow(2).mean() < 0.01 * (x_t - z).pow(2).mean()


def test_unet_and_adapter_are_joined_in_the_target_dtype_without_a_copy(ad_folder: Path) -> None:
    """The joined UNetMotionModel holds the parts' own tensors (no fp32 model beside them: from_unet2d would build
    one and copy), equal to from_unet2d's join, and a bf16 load is bf16 throughout."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from diffprobe.backbones.animatediff import join_motion_unet

    unet = UNet2DConditionModel.from_pretrained(ad_folder / "unet", torch_dtype=torch.bfloat16)
    adapter = MotionAdapter.from_pretrained(ad_folder / "motion_adapter", torch_dtype=torch.bfloat16)
    joined = join_motion_unet(ad_folder, unet, adapter).state_dict()
    parts = unet.state_dict() | {k: v for k, v in adapter.state_dict().items() if ".motion_modules." in k}
    assert all(joined[k].data_ptr() == v.data_ptr() for k, v in parts.items() if k in joined)
    reference = UNetMotionModel.from_unet2d(unet, adapter).state_dict()
    assert joined.keys() == reference.keys()
    assert all(torch.equal(joined[k], reference[k]) for k in reference)
    bf16 = load_backbone(f"animatediff:{ad_folder}@dtype=bf16", CPU).backbone.unet
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
