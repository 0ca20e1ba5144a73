"""Tiny random diffusers models in their pipelines' ``save_pretrained`` layout, for the UNet kinds' tests.

Sizes follow the spirit of diffusers' own fast tests (32/64-channel UNets, 4 latent channels, 32-wide CLIP towers), cut
down to one layer a block so a forward on a 9-frame 32x32 clip takes a fraction of a second on CPU. Every VAE here
has three levels (4x spatial compression: 32x32 pixels -> 8x8 latents, like our WALT tokenizer's tiny preset) and a
``scaling_factor`` that gives its latents about unit variance (as SD's 0.18215 does for SD's VAE).

- :func:`save_tiny_sd`: an SD 1.x folder (UNet2DConditionModel, AutoencoderKL, PNDM scheduler with SD's betas, a tiny
  CLIP text encoder and a tokenizer from a vocabulary written here).
- :func:`save_tiny_animatediff`: the same SD folder plus ``motion_adapter/`` (``layout="adapter"``), or the
  AnimateDiff pipeline's own save (``layout="pipeline"``: ``unet/`` is a UNetMotionModel).
- :func:`save_tiny_svd`: an SVD folder (UNetSpatioTemporalConditionModel with ``num_frames=9``,
  AutoencoderKLTemporalDecoder, EulerDiscreteScheduler as SVD's, CLIPVisionModelWithProjection, CLIPImageProcessor).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def write_tiny_clip_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer folder (vocab.json, merges.txt, tokenizer_config.json) with a vocabulary of letters and a
    few merges; the empty prompt is ``<|startoftext|> <|endoftext|>...`` padded to 77 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["th", "the</w>", "pr", "pro", "probe</w>", "wo", "world</w>"]
    vocab = ["<|startoftext|>", "<|endoftext|>", *LETTERS, *(c + "</w>" for c in LETTERS), *words]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\np r\npr o\nw o\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77,
                                                              "tokenizer_class": "CLIPTokenizer"}))
    return folder


def _unit_scaling(vae: torch.nn.Module) -> None:
    """Set the VAE's ``scaling_factor`` to 1 / the std of its latents on smooth random frames, as SD chose 0.18215
    for its VAE: the scaled latents have about unit variance, so noise levels mean what they mean for real models."""
    with torch.no_grad():
        frames = random_video(4, 2, seed=123).flatten(0, 1).permute(0, 3, 1, 2).float() / 127.5 - 1
        std = float(vae.encode(frames).latent_dist.mode().std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))


def _sd_components(seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=8,
        sample_size=32)
    _unit_scaling(vae)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(Path(tmp)))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    return {"unet": unet, "vae": vae, "scheduler": scheduler, "text_encoder": text_encoder.eval(),
            "tokenizer": tokenizer}


def save_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """A tiny random SD 1.x pipeline saved by ``StableDiffusionPipeline.save_pretrained`` into ``folder``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**_sd_components(seed), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return Path(folder)


def tiny_motion_adapter(seed: int = 1):
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    return MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                         motion_num_attention_heads=4, motion_max_seq_length=32)


def save_tiny_animatediff(folder: Path, layout: str = "adapter", seed: int = 0) -> Path:
    """A tiny random AnimateDiff model in ``folder``: ``layout="adapter"`` = an SD folder + ``motion_adapter/``
    (``MotionAdapter.save_pretrained``); ``layout="pipeline"`` = ``AnimateDiffPipeline.save_pretrained`` (its
    ``unet/`` is the UNetMotionModel built from the SD UNet and the adapter, and it also saves ``motion_adapter/``)."""
    from diffusers import AnimateDiffPipeline

    adapter = tiny_motion_adapter(seed + 1)
    if layout == "adapter":
        save_tiny_sd(folder, seed)
        adapter.save_pretrained(Path(folder) / "motion_adapter")
    elif layout == "pipeline":
        AnimateDiffPipeline(**_sd_components(seed), motion_adapter=adapter).save_pretrained(folder)
    else:
        raise ValueError(f"layout must be 'adapter' or 'pipeline', got {layout!r}")
    return Path(folder)


def save_tiny_svd(folder: Path, num_frames: int = 9, seed: int = 0) -> Path:
    """A tiny random SVD pipeline saved by ``StableVideoDiffusionPipeline.save_pretrained`` into ``folder`` (UNet
    config ``num_frames``: the lead's 9-frame Probe World clips by default)."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
        num_attention_heads=(4, 8), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
        num_frames=num_frames)
    vae = AutoencoderKLTemporalDecoder(in_channels=3, out_channels=3, latent_channels=4,
                                       block_out_channels=(32, 32, 32), layers_per_block=1,
                                       down_block_types=("DownEncoderBlock2D",) * 3, sample_size=32)
    _unit_scaling(vae)
    scheduler = EulerDiscreteScheduler(  # SVD's scheduler config
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        interpolation_type="linear", prediction_type="v_prediction", sigma_min=0.002, sigma_max=700.0,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=4)).eval()
    feature_extractor = CLIPImageProcessor(crop_size=32, size=32)
    StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                 feature_extractor=feature_extractor).save_pretrained(folder)
    return Path(folder)


# ---- helpers shared by the UNet kinds' tests ----------------------------------------------------------------------
def random_video(b: int = 2, t: int = 9, size: int = 32, seed: int = 0) -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) of smooth random colour fields (so the VAE sees image-like input)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((b * t, 3, 4, 4), generator=g)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    video = (up * 255).round().to(torch.uint8)
    return video.reshape(b, t, 3, size, size).permute(0, 1, 3, 4, 2).contiguous()


class Calls:
    """Our own hooks (independent of diffprobe's BlockTaps): the outputs of ``modules`` (first element of a tuple)
    and the arguments of every call of ``model``."""

    def __init__(self, model: torch.nn.Module | None = None, modules: list[torch.nn.Module] | None = None) -> None:
        self.outputs: list[list[torch.Tensor]] = [[] for _ in modules or []]
        self.calls: list[tuple[tuple, dict]] = []
        self.handles = []
        for i, m in enumerate(modules or []):
            self.handles.append(m.register_forward_hook(
                lambda mod, args, out, i=i: self.outputs[i].append(out[0] if isinstance(out, tuple) else out)))
        if model is not None:
            self.handles.append(model.register_forward_pre_hook(
                lambda mod, args, kwargs: self.calls.append((args, kwargs)), with_kwargs=True))

    def __enter__(self) -> Calls:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def unet_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
