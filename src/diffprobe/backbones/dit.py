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

from diffprobe.backbones.external import BackboneLoadError, LatentEncoder
from diffprobe.backbones.loading import TransformerFolder
from diffprobe.backbones.transformers3d import DDPMTransformerBackbone, VAEFramesOptions
from diffprobe.backbones.video_windows import check_size


@dataclasses.dataclass(frozen=True)
class DiTOptions(VAEFramesOptions):
    """Options of ``dit``: ``dtype``, ``batch_size`` and ``vae_frames``."""


def null_class(transformer: nn.Module, folder: Path) -> int:
    """The label of the null class: ``num_classes`` of the class embedder, which has a row for it."""
    emb = transformer.transformer_blocks[0].norm1.emb.class_embedder
    if emb.embedding_table.num_embeddings <= emb.num_classes:
        raise BackboneLoadError(f"{folder / 'transformer' / 'config.json'}: the class embedder has no null class "
                                f"row ({emb.embedding_table.num_embeddings} rows for {emb.num_classes} classes)")
    return int(emb.num_classes)


def vae_encoder(folder: TransformerFolder) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 frames (B, t, H, W, 3) -> scaled latents (B, t, h, w, C) by the folder's image VAE:
    ``latent_dist.mean * scaling_factor``, the frames as the pipelines prepare them ([-1, 1], channels first); H and
    W must divide by the VAE's factor x the transformer's patch size."""
    vae, device, dtype = folder.vae, folder.device, folder.dtype
    scale = float(vae.config.scaling_factor)
    multiple = 2 ** (len(vae.config.block_out_channels) - 1) * int(folder.transformer.config.patch_size)

    def encode(video: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        check_size(video.shape[2], video.shape[3], multiple, folder.kind)
        x = (rearrange(video.to(device), "b t h w c -> (b t) c h w").float() / 127.5 - 1).to(dtype)  # [-1, 1]
        z = vae.encode(x).latent_dist.mean * scale  # (B*t, C, h, w)
        return rearrange(z, "(b t) c h w -> b t h w c", b=b)

    return encode


class DiTBackbone(DDPMTransformerBackbone):
    def __init__(self, identity: str, encoder: LatentEncoder, folder: TransformerFolder, null_label: int) -> None:
        self.null_label = null_label
        self.patch = int(folder.transformer.config.patch_size)
        super().__init__(identity, encoder, folder)

    def block_modules(self) -> list[nn.Module]:
        return list(self.transformer.transformer_blocks)

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

    folder = TransformerFolder.load("dit", path, options, spec, device, DiTOptions, DiTTransformer2DModel,
                                    AutoencoderKL)
    label = null_class(folder.transformer, path)
    details = {"conditioning": f"null class {label}", "t_mapping": "ddpm index=min(round(t*N/1000),N-1)",
               "latents": f"mean*{folder.vae.config.scaling_factor}"}
    return folder.resolve(DiTBackbone, details, vae_encoder(folder), "image", frames_per_chunk=folder.opts.vae_frames,
                          null_label=label)
