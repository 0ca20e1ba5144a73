"""The ``sd`` kind on a tiny random SD 1.x folder: shapes, layout, hooks, DDPM noising, identity, load errors, null
prompt, pipeline latents, the registry, denoising, Probe World clips."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from einops import rearrange

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hf_models_unet import Calls, random_video, save_tiny_sd, unet_blocks  # noqa: E402

from diffprobe.backbones.base import clip_noise  # noqa: E402
from diffprobe.backbones.external import BackboneLoadError  # noqa: E402
from diffprobe.backbones.registry import block_shapes, load_backbone  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402
from diffprobe.utils.io import load_tensors, save_tensors  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def sd(sd_folder: Path):
    return load_backbone(f"sd:{sd_folder}", CPU)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_registry_image_mode_and_block_shapes(sd, sd_folder: Path) -> None:
    assert sd.mode == "image" and sd.step == 0 and sd.trained_on is None
    bb = sd.backbone
    assert bb.num_blocks == 5 and bb.encoder is bb.latent_encoder
    shapes = block_shapes(bb, 9, 32, 32)
    # 4x VAE: 8x8 latents; down blocks 4x4 (the first downsamples), mid 4x4, up blocks back to 8x8
    assert shapes == {0: (9, 8, 8, 4), 1: (9, 4, 4, 32), 2: (9, 4, 4, 64), 3: (9, 4, 4, 64), 4: (9, 8, 8, 64),
                      5: (9, 8, 8, 32)}
    video = random_video(2, 3)
    feats = bb.features(video, torch.tensor([0, 1]), list(range(6)), 100.0, 0)
    assert {b: tuple(f.shape[1:]) for b, f in feats.items()} == block_shapes(bb, 3, 32, 32)
    assert all(f.shape[0] == 2 and f.dtype == torch.float32 for f in feats.values())


def test_frames_are_independent_images(sd) -> None:
    """Image mode: a frame's features do not depend on the other frames of its clip (t = 0: no noise)."""
    bb = sd.backbone
    video = random_video(1, 3, seed=1)
    whole = bb.features(video, torch.tensor([0]), [2, 5], 0.0, 0)
    alone = bb.features(video[:, 1:2], torch.tensor([0]), [2, 5], 0.0, 0)
    for b in (2, 5):
        torch.testing.assert_close(whole[b][:, 1:2], alone[b], atol=1e-4, rtol=1e-4)


def test_t0_features_equal_a_direct_forward(sd) -> None:
    bb = sd.backbone
    video = random_video(2, 2, seed=2)
    feats = bb.features(video, torch.tensor([3, 4]), [0, 1, 3, 5], 0.0, 0)
    # our own forward: the VAE mode times scaling_factor, the UNet at timestep 0 with the null prompt, our hooks
    x = rearrange(video, "b t h w c -> (b t) c h w").float() / 255 * 2 - 1
    with torch.no_grad():
        z = bb.vae.encode(x).latent_dist.mode() * bb.vae.config.scaling_factor
        with Calls(modules=unet_blocks(bb.unet)) as calls:
            bb.unet(z, torch.tensor(0), encoder_hidden_states=bb.null.expand(4, -1, -1))
    torch.testing.assert_close(feats[0], rearrange(z, "(b t) c h w -> b t h w c", b=2), atol=1e-4, rtol=1e-4)
    for b in (1, 3, 5):
        ref = rearrange(calls.outputs[b - 1][0], "(b t) c h w -> b t h w c", b=2)
        torch.testing.assert_close(feats[b], ref, atol=1e-4, rtol=1e-4)


def test_forward_stops_after_the_deepest_block(sd) -> None:
    bb = sd.backbone
    with Calls(modules=unet_blocks(bb.unet)) as calls:
        bb.features(random_video(1, 1), torch.tensor([0]), [2], 0.0, 0)
    assert [len(o) for o in calls.outputs] == [1, 1, 0, 0, 0]


def test_noising_follows_the_schedulers_ddpm_mapping(sd, sd_folder: Path) -> None:
    from diffusers import PNDMScheduler

    bb = sd.backbone
    scheduler = PNDMScheduler.from_pretrained(sd_folder / "scheduler")
    video, ids = random_video(2, 2, seed=3), torch.tensor([5, 9])
    z = bb.features(video, ids, [0], 0.0, 0)[0]  # (B, T, h, w, C)
    for t, tau in [(300.0, 300), (0.4, 0), (1000.0, 999)]:
        with Calls(model=bb.unet) as calls:
            bb.features(video, ids, [1], t, noise_seed=7)
        (sample, timestep), _ = calls.calls[0]
        eps = clip_noise(z, ids, 7, 0)
        ref = scheduler.add_noise(z, eps, torch.tensor(tau))  # the library's own DDPM noising at timestep tau
        ab = float(scheduler.alphas_cumprod[tau])
        torch.testing.assert_close(ref, math.sqrt(ab) * z + math.sqrt(1 - ab) * eps)
        torch.testing.assert_close(rearrange(sample, "(b t) c h w -> b t h w c", b=2), ref, atol=1e-4, rtol=1e-4)
        assert timestep.tolist() == [tau] * 4
    with Calls(model=bb.unet) as calls:  # t = 0: the clean latents at timestep 0
        bb.features(video, ids, [1], 0.0, noise_seed=7)
    torch.testing.assert_close(rearrange(calls.calls[0][0][0], "(b t) c h w -> b t h w c", b=2), z)
    assert calls.calls[0][0][1].tolist() == [0] * 4


