"""``svd``: Stable Video Diffusion (diffusers ``UNetSpatioTemporalConditionModel`` +
``AutoencoderKLTemporalDecoder``), a video model conditioned on a frame of the clip.

Spec: ``svd[@dtype=fp32|bf16|fp16,batch_size=N,frames=N,cond=zero|first_frame,fps=7,motion_bucket_id=127,
noise_aug_strength=0.02,vae_chunk=N]:PATH``.

Folder layout (``StableVideoDiffusionPipeline.save_pretrained``, e.g. stabilityai/stable-video-diffusion-img2vid)::

    PATH/
      unet/config.json, diffusion_pytorch_model.safetensors      UNetSpatioTemporalConditionModel (in_channels = 2 C)
      vae/config.json, diffusion_pytorch_model.safetensors       AutoencoderKLTemporalDecoder (only its per-frame
                                                                 encoder is used)
      scheduler/scheduler_config.json                            EulerDiscreteScheduler (its betas give the sigmas)
      image_encoder/config.json, model.safetensors               CLIPVisionModelWithProjection } only for
      feature_extractor/preprocessor_config.json                 CLIPImageProcessor            } cond=first_frame

Video mode: the UNet sees the clip as one video (``frames=0``, the default: SVD's temporal layers take any number of
frames -- their frame position embedding is sinusoidal -- so a 9-frame clip runs on a model whose config says
``num_frames=14``) or in consecutive windows of ``frames`` frames (``frames=14`` / ``25``: the length the public
models were trained on), each window its own sample (the last one holding the rest of the clip when T is not a
multiple); features are put back together along time: every block is ``(B, T, h_b, w_b, C_b)``.

Blocks: 0 = the scaled latents of every frame, ``vae.encode(x).latent_dist.mode() * scaling_factor`` (x: RGB in
[-1, 1]; the pipeline decodes ``latents / scaling_factor``, so this is the space its UNet denoises) ``(B, T, h, w,
C)``; 1..D = ``unet.down_blocks``, D+1 = ``unet.mid_block``, then ``unet.up_blocks``: outputs ``(B*T, C_b, h_b,
w_b)`` returned as ``(B, T, h_b, w_b, C_b)``.

t mapping (EDM, on the scheduler's own sigma table): ``tau = min(N - 1, round(t * N / 1000))``, ``sigma =
sqrt((1 - ab) / ab)`` with ``ab = alphas_cumprod[tau]`` of the folder's scheduler config -- the sigma EulerDiscrete-
Scheduler gives training timestep ``tau`` (``scheduler.sigmas`` before ``set_timesteps``). The UNet input is
``c_in (z + sigma eps)``, ``c_in = 1 / sqrt(sigma^2 + 1)`` (``scale_model_input``), and its timestep ``c_noise = 0.25
ln sigma`` (the scheduler's ``timestep_type="continuous"`` with v-prediction, as SVD's config says; a discrete config
gets ``tau``). SVD's scheduler has SD's betas (scaled_linear 0.00085..0.012), so ``svd`` and ``sd`` at the same t see
equally noised latents (``c_in (z + sigma eps) = sqrt(ab) z + sqrt(1 - ab) eps``); sigma runs from 0.029 (t = 0+) to
14.6 (t = 1000), inside SVD's training range (its Karras inference schedule, up to sigma_max = 700, is used by nothing
here). t = 0 is the clean latents, with the c_noise of tau = 0.

Conditioning, as the pipeline builds it for each window:
- the conditioning frame latents: the window's first frame, in [-1, 1], plus ``noise_aug_strength * n`` (n: Gaussian
  pixel noise; the pipeline's default 0.02, ``noise_aug_strength=0`` for none), encoded to the latent distribution's
  mode (``_encode_vae_image``, unscaled), repeated over the window's frames and concatenated to the UNet input along
  channels. The noise n is seeded by the clip id alone (its own stream, :data:`AUG_SEED`): it is a fixed property of
  the clip, the same at every t and feature noise seed, so the encoder output can be cached once per split.
- ``added_time_ids = [fps - 1, motion_bucket_id, noise_aug_strength]`` (the pipeline passes fps - 1; defaults 7, 127,
  0.02).
- the image embedding (cross-attention): ``cond=zero`` (default, the null conditioning: the pipeline's negative image
  embedding, zeros ``(1, cross_attention_dim)``), or ``cond=first_frame``: the window's first frame through the
  folder's CLIP image encoder as ``_encode_image`` prepares a PIL frame (anti-aliased resize to the encoder's
  ``image_size``, the feature extractor's normalisation, ``image_embeds``). With ``first_frame`` the embedding needs
  the pixels, so the backbone has no cached ``encoder``: extraction encodes the pixels at every (t, seed).

The encoder output (cached once per split) is ``(B, T, h, w, 2C)``: the scaled latents, then the conditioning
latents of each frame's window -- the UNet's two inputs, channels last; block 0 is its first C channels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from einops import rearrange
from torch import nn

from diffprobe.backbones.base import Backbone, clip_noise
from diffprobe.backbones.external import (
    BackboneLoadError,
    ExternalOptions,
    LatentEncoder,
    identity_of,
    parse_options,
    require_at_least,
    require_files,
)
from diffprobe.backbones.loading import load_part, load_scheduler
from diffprobe.backbones.unets import (
    UNetBackbone,
    ddpm_level,
    frame_encoder,
    pixels,
    read_config,
    vae_dtype,
    vae_latents,
)

if TYPE_CHECKING:
    from diffprobe.backbones.registry import ResolvedBackbone

#: the noise seed of the conditioning frame's augmentation noise (drawn per clip id, apart from the feature noise)
AUG_SEED = 2**31 - 1
T_MAPPING = "edm: tau=round(t*N/1000), sigma=sqrt((1-ab[tau])/ab[tau]), x=(z+sigma eps)/sqrt(sigma^2+1), c_noise"


@dataclasses.dataclass(frozen=True)
class SVDOptions(ExternalOptions):
    """Options of ``svd`` (see the module docstring)."""

    frames: int = 0  #: frames per window (0: the whole clip)
    cond: Literal["zero", "first_frame"] = "zero"  #: the image embedding
    fps: int = 7  #: added_time_ids get fps - 1, as the pipeline passes them
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02  #: pixel noise on the conditioning frame (and the third added time id)
    vae_chunk: int = 8  #: frames of a clip per VAE call (0: all)

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 0, "frames", "vae_chunk", "noise_aug_strength")


def window_starts(frames: int, window: int) -> list[int]:
    return list(range(0, frames, window or frames))


class SVDLatents(Backbone):
    """The SVD backbone's encoder: ``(B, T, h, w, 2C)`` = the scaled latents of every frame, then the conditioning
    latents of its window's first frame (noise-augmented, unscaled mode), see the module docstring."""

    num_blocks = 0

    def __init__(self, identity: str, vae: nn.Module, device: torch.device, window: int, noise_aug: float,
                 chunk: int) -> None:
        self.identity, self.vae, self.device = identity, vae, device
        self.window, self.noise_aug = window, noise_aug
        self.frames = LatentEncoder(identity, frame_encoder(vae, "svd"), device, vae, frames_per_chunk=chunk)

    @torch.no_grad()
    def features(self, video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float,
                 noise_seed: int, ensemble: int = 1) -> dict[int, torch.Tensor]:
        if list(blocks) != [0] or t != 0:
            raise ValueError(f"{self.identity}: the latents are block 0 at t = 0, asked for {list(blocks)} at t={t}")
        z = self.frames.features(video, clip_ids, [0], 0.0, 0)[0]  # (B, T, h, w, C)
        b, frames = video.shape[:2]
        starts = window_starts(frames, self.window)
        first = pixels(video[:, starts].to(self.device))  # (B, W, 3, H, W) in [-1, 1]
        if self.noise_aug:
            first = first + self.noise_aug * clip_noise(first, clip_ids, AUG_SEED, 0)
        cond = vae_latents(self.vae, rearrange(first, "b k c h w -> (b k) c h w"))
        cond = rearrange(cond, "(b k) c h w -> b k h w c", b=b)  # (B, W, h, w, C)
        per = self.window or frames
        cond = cond[:, torch.arange(frames, device=cond.device) // per]  # (B, T, h, w, C): each frame's window
        return {0: torch.cat([z, cond], dim=-1)}


class SVDBackbone(UNetBackbone):
    """SVD's UNet on the clip (or its windows), conditioned as the module docstring says."""

    t_mapping = "edm"

    def __init__(self, unet: nn.Module, vae: nn.Module, scheduler: Any, identity: str, device: torch.device,
                 options: SVDOptions, image_encoder: nn.Module | None = None, feature_extractor: Any = None) -> None:
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.options = options
        self.image_encoder, self.feature_extractor = image_encoder, feature_extractor
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.window = options.frames
        self.cross_dim = int(unet.config.cross_attention_dim)
        cfg = scheduler.config
        self.continuous = cfg.get("timestep_type") == "continuous" and cfg.get("prediction_type") == "v_prediction"
        self.time_ids = torch.tensor([[options.fps - 1, options.motion_bucket_id, options.noise_aug_strength]],
                                     dtype=options.torch_dtype, device=device)
        self.latent_encoder = SVDLatents(f"{identity}-latents", vae, device, options.frames,
                                         options.noise_aug_strength, options.vae_chunk)
        super().__init__(identity, self.latent_encoder, device, options.torch_dtype, options.batch_size)
        if options.cond == "first_frame":
            self.encoder = None  # the image embedding needs the pixels

    # ---- the t mapping -----------------------------------------------------------------------------------------
    def sigma(self, t: float) -> tuple[int, float]:
        """``(tau, sigma)`` of level t on the scheduler's training sigmas."""
        tau, _ = ddpm_level(self.scheduler, t)
        return tau, self.sigma_at(tau)

    def sigma_at(self, tau: int) -> float:
        """The training sigma of timestep ``tau``: ``sqrt((1 - ab) / ab)``."""
        ab = float(self.scheduler.alphas_cumprod[tau])
        return math.sqrt((1.0 - ab) / ab)

    def c_noise(self, tau: int, sigma: float) -> float:
        return 0.25 * math.log(sigma) if self.continuous else float(tau)

    def noise(self, z: torch.Tensor, t: float, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents ``(B, T, h, w, C)`` -> the UNet input ``c_in (z + sigma eps)`` and ``c_noise`` ``(B,)``. Given the
        encoder output ``(B, T, h, w, 2C)`` (as ``diffprobe backbone check`` passes it), the conditioning channels
        are carried through unchanged."""
        c = self.latent_channels
        if z.shape[-1] == 2 * c:
            x_t, timestep = self.noise(z[..., :c], t, eps[..., :c])
            return torch.cat([x_t, z[..., c:]], dim=-1), timestep
        tau, sigma = self.sigma(t)
        timestep = torch.full((z.shape[0],), self.c_noise(tau, sigma), dtype=torch.float32, device=z.device)
        if t == 0:
            return z, timestep
        return (z + sigma * eps) / math.sqrt(sigma**2 + 1.0), timestep  # (B, T, h, w, C): c_in (z + sigma eps)

    # ---- conditioning ------------------------------------------------------------------------------------------
    def context(self, video: torch.Tensor) -> torch.Tensor | None:
        """``cond=first_frame``: the CLIP image embedding of every window's first frame ``(B, W, D)``."""
        if self.image_encoder is None:
            return None
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )

        b = video.shape[0]
        first = pixels(video[:, window_starts(video.shape[1], self.window)].to(self.device))  # (B, W, 3, H, W)
        size = int(self.image_encoder.config.image_size)
        image = _resize_with_antialiasing(rearrange(first, "b k c h w -> (b k) c h w"), (size, size))
        image = self.feature_extractor(images=((image + 1.0) / 2.0).cpu(), do_normalize=True, do_center_crop=False,
                                       do_resize=False, do_rescale=False, return_tensors="pt").pixel_values
        embeds = self.image_encoder(image.to(self.device, self.image_encoder.dtype)).image_embeds
        return rearrange(embeds.float(), "(b k) d -> b k d", b=b)

    def with_cond(self, clean: torch.Tensor) -> torch.Tensor:
        """``clean`` with its conditioning-latent channels: the encoder output as is, or block-0 latents ``(B, T, h,
        w, C)`` + their windows' first frames / scaling_factor (the pipeline's conditioning without augmentation)."""
        if clean.shape[-1] == 2 * self.latent_channels:
            return clean
        per = self.window or clean.shape[1]
        first = clean[:, torch.arange(clean.shape[1], device=clean.device) // per * per] / self.scaling_factor
        return torch.cat([clean, first], dim=-1)

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, clean: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        b = x_t.shape[0]
        cond = clean[..., self.latent_channels:].to(self.dtype)
        sample = rearrange(torch.cat([x_t.to(self.dtype), cond], dim=-1), "b t h w c -> b t c h w")
        if context is None:
            embeds = torch.zeros(b, 1, self.cross_dim, dtype=self.dtype, device=self.device)
        else:
            embeds = context[:, None].to(self.dtype)  # (B', 1, D)
        out = self.unet(sample, timestep.to(self.device), encoder_hidden_states=embeds,
                        added_time_ids=self.time_ids.expand(b, -1), return_dict=False)[0]
        return rearrange(out, "b t c h w -> b t h w c")

    # ---- denoising (diffprobe backbone check) ------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, t: float, clean: torch.Tensor, steps: int) -> torch.Tensor:
        """The folder's EulerDiscreteScheduler from sigma(t) to 0 with the null (zero) image embedding: ``steps``
        sigmas of the training table at timesteps evenly spaced from tau to 0, then 0 (``set_timesteps(sigmas=...)``).
        ``x_t`` is the UNet input ``c_in (z + sigma eps)`` (as :meth:`noise` gives it); ``clean``: the encoder output
        (or block-0 latents: then the conditioning frame is taken without augmentation). Returns ``(B, T, h, w, C)``,
        or, when ``x_t`` carries the conditioning channels too (:meth:`noise` of the encoder output), the estimate
        with those channels, shaped like ``x_t``.
        """
        import copy

        c = self.latent_channels
        if x_t.shape[-1] == 2 * c:
            est = self.denoise(x_t[..., :c], t, clean if clean.shape[-1] == 2 * c else x_t, steps)
            return torch.cat([est, x_t[..., c:].to(est)], dim=-1)
        if t == 0:
            return x_t
        tau, sigma = self.sigma(t)
        taus = sorted({int(round(v)) for v in torch.linspace(tau, 0, steps + 1)[:-1].tolist()}, reverse=True)
        sigmas = [self.sigma_at(v) for v in taus] + [0.0]
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(sigmas=sigmas, device=self.device)
        scheduler.set_begin_index(0)
        clean = self.with_cond(clean.to(self.device, torch.float32))
        x = x_t.to(self.device, torch.float32) * math.sqrt(sigma**2 + 1.0)  # the Euler sample z + sigma eps
        b = x.shape[0]
        for ts in scheduler.timesteps:
            timestep = torch.full((b,), float(ts), device=self.device)
            pred = self._run(scheduler.scale_model_input(x, ts), timestep, clean, None, None)[-1]
            flat = rearrange(x, "b t h w c -> (b t) c h w")
            x = rearrange(scheduler.step(rearrange(pred, "b t h w c -> (b t) c h w"), ts, flat).prev_sample,
                          "(b t) c h w -> b t h w c", b=b)
        return x


def load_svd(path: Path, options: dict[str, str], spec: str, device: torch.device) -> ResolvedBackbone:
    """The ``svd`` factory (see the module docstring)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from diffprobe.backbones.registry import ResolvedBackbone

    opts = parse_options(SVDOptions, options, spec)
    assert isinstance(opts, SVDOptions)
    read_config(path, "unet/config.json")
    vae_config = read_config(path, "vae/config.json")
    scheduler = load_scheduler(path, expect=("EulerDiscreteScheduler",), ddpm=True)
    unet = load_part(UNetSpatioTemporalConditionModel, path, "unet", opts.torch_dtype, device)
    vae = load_part(AutoencoderKLTemporalDecoder, path, "vae", vae_dtype(vae_config, opts.torch_dtype), device)
    channels = int(vae.config.latent_channels)
    if unet.config.in_channels != 2 * channels:
        raise BackboneLoadError(f"{path / 'unet/config.json'}: in_channels={unet.config.in_channels}; SVD's UNet takes "
                                f"the noised latents and the conditioning latents, 2 x {channels} (vae/config.json)")
    expected = int(unet.add_embedding.linear_1.in_features)
    if int(unet.config.addition_time_embed_dim) * 3 != expected:
        raise BackboneLoadError(f"{path / 'unet/config.json'}: addition_time_embed_dim="
                                f"{unet.config.addition_time_embed_dim} x 3 added time ids != the add_embedding's "
                                f"{expected} inputs (projection_class_embeddings_input_dim)")
    image_encoder = feature_extractor = None
    if opts.cond == "first_frame":
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        image_encoder = load_part(CLIPVisionModelWithProjection, path, "image_encoder", opts.torch_dtype, device)
        require_files(path, "feature_extractor/preprocessor_config.json")
        try:
            feature_extractor = CLIPImageProcessor.from_pretrained(path / "feature_extractor")
        except Exception as e:
            raise BackboneLoadError(f"{path / 'feature_extractor'}: cannot load a CLIPImageProcessor: {e}") from e
        if int(image_encoder.config.projection_dim) != int(unet.config.cross_attention_dim):
            raise BackboneLoadError(f"{path / 'image_encoder/config.json'}: projection_dim="
                                    f"{image_encoder.config.projection_dim}, but the UNet's cross_attention_dim is "
                                    f"{unet.config.cross_attention_dim} (unet/config.json)")
    conditioning = (f"image={opts.cond}; frame latents=first frame of each window, VAE mode, pixel noise "
                    f"{opts.noise_aug_strength} seeded by clip id; time ids=[fps-1, motion_bucket_id, aug]")
    identity = identity_of("svd", path, opts, conditioning=conditioning, t_mapping=T_MAPPING, mode="video")
    backbone = SVDBackbone(unet, vae, scheduler, identity, device, opts, image_encoder, feature_extractor)
    return ResolvedBackbone(backbone, "video", 0, None)
