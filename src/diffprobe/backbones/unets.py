"""What the UNet kinds (``sd``, ``animatediff``, ``svd``) share.

- Loading: the parts and the scheduler load as every diffusers kind's do (:mod:`~diffprobe.backbones.loading`).
- Pixels and latents as the diffusers pipelines prepare them: :func:`pixels` (uint8 -> [-1, 1], channels first, as
  ``VaeImageProcessor.preprocess`` does), :func:`vae_latents` (the VAE's latent distribution at its mean = mode, times
  ``vae.config.scaling_factor``, as the SD / AnimateDiff img2img / video2video pipelines and SVD's decoder use it).
- The DDPM t mapping (:func:`ddpm_level`): t in 0..1000 -> the scheduler's training timestep
  ``tau = min(N - 1, round(t * N / 1000))`` (N = ``num_train_timesteps``) and ``alphas_cumprod[tau]``.
- The null prompt (:func:`prompt_null_embeddings`): the folder's CLIP text encoder on the empty prompt, padded to the
  tokenizer's ``model_max_length`` as ``encode_prompt`` does, saved in ``null_embeds.safetensors``.
- :class:`UNetBackbone`: the template for a diffusers UNet. Blocks 1..N are ``unet.down_blocks``, ``unet.mid_block``,
  ``unet.up_blocks`` in execution order, each taken at its output hidden states ``(B*T, C_b, h_b, w_b)`` and returned as
  ``(B, T, h_b, w_b, C_b)`` on its own grid. A video UNet sees the clip in windows of ``window`` frames (0: the whole
  clip), each window its own sample; the feature noise is drawn once for the whole clip (per clip id) and sliced, so
  windows of one clip never share noise.
"""

from __future__ import annotations

import copy
import json
import math
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from diffprobe.backbones.base import Backbone, clip_noise
from diffprobe.backbones.external import (
    BackboneLoadError,
    LatentDiffusionBackbone,
    LatentEncoder,
    null_embeddings,
    require_files,
)
from diffprobe.backbones.loading import load_part


def read_config(folder: Path, name: str) -> dict[str, Any]:
    """A component's JSON config (``unet/config.json``, ``scheduler/scheduler_config.json``); errors name the file."""
    path = folder / name
    require_files(folder, name)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BackboneLoadError(f"{path}: cannot read the config: {e}") from e


def ddpm_level(scheduler: Any, t: float) -> tuple[int, float]:
    """``(tau, alpha_bar)``: t in 0..1000 mapped to the scheduler's training timestep
    ``tau = min(N - 1, round(t * N / 1000))`` and ``alphas_cumprod[tau]``."""
    if not 0 <= t <= 1000:
        raise ValueError(f"noise level t must be in 0..1000, got {t}")
    n = int(scheduler.config.num_train_timesteps)
    tau = min(n - 1, int(math.floor(t * n / 1000 + 0.5)))
    return tau, float(scheduler.alphas_cumprod[tau])


def pixels(video: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1], as the pipelines' image processors do
    (``x / 255``, then ``2x - 1``)."""
    x = video.float() / 255.0
    return (2.0 * x - 1.0).movedim(-1, -3)


def vae_scale(vae: nn.Module) -> int:
    """The VAE's spatial downsampling factor, as the pipelines compute it."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_dtype(vae_config: dict[str, Any], dtype: torch.dtype) -> torch.dtype:
    """The pipelines run an fp16 VAE whose config says ``force_upcast`` in fp32; so do we."""
    return torch.float32 if dtype == torch.float16 and vae_config.get("force_upcast", True) else dtype


def check_frame_size(vae: nn.Module, height: int, width: int, kind: str) -> None:
    f = vae_scale(vae)
    if height % f or width % f:
        raise ValueError(f"{kind}: frames of {height}x{width} pixels; the VAE needs multiples of {f} (resize the "
                         "clips, as the diffusers pipelines do)")


def vae_latents(vae: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (N, C, h, w) of pixel frames (N, 3, H, W) in [-1, 1]: the latent distribution's mode (= its
    mean), as ``retrieve_latents(..., sample_mode="argmax")`` and SVD's ``_encode_vae_image`` take it."""
    return vae.encode(frames.to(vae.device, vae.dtype)).latent_dist.mode().float()