def test_noise_is_per_clip_and_ensembles_average(sd) -> None:
    bb = sd.backbone
    video, ids = random_video(2, 2, seed=4), torch.tensor([1, 2])
    both = bb.features(video, ids, [2], 200.0, 3)[2]
    second = bb.features(video[1:], ids[1:], [2], 200.0, 3)[2]
    torch.testing.assert_close(both[1:], second, atol=1e-4, rtol=1e-4)
    draws = [bb.features(video, ids, [2], 200.0, 3, ensemble=k)[2] for k in (1, 2)]
    assert not torch.allclose(draws[0], draws[1])
    z = bb.encoder.features(video, ids, [0], 0.0, 0)[0]
    torch.testing.assert_close(bb.features_from_encoded(z, ids, [2], 200.0, 3, ensemble=2)[2], draws[1])


def test_latents_are_scaled_as_the_pipeline_scales_them(sd, sd_folder: Path) -> None:
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents
    from PIL import Image

    bb = sd.backbone
    video = random_video(1, 2, seed=5)
    z = bb.features(video, torch.tensor([0]), [0], 0.0, 0)[0]
    processor = VaeImageProcessor(vae_scale_factor=2 ** (len(bb.vae.config.block_out_channels) - 1))
    image = processor.preprocess([Image.fromarray(f.numpy()) for f in video[0]])  # the img2img pipeline's input
    with torch.no_grad():
        ref = retrieve_latents(bb.vae.encode(image), sample_mode="argmax") * bb.vae.config.scaling_factor
    torch.testing.assert_close(z[0], rearrange(ref, "t c h w -> t h w c"), atol=1e-4, rtol=1e-4)


def test_null_prompt_is_computed_once_saved_then_read(sd_folder: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    folder = _copy(sd_folder, tmp_path)
    (folder / "null_embeds.safetensors").unlink(missing_ok=True)
    bb = load_backbone(f"sd:{folder}", CPU).backbone
    saved = load_tensors(folder / "null_embeds.safetensors")["prompt_embeds"]
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    ref = pipe.encode_prompt("", CPU, 1, False)[0]  # the pipeline's own encoding of the empty prompt
    assert saved.shape == (1, 77, 32)
    torch.testing.assert_close(saved, ref)
    torch.testing.assert_close(bb.null, ref)
    # the file is read, not recomputed: a folder without text encoder and tokenizer loads from it
    shutil.rmtree(folder / "text_encoder")
    shutil.rmtree(folder / "tokenizer")
    save_tensors(folder / "null_embeds.safetensors", {"prompt_embeds": torch.ones(1, 5, 32)})
    torch.testing.assert_close(load_backbone(f"sd:{folder}", CPU).backbone.null, torch.ones(1, 5, 32))
    (folder / "null_embeds.safetensors").unlink()
    with pytest.raises(BackboneLoadError, match=r"null_embeds\.safetensors.*text encoder"):
        load_backbone(f"sd:{folder}", CPU)
    save_tensors(folder / "null_embeds.safetensors", {"prompt_embeds": torch.ones(1, 5, 16)})
    with pytest.raises(BackboneLoadError, match=r"null_embeds\.safetensors.*cross_attention_dim"):
        load_backbone(f"sd:{folder}", CPU)


def test_identity_changes_with_dtype_options_and_weights(sd_folder: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    folder = _copy(sd_folder, tmp_path)
    base = load_backbone(f"sd:{folder}", CPU).backbone.identity
    assert load_backbone(f"sd:{folder}", CPU).backbone.identity == base
    assert base.startswith("sd-tiny-sd-")
    bf16 = load_backbone(f"sd:{folder}@dtype=bf16", CPU).backbone
    assert bf16.identity != base and bf16.unet.dtype == torch.bfloat16
    assert load_backbone(f"sd:{folder}@vae_chunk=1", CPU).backbone.identity == base  # chunking: same features
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        unet.conv_in.weight.add_(0.01)
    unet.save_pretrained(folder / "unet")  # rewrite the weights file
    assert load_backbone(f"sd:{folder}", CPU).backbone.identity != base


def test_bf16_features_are_close_to_fp32(sd, sd_folder: Path) -> None:
    video = random_video(1, 1, seed=6)
    ref = sd.backbone.features(video, torch.tensor([0]), [3], 100.0, 0)[3]
    low = load_backbone(f"sd:{sd_folder}@dtype=bf16", CPU).backbone.features(video, torch.tensor([0]), [3], 100.0, 0)
    assert low[3].dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(low[3].flatten(), ref.flatten(), dim=0) > 0.99


def test_missing_and_mismatched_files_name_the_file(sd_folder: Path, tmp_path: Path) -> None:
    import json

    folder = _copy(sd_folder, tmp_path)
    with pytest.raises(BackboneLoadError, match="no such model folder"):
        load_backbone(f"sd:{tmp_path / 'nope'}", CPU)
    with pytest.raises(ConfigError, match=r"unknown key.*\['frames'\].*batch_size.*dtype.*vae_chunk"):
        load_backbone(f"sd:{folder}@frames=4", CPU)
    shutil.move(folder / "vae", tmp_path / "vae")
    with pytest.raises(BackboneLoadError, match=r"vae/config\.json: missing"):
        load_backbone(f"sd:{folder}", CPU)
    shutil.move(tmp_path / "vae", folder / "vae")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    shutil.move(weights, tmp_path / "w.safetensors")
    with pytest.raises(BackboneLoadError, match=r"unet: cannot load a UNet2DConditionModel"):
        load_backbone(f"sd:{folder}", CPU)
    shutil.move(tmp_path / "w.safetensors", weights)
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "block_out_channels": [32, 48]}))
    with pytest.raises(BackboneLoadError, match=r"unet: cannot load a UNet2DConditionModel.*shape"):
        load_backbone(f"sd:{folder}", CPU)
    # diffusers alone would initialise missing weights at random / drop stray ones with a warning
    unet_config = folder / "unet" / "config.json"
    unet_config.write_text(json.dumps({**config, "down_block_types": ["CrossAttnDownBlock2D"] * 2}))
    with pytest.raises(BackboneLoadError, match=r"unet: the weights do not fit .*config\.json \(missing down_blocks"):
        load_backbone(f"sd:{folder}", CPU)
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "down_block_types": ["DownBlock2D"] * 2,
                                                             "up_block_types": ["UpBlock2D"] * 2}))
    with pytest.raises(BackboneLoadError, match=r"unet: the weights do not fit .*unet/config\.json \(unused "):
        load_backbone(f"sd:{folder}", CPU)
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "addition_embed_type": "text_time"}))
    with pytest.raises(BackboneLoadError, match=r"unet/config\.json: addition_embed_type"):
        load_backbone(f"sd:{folder}", CPU)


