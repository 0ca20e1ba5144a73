"""The ``svd`` kind on a tiny random SVD folder: shapes, hooks, the EDM mapping on the scheduler's sigmas, the
pipeline's conditioning (frame latents, noise augmentation, added time ids, image embedding), windows, identity, load
errors, the registry, denoising, Probe World clips."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from einops import rearrange

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hf_models_unet import Calls, random_video, save_tiny_svd, unet_blocks  # noqa: E402

from diffprobe.backbones.base import clip_noise  # noqa: E402
from diffprobe.backbones.external import BackboneLoadError  # noqa: E402
from diffprobe.backbones.registry import block_shapes, load_backbone  # noqa: E402
from diffprobe.backbones.svd import AUG_SEED  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_svd(tmp_path_factory.mktemp("svd") / "tiny-svd")


@pytest.fixture(scope="module")
def svd(svd_folder: Path):
    return load_backbone(f"svd:{svd_folder}", CPU)


@pytest.fixture(scope="module")
def pipe(svd_folder: Path):
    from diffusers import StableVideoDiffusionPipeline

    return StableVideoDiffusionPipeline.from_pretrained(svd_folder)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _pil(frame: torch.Tensor):
    from PIL import Image

    return Image.fromarray(frame.numpy())


def test_registry_video_mode_and_block_shapes(svd) -> None:
    assert svd.mode == "video" and svd.step == 0
    bb = svd.backbone
    assert bb.num_blocks == 5 and bb.encoder is bb.latent_encoder
    assert bb.unet.config.num_frames == 9
    shapes = block_shapes(bb, 9, 32, 32)
    assert shapes == {0: (9, 8, 8, 4), 1: (9, 4, 4, 32), 2: (9, 4, 4, 64), 3: (9, 4, 4, 64), 4: (9, 8, 8, 64),
                      5: (9, 8, 8, 32)}
    video = random_video(2, 5)  # another length than the config's num_frames: the whole clip is one video
    encoded = bb.encoder.features(video, torch.tensor([0, 1]), [0], 0.0, 0)[0]
    assert encoded.shape == (2, 5, 8, 8, 8)  # the scaled latents, then the conditioning latents
    feats = bb.features_from_encoded(encoded, torch.tensor([0, 1]), list(range(6)), 100.0, 0)
    assert {b: tuple(f.shape[1:]) for b, f in feats.items()} == block_shapes(bb, 5, 32, 32)
    torch.testing.assert_close(feats[0], encoded[..., :4])


def test_t0_features_equal_a_direct_forward_with_the_pipelines_conditioning(svd) -> None:
    bb = svd.backbone
    video, ids = random_video(2, 3, seed=1), torch.tensor([4, 7])
    feats = bb.features(video, ids, [0, 1, 3, 5], 0.0, 0)
    x = video.float() / 255 * 2 - 1  # (B, T, H, W, 3)
    x = rearrange(x, "b t h w c -> b t c h w")
    with torch.no_grad():
        z = bb.vae.encode(rearrange(x, "b t c h w -> (b t) c h w")).latent_dist.mode()
        z = rearrange(z * bb.vae.config.scaling_factor, "(b t) c h w -> b t c h w", b=2)
        first = x[:, :1] + 0.02 * clip_noise(x[:, :1], ids, AUG_SEED, 0)  # noise-augmented first frame
        cond = bb.vae.encode(first[:, 0]).latent_dist.mode()  # unscaled, as _encode_vae_image
        sample = torch.cat([z, cond[:, None].expand(-1, 3, -1, -1, -1)], dim=2)  # (B, T, 2C, h, w)
        sigma0 = math.sqrt((1 - bb.scheduler.alphas_cumprod[0]) / bb.scheduler.alphas_cumprod[0])
        with Calls(modules=unet_blocks(bb.unet)) as calls:
            bb.unet(sample, torch.tensor(0.25 * math.log(sigma0)), encoder_hidden_states=torch.zeros(2, 1, 32),
                    added_time_ids=torch.tensor([[6.0, 127.0, 0.02]] * 2))
    torch.testing.assert_close(feats[0], rearrange(z, "b t c h w -> b t h w c"), atol=1e-4, rtol=1e-4)
    for b in (1, 3, 5):
        ref = rearrange(calls.outputs[b - 1][0], "(b t) c h w -> b t h w c", b=2)
        torch.testing.assert_close(feats[b], ref, atol=1e-4, rtol=1e-4)


def test_noising_follows_the_schedulers_sigmas(svd, svd_folder: Path) -> None:
    from diffusers import EulerDiscreteScheduler

    bb = svd.backbone
    video, ids = random_video(2, 3, seed=2), torch.tensor([1, 3])
    z = bb.features(video, ids, [0], 0.0, 0)[0]
    for t, tau in [(300.0, 300), (1000.0, 999), (12.3, 12)]:
        scheduler = EulerDiscreteScheduler.from_pretrained(svd_folder / "scheduler")  # fresh: no step index yet
        n = scheduler.config.num_train_timesteps
        with Calls(model=bb.unet) as calls:
            bb.features(video, ids, [1], t, noise_seed=5)
        (sample, timestep), kwargs = calls.calls[0]
        eps = clip_noise(z, ids, 5, 0)
        sigma, ts = scheduler.sigmas[n - 1 - tau], scheduler.timesteps[n - 1 - tau]  # the library's table
        assert ts == pytest.approx(0.25 * math.log(sigma))
        ref = scheduler.scale_model_input(rearrange(z + sigma * eps, "b t h w c -> b t c h w"), ts)
        torch.testing.assert_close(sample[:, :, :4], ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(timestep, torch.full((2,), float(ts)), atol=1e-4, rtol=1e-4)
        ab = float(scheduler.alphas_cumprod[tau])  # the same noised latents as sd's DDPM at this t
        torch.testing.assert_close(ref, rearrange(math.sqrt(ab) * z + math.sqrt(1 - ab) * eps,
                                                  "b t h w c -> b t c h w"), atol=1e-4, rtol=1e-4)
        assert torch.equal(kwargs["encoder_hidden_states"], torch.zeros(2, 1, 32))  # cond=zero: the null embedding


def test_conditioning_is_built_as_the_pipeline_builds_it(svd, pipe) -> None:
    bb = svd.backbone
    video, ids = random_video(1, 3, seed=3), torch.tensor([11])
    encoded = bb.encoder.features(video, ids, [0], 0.0, 0)[0]  # (1, T, h, w, 2C)
    image = pipe.video_processor.preprocess(_pil(video[0, 0]), height=32, width=32)  # (1, 3, H, W) in [-1, 1]
    z_ref = []
    for f in video[0]:
        frame = pipe.video_processor.preprocess(_pil(f), height=32, width=32)
        with torch.no_grad():
            z_ref.append(pipe.vae.encode(frame).latent_dist.mode() * pipe.vae.config.scaling_factor)
    torch.testing.assert_close(encoded[0, ..., :4], rearrange(torch.cat(z_ref), "t c h w -> t h w c"), atol=1e-4,
                               rtol=1e-4)
    noise = clip_noise(image[None], ids, AUG_SEED, 0)[0]
    with torch.no_grad():
        cond = pipe._encode_vae_image(image + 0.02 * noise, CPU, 1, False)  # the pipeline's frame latents
    for k in range(3):
        torch.testing.assert_close(encoded[0, k, ..., 4:], rearrange(cond[0], "c h w -> h w c"), atol=1e-4, rtol=1e-4)
    ids_ref = pipe._get_add_time_ids(7 - 1, 127, 0.02, torch.float32, 1, 1, False)  # fps - 1, as __call__ passes
    torch.testing.assert_close(bb.time_ids, ids_ref)
    other = load_backbone(f"svd:{pipe.config._name_or_path}@fps=12,motion_bucket_id=30,noise_aug_strength=0", CPU)
    torch.testing.assert_close(other.backbone.time_ids, torch.tensor([[11.0, 30.0, 0.0]]))


def test_first_frame_image_embedding(svd_folder: Path, pipe) -> None:
    resolved = load_backbone(f"svd:{svd_folder}@cond=first_frame", CPU)
    bb = resolved.backbone
    assert bb.encoder is None  # the embedding needs the pixels
    video, ids = random_video(2, 3, seed=4), torch.tensor([0, 1])
    with pytest.raises(TypeError, match="needs the pixels"):
        bb.features_from_encoded(torch.zeros(2, 3, 8, 8, 8), ids, [1], 0.0, 0)
    with Calls(model=bb.unet) as calls:
        feats = bb.features(video, ids, [2], 100.0, 0)
    assert feats[2].shape == (2, 3, 4, 4, 64)
    embeds = calls.calls[0][1]["encoder_hidden_states"]  # (B, 1, D)
    with torch.no_grad():  # the pipeline's own path on a [0, 1] tensor of the frame's size
        ref = pipe._encode_image(rearrange(video[:, 0], "b h w c -> b c h w").float() / 255, CPU, 1, False)
    torch.testing.assert_close(embeds, ref, atol=1e-4, rtol=1e-4)
    zero = load_backbone(f"svd:{svd_folder}", CPU).backbone.features(video, ids, [2], 100.0, 0)[2]
    assert not torch.allclose(zero, feats[2])


def test_windows_are_separate_videos_conditioned_on_their_first_frame(svd, svd_folder: Path) -> None:
    bb = load_backbone(f"svd:{svd_folder}@frames=4,noise_aug_strength=0", CPU).backbone
    whole = load_backbone(f"svd:{svd_folder}@noise_aug_strength=0", CPU).backbone
    video = random_video(1, 9, seed=5)
    encoded = bb.encoder.features(video, torch.tensor([0]), [0], 0.0, 0)[0]
    for lo in (0, 4, 8):  # each frame carries its window's first frame's latents
        hi = min(lo + 4, 9)
        torch.testing.assert_close(encoded[:, lo:hi, ..., 4:], (encoded[:, lo:lo + 1, ..., :4] /
                                   bb.vae.config.scaling_factor).expand(-1, hi - lo, -1, -1, -1), atol=1e-4,
                                   rtol=1e-4)
    feats = bb.features(video, torch.tensor([0]), [2, 5], 0.0, 0)
    parts = [whole.features(video[:, lo:hi], torch.tensor([0]), [2, 5], 0.0, 0) for lo, hi in
             [(0, 4), (4, 8), (8, 9)]]
    for b in (2, 5):
        torch.testing.assert_close(feats[b], torch.cat([p[b] for p in parts], dim=1), atol=1e-4, rtol=1e-4)


def test_identity_changes_with_dtype_options_and_weights(svd_folder: Path, tmp_path: Path) -> None:
    from diffusers import UNetSpatioTemporalConditionModel

    folder = _copy(svd_folder, tmp_path)
    base = load_backbone(f"svd:{folder}", CPU).backbone
    assert load_backbone(f"svd:{folder}", CPU).backbone.identity == base.identity
    others = ["dtype=bf16", "cond=first_frame", "noise_aug_strength=0", "fps=6", "motion_bucket_id=1", "frames=4"]
    ids = {load_backbone(f"svd:{folder}@{o}", CPU).backbone.identity for o in others}
    assert len(ids) == len(others) and base.identity not in ids
    assert base.encoder.identity != base.identity
    unet = UNetSpatioTemporalConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        unet.conv_in.bias.add_(0.01)
    unet.save_pretrained(folder / "unet")
    assert load_backbone(f"svd:{folder}", CPU).backbone.identity != base.identity


def test_missing_and_mismatched_files_name_the_file(svd_folder: Path, tmp_path: Path) -> None:
    folder = _copy(svd_folder, tmp_path)
    with pytest.raises(ConfigError, match=r"cond.*'zero', 'first_frame'"):
        load_backbone(f"svd:{folder}@cond=text", CPU)
    with pytest.raises(ConfigError, match=r"unknown key.*\['num_frames'\].*noise_aug_strength"):
        load_backbone(f"svd:{folder}@num_frames=4", CPU)
    shutil.rmtree(folder / "image_encoder")
    load_backbone(f"svd:{folder}", CPU)  # cond=zero does not read the image encoder
    with pytest.raises(BackboneLoadError, match=r"image_encoder/config\.json: missing"):
        load_backbone(f"svd:{folder}@cond=first_frame", CPU)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "_class_name": "DDIMScheduler"}))
    with pytest.raises(BackboneLoadError, match=r"scheduler_config\.json: _class_name 'DDIMScheduler'"):
        load_backbone(f"svd:{folder}", CPU)
    config_path.write_text(json.dumps(config))
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**unet_config, "in_channels": 4}))
    with pytest.raises(BackboneLoadError, match=r"unet: cannot load a UNetSpatioTemporalConditionModel.*shape"):
        load_backbone(f"svd:{folder}", CPU)
    (folder / "unet" / "config.json").unlink()
    with pytest.raises(BackboneLoadError, match=r"unet/config\.json: missing"):
        load_backbone(f"svd:{folder}", CPU)


def test_denoise_runs_the_euler_loop(svd) -> None:
    """A random UNet cannot denoise (the loop must run and keep the shape); an oracle v-prediction UNet is led back
    to the clean latents by the folder's Euler scheduler, which checks c_in, c_noise and the v parametrisation."""
    bb = svd.backbone
    video, ids = random_video(1, 3, seed=6), torch.tensor([0])
    encoded = bb.encoder.features(video, ids, [0], 0.0, 0)[0]
    z = encoded[..., :4]
    x_t, _ = bb.noise(z, 500.0, clip_noise(z, ids, 0, 0))
    est = bb.denoise(x_t, 500.0, encoded, steps=3)
    assert est.shape == z.shape and torch.isfinite(est).all()
    assert bb.denoise(x_t, 500.0, z, steps=2).shape == z.shape  # block-0 latents as the clean input

    class Oracle(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states, added_time_ids, return_dict=False):
            sigma = torch.exp(4 * timestep).view(-1, 1, 1, 1, 1)  # c_noise = ln(sigma) / 4
            u, clean = sample[:, :, :4], rearrange(z, "b t h w c -> b t c h w")
            return ((u - clean * (sigma**2 + 1).sqrt()) / sigma,)  # the v that makes the x0 estimate exact

    real, bb.unet = bb.unet, Oracle()
    try:
        est = bb.denoise(x_t, 500.0, encoded, steps=3)
    finally:
        bb.unet = real
    torch.testing.assert_close(est, z, atol=1e-4, rtol=1e-4)


def test_probe_world_clips(svd_folder: Path) -> None:
    from diffprobe.data import open_dataset

    ds = open_dataset("probeworld:tiny@train_size=2")
    video = torch.stack([torch.from_numpy(ds.clips("train")[i]["video"]) for i in range(2)])  # (2, 9, 32, 32, 3)
    bb = load_backbone(f"svd:{svd_folder}", CPU).backbone
    feats = bb.features(video, torch.tensor([0, 1]), [0, 3, 5], 200.0, 0)
    assert {b: tuple(f.shape) for b, f in feats.items()} == {0: (2, 9, 8, 8, 4), 3: (2, 9, 4, 4, 64),
                                                             5: (2, 9, 8, 8, 32)}
    assert all(torch.isfinite(f).all() for f in feats.values())
