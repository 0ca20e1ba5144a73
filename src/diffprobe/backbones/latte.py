"""``latte``: Latte text-to-video (``LatteTransformer3DModel`` over a per-frame ``AutoencoderKL``), a video model: it
sees windows of exactly ``video_length`` frames (its temporal position embedding has that many rows).

Folder (diffusers ``save_pretrained`` layout, e.g. ``maxin-cn/Latte-1``)::

    PATH/
      transformer/config.json, diffusion_pytorch_model.safetensors   LatteTransformer3DModel
      vae/config.json, diffusion_pytorch_model.safetensors           AutoencoderKL (frame by frame)
      scheduler/scheduler_config.json                                its sampling scheduler (DDIM, DDPM, ...)
      text_encoder/, tokenizer/                                      T5EncoderModel + its tokenizer (only to compute
      null_embeds.safetensors                                        the null embedding once; written here)

Clip lengths: ``frames`` defaults to the transformer's ``video_length`` (16 for Latte-1; a longer clip is tiled or
cut, a shorter one is an error).

Blocks: 0 = the scaled latents ``(B, T, H/8, W/8, 4)`` (``latent_dist.mean * scaling_factor`` per frame, the scale
``LattePipeline`` undoes before decoding; ``vae_frames`` frames per VAE call); 1..2N in execution order: block
``2i + 1`` = the spatial ``transformer_blocks[i]`` (it sees (B*T, h'*w', D): each frame's patches, row-major),
block ``2i + 2`` = the temporal ``temporal_transformer_blocks[i]`` (it sees (B*h'*w', T, D): each patch's frames);
both are returned as ``(B, T, h', w', D)`` (h' = H/8/p).

t mapping: DDPM on the folder's scheduler: the model's timestep ``i = min(round(t * N / 1000), N - 1)``,
``x_t = sqrt(ab_i) z + sqrt(1 - ab_i) eps``. Conditioning: the empty prompt, T5 of the folder as
``LattePipeline.encode_prompt("", mask_feature=True)`` gives it (masked to its unpadded tokens: 1 for ""),
``null_embeds.safetensors`` tensor ``prompt_embeds`` (1, L, 4096).

Denoising (``backbone check``) steps the folder's scheduler as ``LattePipeline`` does: on ``(B, C, T, h, w)``
latents, with the eps half of the learned-sigma output, or both halves when the scheduler's ``variance_type`` is
``learned`` / ``learned_range``. Only :data:`LEARNED_VARIANCE` schedulers take such an output (they split it by the
latents' channels); any other scheduler with that ``variance_type`` (DDIM, where the pipeline fails the same way) is
refused at load.

Options: ``dtype``, ``batch_size``, ``frames`` (0 = video_length), ``window`` (tile | cut), ``overlap`` (frames
shared by consecutive tiled windows; their features are stitched per frame, see
:func:`~diffprobe.backbones.transformers3d.stitch_index`), ``vae_frames`` (halved on out-of-memory).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from diffprobe.backbones.dit import vae_encoder
from diffprobe.backbones.external import BackboneLoadError, LatentEncoder
from diffprobe.backbones.loading import TransformerFolder
from diffprobe.backbones.transformers3d import DDPMTransformerBackbone, VAEFramesOptions, run_scheduler
from diffprobe.backbones.video_windows import VideoOptions, Windows
from diffprobe.config import ConfigError
from diffprobe.utils.chunks import HalvingChunks

#: the scheduler config values that make the pipeline pass the model's whole (eps, variance) output to the scheduler
LEARNED = ("learned", "learned_range")
#: the schedulers whose ``step`` takes that output (split by the latents' channels, dim 1)
LEARNED_VARIANCE = ("DDPMScheduler", "DDPMParallelScheduler")


@dataclasses.dataclass(frozen=True)
class LatteOptions(VAEFramesOptions, VideoOptions):
    """Options of ``latte``: ``dtype``, ``batch_size``, ``frames``, ``window`` and ``vae_frames``."""


class LatteBackbone(DDPMTransformerBackbone):
    def __init__(self, identity: str, encoder: LatentEncoder, folder: TransformerFolder, null: torch.Tensor,
                 window_latents: int, window_stride: int | None = None) -> None:
        self.patch = int(folder.transformer.config.patch_size)
        super().__init__(identity, encoder, folder, null, window_latents, window_stride, causal=False)

    def block_modules(self) -> list[nn.Module]:
        pairs = zip(self.transformer.transformer_blocks, self.transformer.temporal_transformer_blocks, strict=True)
        return [m for pair in pairs for m in pair]  # spatial 0, temporal 0, spatial 1, ...

    def call(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        out = self.transformer(hidden_states=rearrange(x, "b t h w c -> b c t h w").to(self.dtype),
                               timestep=timestep, encoder_hidden_states=self.null.expand(len(x), -1, -1),
                               enable_temporal_attentions=True, return_dict=False)[0]  # (B, C, T, h, w)
        return rearrange(out, "b c t h w -> b t h w c")

    def prediction(self, out: torch.Tensor) -> torch.Tensor:
        learned = self.scheduler.config.get("variance_type") in LEARNED
        if learned or out.shape[-1] != 2 * self.transformer.config.in_channels:
            return out  # a learned-variance scheduler takes both halves (as LattePipeline passes them)
        return out[..., :out.shape[-1] // 2]  # LattePipeline steps on the first half (eps) only

    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, t: float, clean: torch.Tensor, steps: int) -> torch.Tensor:
        """As the base, with the scheduler stepping on channels-first latents, the pipeline's layout (a
        learned-variance scheduler splits the output on dim 1)."""
        x, _ = self.windows(x_t.to(self.device, torch.float32))  # (B*K, N, h, w, C)

        def predict(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:  # (B*K, C, N, h, w) -> (.., C', ..)
            out = self.prediction(self.call(rearrange(sample, "b c t h w -> b t h w c"), timestep))
            return rearrange(out, "b t h w c -> b c t h w").float()

        x = run_scheduler(self.scheduler, rearrange(x, "b t h w c -> b c t h w"), self.level(t), steps, predict)
        return self.unwindows(rearrange(x, "b c t h w -> b t h w c"), len(x_t))

    def tokens(self, block: int, output: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        b, frames, h, w = grid
        n, hp, wp = self.window_latents, h // self.patch, w // self.patch
        if block % 2:  # spatial: ((B*K) * N, h'*w', D)
            return rearrange(output, "(b k n) (h w) d -> b (k n) h w d", b=b, n=n, h=hp)
        return rearrange(output, "(b k h w) n d -> b (k n) h w d", b=b, h=hp, w=wp)  # temporal: ((B*K)*h'*w', N, D)


def check_variance(folder: TransformerFolder) -> None:
    """A learned ``variance_type`` on a scheduler that cannot step on the (eps, variance) output is refused."""
    variance, name = folder.scheduler.config.get("variance_type"), type(folder.scheduler).__name__
    if variance in LEARNED and name not in LEARNED_VARIANCE:
        raise BackboneLoadError(
            f"{folder.path / 'scheduler' / 'scheduler_config.json'}: variance_type {variance!r} with {name}, which "
            f"cannot step on the model's (eps, variance) output (LattePipeline fails on it too); remove variance_type, "
            f"or use one of {list(LEARNED_VARIANCE)}")


def load_latte(path: Path, options: dict[str, str], spec: str, device: torch.device):
    from diffusers import AutoencoderKL, LattePipeline, LatteTransformer3DModel
    from transformers import T5EncoderModel

    folder = TransformerFolder.load("latte", path, options, spec, device, LatteOptions, LatteTransformer3DModel,
                                    AutoencoderKL)
    opts, cfg = folder.opts, folder.transformer.config
    check_variance(folder)
    null = folder.null_prompt(LattePipeline, T5EncoderModel, cfg.caption_channels, clean_caption=False,
                              mask_feature=True)
    length = int(cfg.video_length)
    frames = opts.frames or length

    def rule(n: int) -> str | None:
        return None if n == length else f"windows must have the transformer's video_length = {length} frames"

    if opts.overlap >= frames:
        raise ConfigError(f"LatteOptions.overlap: must be below the window's {frames} frames, got {opts.overlap}")
    windows = Windows(frames, opts.window, rule, "latte", opts.overlap)
    details = {"conditioning": "empty prompt (T5, masked)", "t_mapping": "ddpm index=min(round(t*N/1000),N-1)",
               "latents": f"mean*{folder.vae.config.scaling_factor}"}
    per_frame = vae_encoder(folder)
    fit = HalvingChunks(opts.vae_frames, "frames", "latte VAE")

    def encode(video: torch.Tensor) -> torch.Tensor:  # (B, T, H, W, 3) -> (B, K*N, h, w, C)
        clips, _ = windows.split(video)
        z = fit(per_frame, clips, dim=1)  # (B*K, N, h, w, C)
        return rearrange(z, "(b k) n h w c -> b (k n) h w c", b=len(video))

    return folder.resolve(LatteBackbone, details, encode, "video", null=null, window_latents=frames,
                          window_stride=frames - opts.overlap if opts.overlap else None)
