"""``wan``: Wan text-to-video (``WanTransformer3DModel`` + ``AutoencoderKLWan``), a video model: it sees the clip
(or its windows, see ``frames`` / ``window``).

Folder (diffusers ``save_pretrained`` layout, e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``,
``Wan-AI/Wan2.1-T2V-14B-Diffusers``, ``Wan-AI/Wan2.2-TI2V-5B-Diffusers``)::

    PATH/
      transformer/config.json, diffusion_pytorch_model*.safetensors   WanTransformer3DModel
      vae/config.json, diffusion_pytorch_model.safetensors            AutoencoderKLWan
      scheduler/scheduler_config.json                                 UniPCMultistepScheduler (flow sigmas) or
                                                                      FlowMatchEulerDiscreteScheduler
      text_encoder/, tokenizer/                                       UMT5EncoderModel + its tokenizer (only to
      null_embeds.safetensors                                         compute the null embedding once; written here)

A two-expert Wan 2.2 folder (``transformer_2/``, A14B) is refused: which expert denoises depends on t.

Clip lengths: the VAE compresses time 4x causally (it drops frames past the last whole group), so a window must have
``1 + 4k`` frames (Probe World's 9 frames -> 3 latent frames; Wan's 81 -> 21).

Blocks: 0 = the normalised latents ``(B, T', H/8, W/8, C)``: ``(latent_dist.mean - latents_mean) / latents_std``
with the VAE config's per-channel statistics, as ``WanVideoToVideoPipeline.prepare_latents`` normalises (and
``WanPipeline`` undoes before decoding); 1..N = ``blocks[b - 1]``, tokens ``(B, T'/p_t, h/p_h, w/p_w, D)`` in the
order the patch embedding's ``flatten(2)`` gives (frames, rows, columns). Text enters by cross-attention only.

t mapping: flow matching, ``sigma = t / 1000``, ``x_t = (1 - sigma) z + sigma eps``, the model's timestep
``sigma * num_train_timesteps`` (= t for Wan's 1000). Conditioning: the empty prompt, UMT5 of the folder as
``WanPipeline.encode_prompt("")`` gives it (512 tokens: the prompt's own, then zeros), ``null_embeds.safetensors``
tensor ``prompt_embeds`` (1, 512, 4096).

Options: ``dtype``, ``batch_size``, ``frames`` (frames per window, 0 = the whole clip; 81 for Wan's own length),
``window`` (tile | cut), ``overlap`` (frames shared by consecutive tiled windows, ``1 + 4j``; their features are
stitched per latent frame, see :func:`~diffprobe.backbones.transformers3d.stitch_index`), ``vae_tiling`` (auto | off)
and ``vae_tile`` (pixels; 0: the VAE's own 256 x 256 tiles every 192): frames taller or wider than one tile are encoded
in tiles, and the identity names the tiling (``+vaetiles...``) for those sizes only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from diffprobe.backbones.external import LatentEncoder
from diffprobe.backbones.loading import TransformerFolder
from diffprobe.backbones.transformers3d import TransformerBackbone, check_t, flow_noise
from diffprobe.backbones.video_windows import TiledVideoOptions, causal_windows, vae_tiling, video_vae_encoder
from diffprobe.config import ConfigError

MAX_SEQUENCE_LENGTH = 512  #: WanPipeline's default prompt length


def normaliser(vae: nn.Module):
    """The pipeline's latent normalisation: ``(z - latents_mean) / latents_std`` per channel, on (B, C, T, h, w)."""
    c = int(vae.config.z_dim)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, c, 1, 1, 1)

    def normalise(z: torch.Tensor) -> torch.Tensor:
        return (z.float() - mean.to(z.device)) / std.to(z.device)

    return normalise


class WanBackbone(TransformerBackbone):
    t_mapping = "flow"

    def __init__(self, identity: str, encoder: LatentEncoder, folder: TransformerFolder, null: torch.Tensor,
                 window_latents: int | None, window_stride: int | None = None) -> None:
        self.patch = tuple(int(p) for p in folder.transformer.config.patch_size)
        self.num_train_timesteps = int(folder.scheduler.config.num_train_timesteps)
        super().__init__(identity, encoder, folder, null, window_latents, window_stride)

    def block_modules(self) -> list[nn.Module]:
        return list(self.transformer.blocks)

    def noise(self, z: torch.Tensor, t: float, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return flow_noise(z, t, eps, self.num_train_timesteps)

    def level(self, t: float) -> float:
        check_t(t)
        return t / 1000

    def call(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        out = self.transformer(hidden_states=rearrange(x, "b t h w c -> b c t h w").to(self.dtype),
                               timestep=timestep, encoder_hidden_states=self.null.expand(len(x), -1, -1),
                               return_dict=False)[0]  # (B, C, T', h, w)
        return rearrange(out, "b c t h w -> b t h w c")

    def tokens(self, block: int, output: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        b, frames, h, w = grid
        p_t, p_h, p_w = self.patch
        per_window = self.window_latents or frames
        return rearrange(output, "(b k) (t h w) d -> b (k t) h w d", b=b, t=per_window // p_t, h=h // p_h,
                         w=w // p_w)  # (B, T'', h', w', D)


def load_wan(path: Path, options: dict[str, str], spec: str, device: torch.device):
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    two_experts = "a two-expert Wan 2.2 folder (the expert depends on t); this kind takes one transformer"
    folder = TransformerFolder.load("wan", path, options, spec, device, TiledVideoOptions, WanTransformer3DModel,
                                    AutoencoderKLWan, refused={"transformer_2": two_experts})
    cfg, vae = folder.transformer.config, folder.vae
    folder.check_text_to_video(vae.config.z_dim, f"z_dim {vae.config.z_dim}")
    null = folder.null_prompt(WanPipeline, UMT5EncoderModel, cfg.text_dim, max_sequence_length=MAX_SEQUENCE_LENGTH)
    plan = causal_windows(folder, int(vae.config.scale_factor_temporal))
    if plan.stride is not None and int(cfg.patch_size[0]) > 1:
        raise ConfigError(f"TiledVideoOptions.overlap: {path / 'transformer' / 'config.json'} has a temporal patch of "
                          f"{cfg.patch_size[0]} (its feature frames pair latent frames): overlapping windows cannot be "
                          "stitched per latent frame; use overlap=0")
    details = {"conditioning": "empty prompt (UMT5, 512 tokens)",
               "t_mapping": "flow sigma=t/1000 x=(1-sigma)z+sigma*eps timestep=sigma*N",
               "latents": "(mean-latents_mean)/latents_std"}
    multiple = int(vae.config.scale_factor_spatial) * int(cfg.patch_size[1])
    encode = video_vae_encoder(folder, plan.windows, normaliser(vae), multiple)
    return folder.resolve(WanBackbone, details, encode, "video", tiling=vae_tiling(folder), null=null,
                          window_latents=plan.latents, window_stride=plan.stride)
