"""``cogvideox``: CogVideoX text-to-video (``CogVideoXTransformer3DModel`` + ``AutoencoderKLCogVideoX``), a video
model: it sees the clip (or its windows, see ``frames`` / ``window``).

Folder (diffusers ``save_pretrained`` layout, e.g. ``THUDM/CogVideoX-2b``, ``THUDM/CogVideoX-5b``,
``THUDM/CogVideoX1.5-5B``)::

    PATH/
      transformer/config.json, diffusion_pytorch_model*.safetensors   CogVideoXTransformer3DModel
      vae/config.json, diffusion_pytorch_model.safetensors            AutoencoderKLCogVideoX
      scheduler/scheduler_config.json                                 CogVideoXDDIMScheduler / CogVideoXDPMScheduler
      text_encoder/, tokenizer/                                       T5EncoderModel + its tokenizer (only to compute
      null_embeds.safetensors                                         the null embedding once; written here)

Clip lengths: the VAE compresses time 4x causally, so a window must have ``1 + 4k`` frames (1, 5, 9, ..., 49 -> 1 + k
latent frames; Probe World's 9 frames -> 3). CogVideoX 1.5 (``patch_size_t`` = 2) pairs latent frames: an odd count
is padded at the front by repeating the first latent frame, as the pipeline pads its latents at the front (it pads
with noise and drops the padding after sampling).

Blocks: 0 = the scaled latents ``(B, T', H/8, W/8, C)`` (``latent_dist.mean * scaling_factor``, the scale
``CogVideoXPipeline`` undoes before decoding); 1..N = ``transformer_blocks[b - 1]``, each returning
``(hidden_states, encoder_hidden_states)``: the visual part (the text tokens are the other tensor) as
``(B, T'', H/8/p, W/8/p, D)`` by the model's patch order (frame-major, then rows, then columns; T'' = T' or, with
``patch_size_t``, the padded T' / patch_size_t). Rotary embeddings (``use_rotary_positional_embeddings``) are built by
the pipeline's own ``_prepare_rotary_positional_embeddings`` for the latent grid.

t mapping: DDPM on the folder's scheduler (v-prediction; its ``alphas_cumprod`` include CogVideoX's SNR shift): the
model's timestep is the DDPM index ``i = min(round(t * N / 1000), N - 1)``, ``x_t = sqrt(ab_i) z + sqrt(1 - ab_i)
eps``. Conditioning: the empty prompt, T5 of the folder as ``CogVideoXPipeline.encode_prompt("")`` gives it
(``max_text_seq_length`` tokens), ``null_embeds.safetensors`` tensor ``prompt_embeds`` (1, L, 4096).

Options: ``dtype``, ``batch_size``, ``frames`` (frames per window, 0 = the whole clip; 49 for CogVideoX's own
length, its ``sample_frames``), ``window`` (tile | cut), ``overlap`` (frames shared by consecutive tiled windows,
``1 + 4j``; their features are stitched per latent frame, see :func:`~diffprobe.backbones.transformers3d.stitch_index`;
a CogVideoX 1.5 folder, whose feature frames pair latent frames, takes no overlap), ``vae_tiling`` (auto | off) and
``vae_tile`` (pixels; 0: the VAE's own tile, half its ``sample_height`` x ``sample_width``): frames taller or wider than
one tile are encoded in tiles, and the identity names the tiling (``+vaetiles...``) for those sizes only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from diffprobe.backbones.external import LatentEncoder
from diffprobe.backbones.loading import TransformerFolder
from diffprobe.backbones.transformers3d import DDPMTransformerBackbone
from diffprobe.backbones.video_windows import TiledVideoOptions, causal_windows, vae_tiling, video_vae_encoder
from diffprobe.config import ConfigError


class CogVideoXBackbone(DDPMTransformerBackbone):
    def __init__(self, identity: str, encoder: LatentEncoder, folder: TransformerFolder, pipe: Any,
                 null: torch.Tensor, window_latents: int | None, window_stride: int | None = None) -> None:
        self.pipe = pipe
        cfg = folder.transformer.config
        self.patch, self.patch_t = int(cfg.patch_size), int(cfg.patch_size_t or 1)
        super().__init__(identity, encoder, folder, null, window_latents, window_stride)

    def block_modules(self) -> list[nn.Module]:
        return list(self.transformer.transformer_blocks)

    def padding(self, frames: int) -> int:
        """Latent frames added at the front so that ``patch_size_t`` divides them (the pipeline's padding)."""
        return (-frames) % self.patch_t

    def call(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        b, frames, h, w, _ = x.shape
        pad = self.padding(frames)
        if pad:
            x = torch.cat([x[:, :1].expand(-1, pad, -1, -1, -1), x], dim=1)
        cfg = self.transformer.config
        rotary = None
        if cfg.use_rotary_positional_embeddings:
            sf = self.pipe.vae_scale_factor_spatial
            rotary = self.pipe._prepare_rotary_positional_embeddings(h * sf, w * sf, frames + pad, x.device)
        ofs = None if cfg.ofs_embed_dim is None else x.new_full((1,), 2.0)  # as the image-to-video pipeline passes it
        out = self.transformer(hidden_states=rearrange(x, "b t h w c -> b t c h w").to(self.dtype),
                               encoder_hidden_states=self.null.expand(b, -1, -1), timestep=timestep,
                               image_rotary_emb=rotary, ofs=ofs, return_dict=False)[0]  # (B, T+pad, C, h, w)
        return rearrange(out, "b t c h w -> b t h w c")[:, pad:]

    def tokens(self, block: int, output: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        b, frames, h, w = grid
        per_window = self.window_latents or frames
        t_tok = (per_window + self.padding(per_window)) // self.patch_t
        return rearrange(output, "(b k) (t h w) d -> b (k t) h w d", b=b, t=t_tok, h=h // self.patch,
                         w=w // self.patch)  # (B, T'', h', w', D)


def load_cogvideox(path: Path, options: dict[str, str], spec: str, device: torch.device):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5EncoderModel

    folder = TransformerFolder.load("cogvideox", path, options, spec, device, TiledVideoOptions,
                                    CogVideoXTransformer3DModel, AutoencoderKLCogVideoX)
    cfg, vae = folder.transformer.config, folder.vae
    folder.check_text_to_video(vae.config.latent_channels, f"{vae.config.latent_channels} latent channels",
                               " CogVideoX")
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=folder.transformer,
                             scheduler=folder.scheduler)
    null = folder.null_prompt(CogVideoXPipeline, T5EncoderModel, cfg.text_embed_dim,
                              None if cfg.use_rotary_positional_embeddings else cfg.max_text_seq_length,
                              max_sequence_length=cfg.max_text_seq_length)
    plan = causal_windows(folder, int(vae.config.temporal_compression_ratio))
    if plan.stride is not None and int(cfg.patch_size_t or 1) > 1:
        raise ConfigError(f"TiledVideoOptions.overlap: {path / 'transformer' / 'config.json'} has patch_size_t="
                          f"{cfg.patch_size_t} (its feature frames pair latent frames): overlapping windows cannot be "
                          "stitched per latent frame; use overlap=0")
    details = {"conditioning": "empty prompt (T5)", "t_mapping": "ddpm index=min(round(t*N/1000),N-1) v-prediction",
               "latents": f"mean*{vae.config.scaling_factor}"}
    scale, multiple = float(vae.config.scaling_factor), pipe.vae_scale_factor_spatial * int(cfg.patch_size)
    encode = video_vae_encoder(folder, plan.windows, lambda z: z * scale, multiple)
    return folder.resolve(CogVideoXBackbone, details, encode, "video", tiling=vae_tiling(folder), pipe=pipe,
                          null=null, window_latents=plan.latents, window_stride=plan.stride)
