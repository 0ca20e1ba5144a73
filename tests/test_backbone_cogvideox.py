"""The ``cogvideox`` backbone on tiny random CogVideoX folders (5b-like rotary, 2b-like sincos, 1.5-like temporal
patches): shapes and the patch order, a direct forward at t = 0 with the pipeline's latents and rotary embeddings,
DDPM noising, windows, the null prompt computed once, identity, bad folders, the registry and denoise."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hf_models_dit import Hooks, random_clip, save_tiny_cogvideox  # noqa: E402

from diffprobe.backbones.base import clip_noise  # noqa: E402
from diffprobe.backbones.external import BackboneLoadError  # noqa: E402
from diffprobe.backbones.registry import block_shapes, load_backbone  # noqa: E402
from diffprobe.config import ConfigError  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_cogvideox(tmp_path_factory.mktemp("cogvideox") / "model")


@pytest.fixture(scope="module")
def backbone(folder: Path):
    return load_backbone(f"cogvideox:{folder}", CPU).backbone


def test_block_shapes(backbone) -> None:
    # 9 frames -> 1 + 2 latent frames, 32 px -> 4 latent px -> 2 patches
    assert block_shapes(backbone, 9, 32, 32) == {0: (3, 4, 4, 4), 1: (3, 2, 2, 32), 2: (3, 2, 2, 32)}


def test_tokens_follow_the_models_patch_order(backbone) -> None:
    """Block 1 made the identity returns the patch embedding's visual tokens: a latent change constant in time must
    come out constant along T_f, one that varies along width only constant along T_f and rows."""
    z = torch.randn(1, 3, 4, 4, 4)
    in_time = torch.linspace(-1, 1, 3).view(1, 3, 1, 1, 1).expand_as(z)
    along_w = torch.linspace(-1, 1, 4).view(1, 1, 1, 4, 1).expand_as(z)
    ids = torch.tensor([0])
    with Hooks().identity(backbone.transformer.transformer_blocks[0]):
        base = backbone.features_from_encoded(z, ids, [1], 0.0, 0)[1]
        d_t = backbone.features_from_encoded(z + in_time, ids, [1], 0.0, 0)[1] - base  # (1, 3, 2, 2, D)
        d_w = backbone.features_from_encoded(z + along_w, ids, [1], 0.0, 0)[1] - base
    torch.testing.assert_close(d_t, d_t[:, :, :1, :1].expand_as(d_t), atol=1e-5, rtol=0)  # constant in space
    assert (d_t[0, 0] - d_t[0, -1]).abs().max() > 1e-3  # varies in time
    torch.testing.assert_close(d_w, d_w[:, :1, :1].expand_as(d_w), atol=1e-5, rtol=0)  # constant in time and rows
    assert (d_w[0, 0, 0, 0] - d_w[0, 0, 0, 1]).abs().max() > 1e-3


def test_t0_equals_a_direct_forward_with_the_pipelines_latents(folder: Path, backbone) -> None:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel
    from diffusers.video_processor import VideoProcessor
    from safetensors.torch import load_file

    video = random_clip(2, 9, seed=2)
    feats = backbone.features(video, torch.tensor([0, 1]), [0, 1, 2], 0.0, 5)
    vae = AutoencoderKLCogVideoX.from_pretrained(folder / "vae").eval()
    transformer = CogVideoXTransformer3DModel.from_pretrained(folder / "transformer").eval()
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=None)
    pixels = VideoProcessor(vae_scale_factor=8).preprocess_video(video.numpy().astype("float32") / 255)
    null = load_file(str(folder / "null_embeds.safetensors"))["prompt_embeds"]
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mean.permute(0, 2, 1, 3, 4) * vae.config.scaling_factor  # (B, F, C, h, w)
        torch.testing.assert_close(feats[0], z.permute(0, 1, 3, 4, 2), atol=1e-5, rtol=1e-4)
        rotary = pipe._prepare_rotary_positional_embeddings(32, 32, 3, CPU)
        with Hooks() as hooks:
            for block in transformer.transformer_blocks:
                hooks.outputs(block)
            transformer(hidden_states=z, encoder_hidden_states=null.expand(2, -1, -1),
                        timestep=torch.zeros(2, dtype=torch.long), image_rotary_emb=rotary)
    for b, out in enumerate(hooks.seen, start=1):  # (B, 3 * 2 * 2, D): frame-major patch tokens
        torch.testing.assert_close(feats[b], out.reshape(2, 3, 2, 2, -1), atol=1e-5, rtol=1e-4)


def test_noise_follows_ddpm_on_the_folders_scheduler(folder: Path, backbone) -> None:
    from diffusers import CogVideoXDDIMScheduler

    ids = torch.tensor([2, 9])
    z = torch.randn(2, 3, 4, 4, 4)
    with Hooks() as hooks:
        hooks.inputs(backbone.transformer)
        backbone.features_from_encoded(z, ids, [1], 500.0, noise_seed=4)
    kwargs = hooks.seen[0][1]
    eps = clip_noise(z, ids, 4, 0)
    scheduler = CogVideoXDDIMScheduler.from_pretrained(folder / "scheduler")
    ab = float(scheduler.alphas_cumprod[500])
    fed = kwargs["hidden_states"].permute(0, 1, 3, 4, 2)  # (B, F, C, h, w) -> (B, F, h, w, C)
    torch.testing.assert_close(fed, math.sqrt(ab) * z + math.sqrt(1 - ab) * eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fed, scheduler.add_noise(z, eps, torch.tensor([500])), atol=1e-5, rtol=1e-5)
    assert kwargs["timestep"].tolist() == [500, 500]


def test_windows_tile_and_cut(folder: Path, backbone) -> None:
    video = random_clip(1, 10, seed=1)
    ids = torch.tensor([0])
    tiled = load_backbone(f"cogvideox:{folder}@frames=5", CPU).backbone
    assert block_shapes(tiled, 10, 32, 32)[2] == (4, 2, 2, 32)  # 2 windows x 2 latent frames
    whole = tiled.features(video, ids, [0, 2], 0.0, 0)
    for k in range(2):  # each window is its own sample
        alone = backbone.features(video[:, 5 * k:5 * k + 5], ids, [0, 2], 0.0, 0)
        for b in (0, 2):
            torch.testing.assert_close(whole[b][:, 2 * k:2 * k + 2], alone[b], atol=1e-5, rtol=1e-4)
    cut = load_backbone(f"cogvideox:{folder}@frames=5,window=cut", CPU).backbone
    torch.testing.assert_close(cut.features(video, ids, [2], 0.0, 0)[2], whole[2][:, :2], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"1 \+ 4k"):
        backbone.features(video[:, :8], ids, [1], 0.0, 0)
    with pytest.raises(ValueError, match="does not tile"):
        load_backbone(f"cogvideox:{folder}@frames=9", CPU).backbone.features(video, ids, [1], 0.0, 0)
    with pytest.raises(ValueError, match="multiples of 16"):
        backbone.features(random_clip(1, 5, size=24), ids, [1], 0.0, 0)


def test_temporal_patches_and_sincos_variants(tmp_path: Path) -> None:
    """CogVideoX 1.5 (patch_size_t 2): 3 latent frames are padded at the front to 4 -> 2 token frames. 2b-like
    (sincos positions): the null prompt must have max_text_seq_length tokens."""
    v15 = save_tiny_cogvideox(tmp_path / "v15", text_encoder=False, patch_size_t=2, patch_bias=False)
    backbone = load_backbone(f"cogvideox:{v15}", CPU).backbone
    assert block_shapes(backbone, 9, 32, 32) == {0: (3, 4, 4, 4), 1: (2, 2, 2, 32), 2: (2, 2, 2, 32)}
    z = torch.randn(1, 3, 4, 4, 4)
    x_t, _ = backbone.noise(z, 300.0, torch.randn_like(z))
    assert backbone.denoise(x_t, 300.0, z, steps=2).shape == z.shape
    v2b = save_tiny_cogvideox(tmp_path / "v2b", text_encoder=False, use_rotary_positional_embeddings=False)
    assert block_shapes(load_backbone(f"cogvideox:{v2b}", CPU).backbone, 9, 32, 32)[2] == (3, 2, 2, 32)
    from safetensors.torch import save_file

    save_file({"prompt_embeds": torch.randn(1, 5, 32)}, str(v2b / "null_embeds.safetensors"))
    with pytest.raises(BackboneLoadError, match=r"null_embeds\.safetensors.*5 tokens"):
        load_backbone(f"cogvideox:{v2b}", CPU)


def test_an_image_to_video_transformer_is_refused(tmp_path: Path) -> None:
    """CogVideoX's I2V transformers take the image latents too: twice the VAE's latent channels."""
    i2v = save_tiny_cogvideox(tmp_path / "i2v", text_encoder=False, in_channels=8)
    with pytest.raises(BackboneLoadError, match=r"transformer/config\.json: in_channels 8 != the VAE's 4 latent "
                                                r"channels \(an image-to-video model; this kind takes text-to-video "
                                                r"CogVideoX\)"):
        load_backbone(f"cogvideox:{i2v}", CPU)


def test_null_prompt_is_computed_once_then_read(tmp_path: Path) -> None:
    from diffusers import CogVideoXPipeline
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, T5EncoderModel

    folder = save_tiny_cogvideox(tmp_path / "fresh")
    assert not (folder / "null_embeds.safetensors").exists()
    load_backbone(f"cogvideox:{folder}", CPU)
    saved = load_file(str(folder / "null_embeds.safetensors"))["prompt_embeds"]
    pipe = CogVideoXPipeline(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
                             text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder").eval(), vae=None,
                             transformer=None, scheduler=None)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, max_sequence_length=8, device=CPU)
    assert saved.shape == (1, 8, 32)
    torch.testing.assert_close(saved, expected, atol=1e-6, rtol=1e-5)
    shutil.rmtree(folder / "text_encoder")  # now only the saved file can give it
    backbone = load_backbone(f"cogvideox:{folder}", CPU).backbone
    torch.testing.assert_close(backbone.null, saved)
    save_file({"prompt_embeds": torch.randn(1, 8, 7)}, str(folder / "null_embeds.safetensors"))
    with pytest.raises(BackboneLoadError, match=r"null_embeds\.safetensors.*\(1, L, 32\)"):
        load_backbone(f"cogvideox:{folder}", CPU)
    (folder / "null_embeds.safetensors").unlink()
    with pytest.raises(BackboneLoadError, match=r"null_embeds\.safetensors: missing.*text encoder"):
        load_backbone(f"cogvideox:{folder}", CPU)


def test_identity_changes_with_dtype_options_and_weights(folder: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    first = load_backbone(f"cogvideox:{copy}", CPU).backbone.identity
    assert load_backbone(f"cogvideox:{copy}", CPU).backbone.identity == first
    others = {load_backbone(f"cogvideox:{copy}@{o}", CPU).backbone.identity
              for o in ("dtype=bf16", "frames=5", "frames=5,window=cut")}
    assert len(others) == 3 and first not in others
    (copy / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(
        (folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes())  # rewritten: new mtime
    assert load_backbone(f"cogvideox:{copy}", CPU).backbone.identity != first


def test_bad_folders_name_the_file(folder: Path, tmp_path: Path) -> None:
    gone = Path(shutil.copytree(folder, tmp_path / "gone"))
    (gone / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(BackboneLoadError, match="transformer"):
        load_backbone(f"cogvideox:{gone}", CPU)
    bad = Path(shutil.copytree(folder, tmp_path / "bad"))
    cfg_path = bad / "vae" / "config.json"
    cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | {"latent_channels": 8}))
    with pytest.raises(BackboneLoadError, match=r"vae.*config\.json"):
        load_backbone(f"cogvideox:{bad}", CPU)
    with pytest.raises(ConfigError, match=r"unknown key.*known keys are.*frames.*window"):
        load_backbone(f"cogvideox:{folder}@vae_frames=2", CPU)


def test_registry_resolves_a_video_backbone(folder: Path) -> None:
    resolved = load_backbone(f"cogvideox:{folder}", CPU)
    assert (resolved.mode, resolved.step, resolved.trained_on) == ("video", 0, None)
    assert resolved.backbone.num_blocks == 2 and resolved.backbone.identity.startswith("cogvideox-model-")


@pytest.mark.parametrize("scheduler", ["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"])
def test_denoise_runs_and_recovers_the_clean_latents_with_an_oracle(backbone, scheduler: str, monkeypatch) -> None:
    """The random model cannot denoise: the loop runs and keeps the shape. With an oracle v-prediction the
    folder's scheduler (and its DPM sibling), started at t's timestep, returns the clean latents."""
    import diffusers

    monkeypatch.setattr(backbone, "scheduler", getattr(diffusers, scheduler).from_config(backbone.scheduler.config))
    z = torch.randn(1, 3, 4, 4, 4)
    x_t, _ = backbone.noise(z, 700.0, torch.randn_like(z))
    assert backbone.denoise(x_t, 700.0, z, steps=3).shape == z.shape
    ab = backbone.ddpm.alphas_cumprod

    def oracle(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        a = float(ab[int(timestep[0])])
        eps = (x - math.sqrt(a) * z) / math.sqrt(1 - a)
        return math.sqrt(a) * eps - math.sqrt(1 - a) * z  # v

    monkeypatch.setattr(backbone, "call", oracle)
    torch.testing.assert_close(backbone.denoise(x_t, 700.0, z, steps=5), z, atol=1e-4, rtol=1e-4)