def frame_encoder(vae: nn.Module, kind: str) -> Any:
    """uint8 video (B, T, H, W, 3) -> scaled latents (B, T, h, w, C): every frame through the VAE alone, times
    ``scaling_factor`` (the SD 1.x/2.x and SVD pipelines' latent space; they use no shift or latents mean/std)."""
    scale = float(vae.config.scaling_factor)

    def encode(video: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        check_frame_size(vae, video.shape[2], video.shape[3], kind)
        x = rearrange(pixels(video), "b t c h w -> (b t) c h w")
        z = vae_latents(vae, x) * scale
        return rearrange(z, "(b t) c h w -> b t h w c", b=b)  # (B, T, h, w, C)

    return encode


def prompt_null_embeddings(folder: Path) -> torch.Tensor:
    """The empty prompt's CLIP text embeddings ``(1, L, D)`` (``prompt_embeds``): read from
    ``null_embeds.safetensors``, or computed once with ``text_encoder/`` + ``tokenizer/`` as the SD pipelines'
    ``encode_prompt`` does (padding to ``model_max_length``, last hidden state) and saved there."""
    compute = None
    if (folder / "text_encoder" / "config.json").exists() and (folder / "tokenizer").is_dir():
        def compute() -> dict[str, torch.Tensor]:
            from transformers import CLIPTextModel, CLIPTokenizer

            try:
                tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
            except Exception as e:
                raise BackboneLoadError(f"{folder / 'tokenizer'}: cannot load a CLIPTokenizer from it: {e}") from e
            encoder = load_part(CLIPTextModel, folder, "text_encoder", torch.float32)
            ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt")
            mask = ids.attention_mask if getattr(encoder.config, "use_attention_mask", False) else None
            with torch.no_grad():
                return {"prompt_embeds": encoder(ids.input_ids, attention_mask=mask)[0]}

    how = ("save the model's text_encoder/ and tokenizer/ in the folder, or a null_embeds.safetensors with a tensor "
           "'prompt_embeds' (1, L, D): the text encoder's last hidden state on the empty prompt")
    return null_embeddings(folder, ["prompt_embeds"], compute, how)["prompt_embeds"]


class UNetBackbone(LatentDiffusionBackbone):
    """A diffusers UNet on latents ``(B, T, h, w, C)``: DDPM noising (:func:`ddpm_level`), blocks = down blocks, mid
    block, up blocks; a kind sets ``unet``, ``scheduler``, ``window``, ``latent_channels`` and implements
    :meth:`forward` (returning the UNet's prediction as ``(B', n, h, w, C)``), then calls ``__init__``.

    ``latent_encoder`` computes block 0 from pixels; ``encoder`` is the same object, or None where the conditioning
    needs the pixels themselves (then extraction runs :meth:`features` on pixels).
    """

    t_mapping = "ddpm"
    unet: nn.Module
    scheduler: Any
    latent_encoder: Backbone
    #: frames per sample for a video UNet (0: the whole clip as one sample)
    window: int = 0
    #: channels of the denoised latents (the encoder output may carry more: conditioning latents)
    latent_channels: int

    def block_modules(self) -> list[nn.Module]:
        return [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]

    def tokens(self, block: int, output: torch.Tensor, grid: tuple[int, int, int, int]) -> torch.Tensor:
        return rearrange(output, "(b t) c h w -> b t h w c", b=grid[0]).float()  # (B, T, h_b, w_b, C_b)

    def noise(self, z: torch.Tensor, t: float, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tau, ab = ddpm_level(self.scheduler, t)
        timestep = torch.full((z.shape[0],), tau, dtype=torch.long, device=z.device)
        if t == 0:
            return z, timestep
        return math.sqrt(ab) * z + math.sqrt(1.0 - ab) * eps, timestep  # (B, T, h, w, C)

    def context(self, video: torch.Tensor) -> torch.Tensor | None:
        """Per-window conditioning computed from pixels ``(B, W, ...)`` (None: the kind needs none)."""
        return None

    def check_frames(self, frames: int) -> None:
        """An error when a clip of ``frames`` frames cannot be run (checked before any encoding)."""

    @abstractmethod
    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, clean: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet on noised latents ``(B', n, h, w, C)`` of ``n``-frame samples; returns its prediction in the same
        layout."""

    # ---- windows -----------------------------------------------------------------------------------------------
    def _groups(self, frames: int) -> list[tuple[int, int, int]]:
        """``(first frame, end frame, frames per sample)`` of each run of equal windows: the full windows, then the
        shorter rest of the clip (if any) as one more window."""
        n = self.window or frames
        full = frames // n * n
        groups = [(0, full, n)] if full else []
        if full < frames:
            groups.append((full, frames, frames - full))
        return groups

    def _run(self, x_t: torch.Tensor, timestep: torch.Tensor, clean: torch.Tensor, context: torch.Tensor | None,
             blocks: Sequence[int] | None) -> dict[int, torch.Tensor]:
        """Every window through the UNet: ``blocks`` -> their tokens ``(B, T, h_b, w_b, C_b)``; ``blocks=None`` ->
        ``{-1: prediction (B, T, h, w, C)}`` (the whole forward)."""
        b = x_t.shape[0]
        per = self.window or x_t.shape[1]
        parts: list[dict[int, torch.Tensor]] = []
        for lo, hi, n in self._groups(x_t.shape[1]):
            k = (hi - lo) // n
            xg = rearrange(x_t[:, lo:hi], "b (k n) ... -> (b k) n ...", n=n).to(self.dtype)
            cg = rearrange(clean[:, lo:hi], "b (k n) ... -> (b k) n ...", n=n)
            tg = timestep.repeat_interleave(k)
            ctx = None if context is None else rearrange(context[:, lo // per:lo // per + k], "b k ... -> (b k) ...")
            if blocks is None:
                pred = self.forward(xg, tg, cg, ctx).float()
                parts.append({-1: rearrange(pred, "(b k) n ... -> b (k n) ...", b=b)})
                continue
            with self.taps.capture(blocks) as out:
                self.taps.run(lambda xg=xg, tg=tg, cg=cg, ctx=ctx: self.forward(xg, tg, cg, ctx))
            grid = (xg.shape[0], n, xg.shape[2], xg.shape[3])
            parts.append({blk: rearrange(self.tokens(blk, o, grid), "(b k) n ... -> b (k n) ...", b=b)
                          for blk, o in out.items()})
        return {blk: torch.cat([p[blk] for p in parts], dim=1) for blk in parts[0]}

    # ---- features ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        self.check_frames(video.shape[1])
        encoded = self.latent_encoder.features(video, clip_ids, [0], 0.0, noise_seed)[0]
        return self._batched(encoded, clip_ids, blocks, t, noise_seed, ensemble, self.context(video))

    @torch.no_grad()
    def features_from_encoded(self, encoded: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int],
                              t: float, noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        if self.encoder is None:
            raise TypeError(f"{self.identity}: its conditioning needs the pixels; call features() with the video")
        return self._batched(encoded, clip_ids, blocks, t, noise_seed, ensemble, None)

    def _batched(self, encoded: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int, context: torch.Tensor | None) -> dict[int, torch.Tensor]:
        self.check_frames(encoded.shape[1])
        step = self.batch_size or len(encoded)
        parts = [self._features(encoded[i:i + step], clip_ids[i:i + step], blocks, t, noise_seed, ensemble,
                                None if context is None else context[i:i + step])
                 for i in range(0, len(encoded), step)]
        return {b: torch.cat([p[b] for p in parts]) for b in blocks}

    def _features(self, encoded: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                  noise_seed: int, ensemble: int, context: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
        enc = encoded.to(self.device, torch.float32)  # (B, T, h, w, C [+ conditioning channels])
        z = enc[..., :self.latent_channels]  # (B, T, h, w, C)
        deep = sorted({b for b in blocks if b > 0})
        acc: dict[int, torch.Tensor] = {}
        for draw in range(ensemble if deep else 0):
            eps = clip_noise(z, clip_ids, noise_seed, draw)  # one stream per clip, whatever the windows
            x_t, timestep = self.noise(z, t, eps)
            for b, tok in self._run(x_t, timestep, enc, context, deep).items():
                acc[b] = acc[b] + tok if b in acc else tok
        out = {b: v / ensemble for b, v in acc.items()}
        if 0 in blocks:
            out[0] = z
        return out

    # ---- denoising (diffprobe backbone check) ------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, t: float, clean: torch.Tensor, steps: int) -> torch.Tensor:
        """The folder's scheduler from level t to 0 with the null prompt, as diffusers' img2img pipelines run it:
        ``set_timesteps(n)`` with ``n = ceil(steps / strength)``, ``strength = tau / N``, then the last
        ``int(n * strength)`` (about ``steps``) timesteps; their first is at or just below ``tau``. Returns the final
        sample ``(B, T, h, w, C)`` (the clean-latent estimate)."""
        tau, _ = ddpm_level(self.scheduler, t)
        if t == 0 or tau == 0:
            return x_t
        scheduler = copy.deepcopy(self.scheduler)
        strength = tau / int(scheduler.config.num_train_timesteps)
        n = max(steps, math.ceil(steps / strength))
        scheduler.set_timesteps(n, device=self.device)
        start = max(n - min(int(n * strength), n), 0) * scheduler.order
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        x = x_t.to(self.device, torch.float32)
        b = x.shape[0]
        for ts in scheduler.timesteps[start:]:
            timestep = torch.full((b,), int(ts), dtype=torch.long, device=self.device)
            model_in = scheduler.scale_model_input(x, ts)
            pred = self._run(model_in, timestep, clean.to(self.device, torch.float32), None, None)[-1]
            flat = rearrange(x, "b t h w c -> (b t) c h w")
            x = rearrange(scheduler.step(rearrange(pred, "b t h w c -> (b t) c h w"), ts, flat).prev_sample,
                          "(b t) c h w -> b t h w c", b=b)
        return x


def chunked_frame_encoder(identity: str, vae: nn.Module, device: torch.device, chunk: int, kind: str) -> LatentEncoder:
    """Block 0 of an SD-VAE kind: :func:`frame_encoder` ``chunk`` frames of every clip at a time."""
    return LatentEncoder(identity, frame_encoder(vae, kind), device, vae, frames_per_chunk=chunk)
