"""``dit``: a class-conditional DiT (``DiTTransformer2DModel`` + ``AutoencoderKL``), an image model: every frame of a
clip is its own sample (image mode; features ``(B, T, h, w, D)``).

Folder (diffusers ``save_pretrained`` layout, e.g. ``facebook/DiT-XL-2-256``)::

    PATH/
      transformer/config.json, diffusion_pytorch_model.safetensors   DiTTransformer2DModel
      vae/config.json, diffusion_pytorch_model.safetensors           AutoencoderKL
      scheduler/scheduler_config.json                                its sampling scheduler (DDIM, DDPM, DPM-Solver)

Blocks: 0 = the scaled VAE latents ``(B, T, H/8, W/8, 4)`` (``latent_dist.mean * scaling_factor``, the scale
``DiTPipeline`` undoes before decoding; frames encoded ``vae_frames`` at a time); 1..N = ``transformer_blocks[b - 1]``
(N = ``num_layers``), tokens ``(B, T, H/8/p, W/8/p, D)`` (the patch grid, row-major as ``PatchEmbed`` flattens it).

t mapping: DDPM on the folder's scheduler: timestep ``i = min(round(t * N / 1000), N - 1)`` (N = its
``num_train_timesteps``, so i = t for the usual N = 1000), ``x_t = sqrt(ab_i) z + sqrt(1 - ab_i) eps``; t = 0 is the
clean latent at timestep 0. Conditioning: the null class, label ``num_classes`` (the extra row of the class
embedder that classifier-free guidance uses; ``DiTPipeline`` passes 1000 for ImageNet's 1000 classes).

Options: ``dtype`` (fp32|bf16|fp16), ``batch_size`` (clips per forward), ``vae_frames`` (frames per VAE call).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from diffprobe.backbones.external import (
    BackboneLoadError,
    ExternalOptions,
    LatentEncoder,
    identity_of,
    parse_options,
    require_files,
)
from diffprobe.backbones.transformers3d import (
    DDPMSchedule,
    TransformerBackbone,
    check_size,
    load_part,
    load_scheduler,
)
from diffprobe.config import ConfigError


@dataclasses.dataclass(frozen=True)
class DiTOptions(ExternalOptions):
    vae_frames: int = 16  #: frames per VAE encode call

    def validate(self) -> None:
        super().validate()
        if self.vae_frames < 1:
            raise ConfigError(f"DiTOptions.vae_frames: must be >= 1, got {self.vae_frames}")


def null_class(transformer: nn.Module, folder: Path) -> int:
    """The label of the null class: ``num_classes`` of the class embedder, which has a row for it."""
    emb = transformer.transformer_blocks[0].norm1.emb.class_embedder
    if emb.embedding_table.num_embeddings <= emb.num_classes:
        raise BackboneLoadError(f"{folder / 'transformer' / 'config.json'}: the class embedder has no null class "
                                f"row ({emb.embedding_table.num_embeddings} rows for {emb.num_classes} classes)")
    return int(emb.num_classes)


def vae_encoder(vae: nn.Module, dtype: torch.dtype, device: torch.device, multiple: int, kind: str
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 frames (B, t, H, W, 3) -> scaled latents (B, t, h, w, C): ``latent_dist.mean * scaling_factor``, the
    frames as the pipelines prepare them ([-1, 1], channels first); ``multiple``: what H and W must divide by."""
    scale = float(vae.config.scaling_factor)

    def encode(video: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        check_size(video.shape[2], video.shape[3], multiple, kind)
        x = (rearrange(video.to(device), "b t h w c -> (b t) c h w").float() / 127.5 - 1).to(dtype)  # [-1, 1]
        z = vae.encode(x).latent_dist.mean * scale  # (B*t, C, h, w)
        return rearrange(z, "(b t) c h w -> b t h w c", b=b)

    return encode


class DiTBackbone(TransformerBackbone):
    t_mapping = "ddpm"

    def __init__(self, identity: str, encoder: LatentEncoder, transformer: nn.Module, scheduler: object,
                 null_label: int, device: torch.device, dtype: torch.dtype, batch_size: int, folder: Path) -> None:
        self.transformer, self.null_label = transformer, null_label
        self.ddpm = DDPMSchedule.of(scheduler, folder)
        self.patch = int(transformer.config.patch_size)
        super().__init__(identity, encoder, device, dtype, batch_size, scheduler)

    def block_modules(self) -> list[nn.Module]:
        return list(self.transformer.transformer_blocks)

    def noise(self, z: torch.Tensor, t: float, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ddpm.noise(z, t, eps)

    def level(self, t: float) -> float:
        return self.ddpm.index(t)

    def call(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        b, frames = x.shape[:2]
        images = rearrange(x, "b t h w c -> (b t) c h w").to(self.dtype)  # every frame its own sample
        labels = torch.full((len(images),), self.null_label, dtype=torch.long, device=x.device)
        out = self.transformer(images, timestep=timestep.repeat_interleave(frames), class_labels=labels).sample
        return rearrange(out, "(b t) c h w -> b t h w c", b=b)

    def prediction(self, out: torch.Tensor) -> torch.Tensor:
        c = self.transformer.config.in_channels
        return out[..., :c] if out.shape[-1] == 2 * c else out  # learned sigma: the pipeline steps on eps only

    def tokens(self, block: int, output: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        b, frames, h, w = grid
        return rearrange(output, "(b t) (h w) d -> b t h w d", b=b, t=frames, h=h // self.patch)  # (B, T, h', w', D)


def load_dit(path: Path, options: dict[str, str], spec: str, device: torch.device):
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    from diffprobe.backbones.registry import ResolvedBackbone

    opts = parse_options(DiTOptions, options, spec)
    assert isinstance(opts, DiTOptions)
    require_files(path, "transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json")
    dtype = opts.torch_dtype
    transformer = load_part(DiTTransformer2DModel, path, "transformer", dtype, device)
    vae = load_part(AutoencoderKL, path, "vae", dtype, device)
    scheduler = load_scheduler(path)
    label = null_class(transformer, path)
    details = {"conditioning": f"null class {label}", "t_mapping": "ddpm index=min(round(t*N/1000),N-1)",
               "latents": f"mean*{vae.config.scaling_factor}"}
    multiple = 2 ** (len(vae.config.block_out_channels) - 1) * int(transformer.config.patch_size)
    encoder = LatentEncoder(identity_of("dit-latents", path, opts, **details),
                            vae_encoder(vae, dtype, device, multiple, "dit"), device, frames_per_chunk=opts.vae_frames)
    backbone = DiTBackbone(identity_of("dit", path, opts, **details), encoder, transformer, scheduler, label, device,
                           dtype, opts.batch_size, path)
    return ResolvedBackbone(backbone, mode="image", step=0, trained_on=None)
