"""``sd``: Stable Diffusion 1.x / 2.x (diffusers ``UNet2DConditionModel`` + ``AutoencoderKL``), an image model.

Spec: ``sd:PATH[@dtype=fp32|bf16|fp16,batch_size=N,vae_chunk=N]``.

Folder layout (``StableDiffusionPipeline.save_pretrained``; ``safety_checker/``, ``feature_extractor/`` are not read)::

    PATH/
      unet/config.json, diffusion_pytorch_model.safetensors        UNet2DConditionModel
      vae/config.json, diffusion_pytorch_model.safetensors         AutoencoderKL
      scheduler/scheduler_config.json                              PNDM / DDIM / ... (its betas give alphas_cumprod)
      text_encoder/config.json, model.safetensors                  CLIPTextModel  } only to compute the null prompt
      tokenizer/vocab.json, merges.txt, tokenizer_config.json      CLIPTokenizer  } once (or null_embeds.safetensors)
      null_embeds.safetensors                                      written here on first use: prompt_embeds (1, L, D)

Image mode: every frame of a clip is its own sample (encoded, noised and denoised alone), so every block's features
are ``(B, T, h_b, w_b, C_b)`` over all T frames.

Blocks: 0 = the scaled latents ``vae.encode(x).latent_dist.mode() * scaling_factor`` of each frame ``(B, T, H/f, W/f,
C)`` (x: RGB in [-1, 1], f = the VAE's factor, 8 for SD); 1..D = ``unet.down_blocks``, D+1 = ``unet.mid_block``,
D+2..2D+1 = ``unet.up_blocks``, each at its output hidden states (after its downsampler / upsampler). SD 1.x/2.x have
9 blocks: down 1-3 at 1/2, 1/4, 1/8 of the latent grid (320, 640, 1280 channels), down 4 and mid at 1/8 (1280), up 1-3
at 1/4, 1/2, 1/1 (1280, 1280, 640), up 4 at 1/1 (320). Every block's output is a map ``(B*T, C_b, h_b, w_b)``,
returned as ``(B, T, h_b, w_b, C_b)``.

t mapping (DDPM): ``tau = min(N - 1, round(t * N / 1000))`` with N = the scheduler's ``num_train_timesteps``;
``x_t = sqrt(ab) z + sqrt(1 - ab) eps``, ``ab = alphas_cumprod[tau]`` of the folder's scheduler config, and the UNet is
given timestep ``tau``. t = 0 is the clean latents at timestep 0.

Conditioning: the empty prompt's CLIP text embeddings (``encode_prompt("")``: tokens padded to ``model_max_length``,
the text encoder's last hidden state), read from ``null_embeds.safetensors`` or computed once and saved there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange

from diffprobe.backbones.external import (
    BackboneLoadError,
    ExternalOptions,
    identity_of,
    parse_options,
    require_at_least,
)
from diffprobe.backbones.loading import check_null_embeds, load_part, load_scheduler
from diffprobe.backbones.unets import (
    UNetBackbone,
    chunked_frame_encoder,
    prompt_null_embeddings,
    read_config,
    vae_dtype,
)

if TYPE_CHECKING:
    from diffprobe.backbones.animatediff import AnimateDiffOptions
    from diffprobe.backbones.registry import ResolvedBackbone

T_MAPPING = "ddpm: tau=round(t*N/1000), x_t=sqrt(ab[tau]) z + sqrt(1-ab[tau]) eps"


@dataclasses.dataclass(frozen=True)
class SDOptions(ExternalOptions):
    """Options of ``sd``: ``dtype``, ``batch_size`` and ``vae_chunk`` (frames of a clip per VAE call; 0: all)."""

    vae_chunk: int = 8

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 0, "vae_chunk")


def load_sd_parts(path: Path, unet: torch.nn.Module, dtype: torch.dtype, device: torch.device
                  ) -> tuple[Any, Any, torch.Tensor]:
    """``(vae, scheduler, null prompt embeddings (1, L, D))`` of an SD 1.x/2.x folder, checked to fit ``unet`` (the
    caller loads the UNet; an ``animatediff`` folder shares these parts)."""
    from diffusers import AutoencoderKL

    vae_config = read_config(path, "vae/config.json")
    scheduler = load_scheduler(path, ddpm=True)
    vae = load_part(AutoencoderKL, path, "vae", vae_dtype(vae_config, dtype), device)
    if vae.config.get("shift_factor") is not None or vae.config.get("latents_mean") is not None:
        raise BackboneLoadError(f"{path / 'vae/config.json'}: a VAE with shift_factor / latents_mean is not an SD "
                                "1.x/2.x VAE (the SD pipelines scale by scaling_factor only)")
    null = prompt_null_embeddings(path)
    check_null_embeds(path, null, int(unet.config.cross_attention_dim), dim_from="the UNet's cross_attention_dim")
    if unet.config.in_channels != vae.config.latent_channels:
        raise BackboneLoadError(f"{path / 'unet/config.json'}: in_channels={unet.config.in_channels}, but the VAE has "
                                f"{vae.config.latent_channels} latent channels (vae/config.json)")
    return vae, scheduler, null


class SDBackbone(UNetBackbone):
    """SD's UNet frame by frame (image mode) with the null prompt; see the module docstring. ``window``: frames per
    sample of a video UNet on the same parts (``animatediff``)."""

    kind = "sd"

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, scheduler: Any, null: torch.Tensor,
                 identity: str, device: torch.device, options: SDOptions | AnimateDiffOptions,
                 window: int = 0) -> None:
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.null = null.to(device, options.torch_dtype)  # (1, L, D)
        self.latent_channels = int(vae.config.latent_channels)
        self.window = window
        self.latent_encoder = chunked_frame_encoder(f"{identity}-latents", vae, device, options.vae_chunk, self.kind)
        super().__init__(identity, self.latent_encoder, device, options.torch_dtype, options.batch_size)

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, clean: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        b, n = x_t.shape[:2]
        sample = rearrange(x_t, "b t h w c -> (b t) c h w")  # every frame its own image
        prompt = self.null.expand(b * n, -1, -1)
        out = self.unet(sample, timestep.repeat_interleave(n), encoder_hidden_states=prompt, return_dict=False)[0]
        return rearrange(out, "(b t) c h w -> b t h w c", b=b)


def load_sd(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    """The ``sd`` factory (see the module docstring)."""
    from diffusers import UNet2DConditionModel

    from diffprobe.backbones.registry import ResolvedBackbone

    opts = parse_options(SDOptions, options, spec)
    assert isinstance(opts, SDOptions)
    unet_config = read_config(path, "unet/config.json")
    if unet_config.get("addition_embed_type"):
        raise BackboneLoadError(f"{path / 'unet/config.json'}: addition_embed_type="
                                f"{unet_config['addition_embed_type']!r} (an SDXL-style UNet, which needs pooled text "
                                "embeddings and time ids) is not an SD 1.x/2.x UNet")
    unet = load_part(UNet2DConditionModel, path, "unet", opts.torch_dtype, device)
    vae, scheduler, null = load_sd_parts(path, unet, opts.torch_dtype, device)
    identity = identity_of("sd", path, opts, conditioning="empty-prompt", t_mapping=T_MAPPING, mode="image")
    return ResolvedBackbone(SDBackbone(unet, vae, scheduler, null, identity, device, opts), "image", 0, None)