def test_frames_must_fit_the_vae(sd) -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        sd.backbone.features(random_video(1, 1, size=30), torch.tensor([0]), [1], 0.0, 0)


def test_denoise_runs_the_schedulers_loop(sd) -> None:
    """A random UNet cannot denoise: the loop must run and return the latents' shape; with an oracle UNet that
    predicts the true noise, the folder's PNDM loop lands on the clean latents (up to its last sigma)."""
    bb = sd.backbone
    video, ids = random_video(1, 2, seed=7), torch.tensor([0])
    z = bb.encoder.features(video, ids, [0], 0.0, 0)[0]
    eps = clip_noise(z, ids, 0, 0)
    x_t, _ = bb.noise(z, 300.0, eps)
    est = bb.denoise(x_t, 300.0, z, steps=4)
    assert est.shape == z.shape and torch.isfinite(est).all()
    torch.testing.assert_close(bb.denoise(z, 0.0, z, steps=4), z)

    class Oracle(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
            ab = bb.scheduler.alphas_cumprod[timestep.long()].view(-1, 1, 1, 1)
            clean = rearrange(z, "b t h w c -> (b t) c h w")
            return ((sample - ab.sqrt() * clean) / (1 - ab).sqrt(),)

    real, bb.unet = bb.unet, Oracle()
    try:
        est = bb.denoise(x_t, 300.0, z, steps=4)
    finally:
        bb.unet = real
    before, after = (x_t - z).pow(2).mean(), (est - z).pow(2).mean()
    assert after < 0.01 * before


def test_probe_world_clips(sd_folder: Path) -> None:
    from diffprobe.data import open_dataset

    ds = open_dataset("probeworld:tiny@train_size=2")
    video = torch.stack([torch.from_numpy(ds.clips("train")[i]["video"]) for i in range(2)])  # (2, 9, 32, 32, 3)
    bb = load_backbone(f"sd:{sd_folder}", CPU).backbone
    feats = bb.features(video, torch.tensor([0, 1]), [0, 3, 5], 200.0, 0)
    assert {b: tuple(f.shape) for b, f in feats.items()} == {0: (2, 9, 8, 8, 4), 3: (2, 9, 4, 4, 64),
                                                             5: (2, 9, 8, 8, 32)}
    assert all(torch.isfinite(f).all() for f in feats.values())
