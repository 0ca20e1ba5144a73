"""What the diffusers transformer kinds (``dit``, ``cogvideox``, ``wan``, ``latte``) share once loaded (how they load
a folder: :mod:`diffprobe.backbones.loading`).

- :class:`DDPMSchedule`: the DDPM t mapping on the folder's scheduler (``index = min(round(t * N / 1000), N - 1)``
  with N = its ``num_train_timesteps``, ``x_t = sqrt(ab) z + sqrt(1 - ab) eps`` with ab its ``alphas_cumprod``);
  :func:`flow_noise`: the flow-matching mapping (``sigma = t / 1000``, ``x_t = (1 - sigma) z + sigma eps``).
- :class:`VideoOptions` / :class:`Windows`: the ``frames`` / ``window`` / ``overlap`` options of the video kinds (a
  clip cut to its first window, or tiled into windows, overlapping by ``overlap`` frames, that are each encoded and
  denoised as their own sample; :func:`stitch_index` puts overlapping windows' features back together per frame);
  :class:`TiledVideoOptions`: with ``vae_tiling`` / ``vae_tile``, the video VAEs' tiling (``cogvideox``, ``wan``);
  :class:`VAEFramesOptions`: the ``vae_frames`` option of the kinds whose VAE encodes frame by frame.
- :class:`TransformerBackbone`: the :class:`LatentDiffusionBackbone` of a diffusers transformer: one call
  (:meth:`TransformerBackbone.call`) serves the block taps and the ``denoise`` loop of ``diffprobe backbone check``
  (:func:`run_scheduler`: the folder's own scheduler, started exactly at t); :class:`DDPMTransformerBackbone`: one
  on the DDPM t mapping.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from einops import rearrange

from diffprobe.backbones.external import (
    BackboneLoadError,
    ExternalOptions,
    HalvingChunks,
    LatentDiffusionBackbone,
    LatentEncoder,
    VAETiling,
    require_at_least,
)
from diffprobe.config import ConfigError
from diffprobe.errors import InputError

if TYPE_CHECKING:
    from diffprobe.backbones.loading import TransformerFolder

#: schedulers whose ``step`` goes from ``timestep`` to ``timestep - N // num_inference_steps`` (any start works)
DDIM_FAMILY = ("DDIMScheduler", "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")


def check_size(height: int, width: int, multiple: int, kind: str) -> None:
    """Frames must tile into whole patches of the latent grid: H and W multiples of (VAE factor x patch)."""
    if height % multiple or width % multiple:
        raise InputError(f"{kind}: frames of {height}x{width} pixels do not tile into the model's patches (height and "
                         f"width must be multiples of {multiple}: the VAE's spatial factor x the patch size)")


# ---- t mappings --------------------------------------------------------------------------------------------------


def check_t(t: float) -> None:
    if not 0 <= t <= 1000:
        raise InputError(f"noise level t must be in [0, 1000], got {t}")


@dataclasses.dataclass(frozen=True)
class DDPMSchedule:
    """The DDPM t mapping on a scheduler's ``alphas_cumprod`` (N = its length = ``num_train_timesteps``)."""

    alphas_cumprod: torch.Tensor  # (N,) float64

    @classmethod
    def of(cls, scheduler: Any, folder: Path) -> DDPMSchedule:
        ab = getattr(scheduler, "alphas_cumprod", None)
        if ab is None:
            raise BackboneLoadError(f"{folder / 'scheduler' / 'scheduler_config.json'}: {type(scheduler).__name__} "
                                    "has no alphas_cumprod (this kind needs a DDPM-trained scheduler)")
        return cls(torch.as_tensor(ab, dtype=torch.float64).clone())

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def index(self, t: float) -> int:
        """The DDPM timestep of noise level t (0..1000)."""
        check_t(t)
        n = self.num_train_timesteps
        return min(round(t * n / 1000), n - 1)

    def noise(self, z: torch.Tensor, t: float, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, timestep (B,) long)``; t = 0 is the clean latent at timestep 0."""
        idx = self.index(t)
        timestep = torch.full((z.shape[0],), idx, dtype=torch.long, device=z.device)
        if t == 0:
            return z, timestep
        ab = float(self.alphas_cumprod[idx])
        return math.sqrt(ab) * z + math.sqrt(1 - ab) * eps, timestep


def flow_noise(z: torch.Tensor, t: float, eps: torch.Tensor, num_train_timesteps: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow matching: ``sigma = t / 1000``, ``x_t = (1 - sigma) z + sigma eps``, timestep ``sigma * N`` (float)."""
    check_t(t)
    sigma = t / 1000
    timestep = torch.full((z.shape[0],), sigma * num_train_timesteps, dtype=torch.float32, device=z.device)
    if t == 0:
        return z, timestep
    return (1 - sigma) * z + sigma * eps, timestep


# ---- clip windows ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VideoOptions(ExternalOptions):
    """Options of the video kinds (``cogvideox``, ``wan``, ``latte``)."""

    IDENTITY_DEFAULTS: ClassVar[dict[str, Any]] = {"overlap": 0}

    frames: int = 0  #: frames per window the model sees (0: the whole clip; latte: its video_length)
    window: Literal["tile", "cut"] = "tile"  #: tile: the clip in consecutive windows; cut: its first window only
    overlap: int = 0  #: frames consecutive tiled windows share (0: end to end); their features are stitched per frame

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 0, "frames", "overlap")
        name = type(self).__name__
        if self.overlap and self.window != "tile":
            raise ConfigError(f"{name}.overlap: windows overlap only with window=tile, got window={self.window}")
        if self.overlap and self.frames and self.overlap >= self.frames:
            raise ConfigError(f"{name}.overlap: must be below frames={self.frames}, got {self.overlap}")


@dataclasses.dataclass(frozen=True)
class TiledVideoOptions(VideoOptions):
    """Options of the kinds whose video VAE tiles (``cogvideox``, ``wan``): ``vae_tiling`` (auto: frames taller or
    wider than one tile are encoded in tiles; off: never) and ``vae_tile`` (tile size in pixels; 0: the VAE's own)."""

    vae_tiling: Literal["auto", "off"] = "auto"
    vae_tile: int = 0

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 0, "vae_tile")
        if self.vae_tile % 32:
            raise ConfigError(f"{type(self).__name__}.vae_tile: must be a multiple of 32 pixels (0: the VAE's own "
                              f"tile), got {self.vae_tile}")


@dataclasses.dataclass(frozen=True)
class VAEFramesOptions(ExternalOptions):
    """The ``vae_frames`` option of the kinds whose VAE encodes frame by frame (``dit``, ``latte``)."""

    vae_frames: int = 16  #: frames per VAE encode call

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "vae_frames")


@dataclasses.dataclass(frozen=True)
class Windows:
    """A clip of T frames -> K windows of ``frames`` frames, each its own sample (``frames`` 0: the whole clip),
    starting every ``frames - overlap`` frames (``overlap`` 0: end to end).

    ``rule(n)`` is the model's check of a window length (an error message, or None when it works)."""

    frames: int
    window: str
    rule: Callable[[int], str | None]
    kind: str
    overlap: int = 0

    def starts(self, total: int) -> list[int]:
        """The first frame of each window of a clip of ``total`` frames."""
        n = self.frames or total
        if total < n:
            raise InputError(f"{self.kind}: the clip has {total} frames, fewer than frames={n}")
        if self.window == "cut":
            return [0]
        stride = n - self.overlap
        k, rest = divmod(total - n, stride)
        if rest:
            if not self.overlap:
                raise InputError(f"{self.kind}: a clip of {total} frames does not tile into windows of frames={n} "
                                 f"(use frames= a divisor of {total}, or window=cut)")
            raise InputError(f"{self.kind}: a clip of {total} frames does not tile into windows of frames={n} "
                             f"overlapping by overlap={self.overlap} (frames + m * (frames - overlap) do: "
                             f"{n + k * stride} or {n + (k + 1) * stride}; set the dataset's frames, or window=cut)")
        return [i * stride for i in range(k + 1)]

    def split(self, video: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(B, T, ...) -> ((B * K, N, ...), K)``."""
        starts = self.starts(video.shape[1])
        n = self.frames or video.shape[1]
        problem = self.rule(n)
        if problem:
            raise InputError(f"{self.kind}: {problem} (got {n}; set the frames= option)")
        clips = torch.stack([video[:, s:s + n] for s in starts], dim=1)  # (B, K, N, ...)
        return rearrange(clips, "b k n ... -> (b k) n ..."), len(starts)


def stitch_index(windows: int, per: int, stride: int, causal: bool) -> torch.Tensor:
    """Where each frame of the stitched clip comes from: an index into the ``windows * per`` frames of ``windows``
    windows of ``per`` (latent / feature) frames end to end, window i's frame j being the clip's frame
    ``i * stride + j``. A frame covered by several windows is taken from the one where it is furthest from the
    window's edges (``min(j, per - 1 - j)``), the earlier window on a tie; so an overlap is cut in its middle.
    ``causal``: a causal video VAE's window (after the first) starts with a latent frame of its first pixel frame
    alone, which is no frame of the clip's own latent grid: it is never taken. Returns ``(windows - 1) * stride +
    per`` indices."""
    best: dict[int, tuple[int, int]] = {}  # clip frame -> (margin, index)
    for i in range(windows):
        for j in range(1 if causal and i else 0, per):
            margin, g = min(j, per - 1 - j), i * stride + j
            if g not in best or margin > best[g][0]:
                best[g] = (margin, i * per + j)
    return torch.tensor([best[g][1] for g in range(len(best))])


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """How a video kind's clip is cut: ``windows`` (pixels), the latent frames of one window (``latents``; None: the
    whole clip is one) and, for overlapping windows, the latent frames between window starts (``stride``; None: no
    stitching, windows end to end)."""

    windows: Windows
    latents: int | None
    stride: int | None


def causal_windows(folder: TransformerFolder[VideoOptions], ratio: int) -> WindowPlan:
    """The windows of a kind whose causal video VAE compresses time ``ratio`` times: a window must have
    ``1 + ratio * k`` frames (``1 + k`` latent frames), and overlapping windows must start ``ratio * m`` frames apart
    (``overlap`` = 1 + ratio * j frames), so that every window's latent frames after its first fall on the clip's own
    latent grid (latent frame g >= 1 of the clip: pixel frames ``ratio * (g - 1) + 1 .. ratio * g``)."""
    opts = folder.opts
    windows = Windows(opts.frames, opts.window,
                      lambda n: None if (n - 1) % ratio == 0 else f"windows must have 1 + {ratio}k frames", folder.kind,
                      opts.overlap)
    if not opts.overlap:
        return WindowPlan(windows, (opts.frames - 1) // ratio + 1 if opts.frames else None, None)
    if not opts.frames or (opts.frames - opts.overlap) % ratio:
        raise ConfigError(f"{type(opts).__name__}.overlap: {folder.kind} windows (frames=1+{ratio}k) overlapping by "
                          f"overlap frames must start a multiple of {ratio} frames apart (its VAE's time factor): "
                          f"overlap must be 1 + {ratio}j with frames > 0, got frames={opts.frames}, "
                          f"overlap={opts.overlap}")
    return WindowPlan(windows, (opts.frames - 1) // ratio + 1, (opts.frames - opts.overlap) // ratio)


def vae_tiling(folder: TransformerFolder[TiledVideoOptions]) -> VAETiling | None:
    """The folder's video VAE tiled as its options say (``vae_tiling=auto``: on, applied to frames larger than one
    tile; ``off``: None)."""
    if folder.opts.vae_tiling == "off":
        return None
    return VAETiling.enable(folder.vae, folder.opts.vae_tile)


def video_vae_encoder(folder: TransformerFolder[VideoOptions], windows: Windows,
                      normalise: Callable[[torch.Tensor], torch.Tensor], multiple: int
                      ) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 clips (B, T, H, W, 3) -> the windows' normalised latents end to end (B, K * T'w, h, w, C): each window
    encoded by the folder's video VAE as its own sample ([-1, 1] pixels, (N, 3, T, H, W)), at its latent mean,
    ``batch_size`` windows a call (halved on out-of-memory: :class:`HalvingChunks`); ``multiple``: what H and W must
    divide by."""
    vae, device, dtype = folder.vae, folder.device, folder.dtype
    fit = HalvingChunks(folder.opts.batch_size, "windows", f"{folder.kind} VAE")

    def encode(video: torch.Tensor) -> torch.Tensor:
        check_size(video.shape[2], video.shape[3], multiple, folder.kind)
        clips, _ = windows.split(video.to(device))  # (B*K, N, H, W, 3)
        x = (rearrange(clips, "b t h w c -> b c t h w").float() / 127.5 - 1).to(dtype)  # [-1, 1]
        z = fit(lambda part: vae.encode(part).latent_dist.mean, x, dim=0)  # (B*K, C, T'w, h, w)
        z = rearrange(normalise(z), "(b k) c t h w -> b (k t) h w c", b=len(video))
        return z  # (B, K*T'w, h, w, C)

    return encode


# ---- the scheduler loop ------------------------------------------------------------------------------------------


def _flow_shift(scheduler: Any) -> float:
    cfg = scheduler.config
    return float(cfg.get("flow_shift") if "flow_shift" in cfg else cfg.get("shift", 1.0))


def _is_flow(scheduler: Any) -> bool:
    return type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" or bool(
        scheduler.config.get("use_flow_sigmas", False))


def run_scheduler(scheduler: Any, x: torch.Tensor, start: float, steps: int,
                  predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Denoise ``x`` from its level to 0 by ``scheduler`` in about ``steps`` steps; ``predict(x, timestep (B,))`` is
    the model output the scheduler expects. ``start``: the DDPM timestep of x, or its sigma for flow schedulers.

    The loop starts exactly at x's level: flow schedulers get custom sigmas from ``start`` down (pre-shifted so the
    scheduler's own shift maps them back); DDPM schedulers that take custom ``timesteps`` get them from ``start``
    down; the DDIM family steps ``start, start - s, ...`` (it steps by ``s = N // num_inference_steps`` from any
    timestep). Other schedulers raise ``NotImplementedError``.
    """
    name = type(scheduler).__name__
    steps = max(int(steps), 1)
    gen = torch.Generator(device=x.device).manual_seed(0)

    def step(out: torch.Tensor, tau: Any, sample: torch.Tensor, **kw: Any) -> Any:
        if "generator" in inspect.signature(scheduler.step).parameters:
            kw["generator"] = gen
        return scheduler.step(out, tau, sample, return_dict=False, **kw)

    def model(sample: torch.Tensor, tau: Any) -> torch.Tensor:
        sample_in = scheduler.scale_model_input(sample, tau) if hasattr(scheduler, "scale_model_input") else sample
        timestep = torch.as_tensor(tau, device=x.device).reshape(1).expand(len(x))
        return predict(sample_in, timestep).to(sample.dtype)

    if _is_flow(scheduler):
        shift = _flow_shift(scheduler)
        target = np.array([start * (steps - i) / steps for i in range(steps)])  # sigmas from start (0 is appended)
        scheduler.set_timesteps(sigmas=target / (shift - (shift - 1) * target), device=x.device)
        if abs(float(scheduler.sigmas[0]) - start) > 1e-3:
            raise NotImplementedError(f"{name}: its config reshapes custom sigmas (dynamic / terminal / karras "
                                      "shifting), so the loop cannot start at t")
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        for tau in scheduler.timesteps:
            x = step(model(x, tau), tau, x)[0]
        return x
    idx = int(start)
    if idx <= 0:
        return x
    if name in DDIM_FAMILY:
        n_train = scheduler.config.num_train_timesteps
        stride = max(1, math.ceil((idx + 1) / steps))
        scheduler.set_timesteps(max(1, n_train // stride), device=x.device)
        stride = n_train // scheduler.num_inference_steps
        taus = list(range(idx, -1, -stride))
        old_x0 = None
        for i, tau in enumerate(taus):
            out = model(x, tau)
            if name == "CogVideoXDPMScheduler":  # its step also takes the previous x0 estimate and timestep
                x, old_x0 = scheduler.step(out, old_x0, tau, taus[i - 1] if i > 0 else None, x, generator=gen,
                                           return_dict=False)
            else:
                x = step(out, tau, x)[0]
        return x
    if "timesteps" in inspect.signature(scheduler.set_timesteps).parameters:
        taus = sorted({round(idx * (steps - i) / steps) for i in range(steps)}, reverse=True)
        scheduler.set_timesteps(timesteps=taus, device=x.device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        for tau in scheduler.timesteps:
            x = step(model(x, tau), tau, x)[0]
        return x
    raise NotImplementedError(f"{name}: denoise supports flow-matching schedulers, the DDIM family {DDIM_FAMILY} and "
                              "schedulers that take custom timesteps (DDPMScheduler, DPMSolverMultistepScheduler, ...)")


# ---- the backbone template ---------------------------------------------------------------------------------------


class TransformerBackbone(LatentDiffusionBackbone):
    """A diffusers transformer denoiser: :meth:`call` runs it once on latents ``(B, T', h, w, C)`` with the null
    conditioning and returns its output channels last; the block taps stop it early, ``denoise`` runs it to the end.

    ``window_latents``: latent frames per clip window (None: the whole clip is one sample); the latents of a tiled
    clip are its windows' latents end to end, and every window is denoised as its own sample. ``window_stride``:
    latent frames between the starts of overlapping windows (None: end to end); then every block's tokens (block 0
    too) are stitched back into the clip's frames by :func:`stitch_index` (a kind's feature frames must be its
    latent frames). ``causal``: the windows' VAE is causal (see :func:`stitch_index`). ``null``: the null text
    conditioning ``(1, L, D)`` (None: the kind conditions otherwise).
    """

    def __init__(self, identity: str, encoder: LatentEncoder, folder: TransformerFolder,
                 null: torch.Tensor | None = None, window_latents: int | None = None,
                 window_stride: int | None = None, causal: bool = True) -> None:
        self.transformer, self.scheduler = folder.transformer, folder.scheduler
        self.null = None if null is None else null.to(folder.device, folder.dtype)  # (1, L, D)
        self.window_latents, self.window_stride, self.causal = window_latents, window_stride, causal
        super().__init__(identity, encoder, folder.device, folder.dtype, folder.opts.batch_size)

    def stitch(self, x: torch.Tensor) -> torch.Tensor:
        """Overlapping windows' frames ``(B, K * Tw, ...)`` -> the clip's ``(B, (K - 1) * stride + Tw, ...)``."""
        if self.window_stride is None or self.window_latents is None:
            return x
        k = x.shape[1] // self.window_latents
        index = stitch_index(k, self.window_latents, self.window_stride, self.causal)
        return x[:, index.to(x.device)]

    @abstractmethod
    def call(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The denoiser on samples ``x`` (B', T', h, w, C) at ``timestep`` (B',) -> its output (B', T', h, w, C')."""

    def windows(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``(B, K * Tw, ...) -> ((B * K, Tw, ...), K)``."""
        if not self.window_latents:
            return x, 1
        k, rest = divmod(x.shape[1], self.window_latents)
        if rest:
            raise InputError(f"{self.identity}: {x.shape[1]} latent frames are not whole windows of "
                             f"{self.window_latents}")
        return rearrange(x, "b (k n) ... -> (b k) n ...", k=k), k

    def unwindows(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """``(B * K, Tf, ...) -> (B, K * Tf, ...)``."""
        return rearrange(x, "(b k) n ... -> b (k n) ...", b=b)

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, clean: torch.Tensor) -> None:
        x, k = self.windows(x_t)
        self.call(x, timestep.repeat_interleave(k))

    def prediction(self, out: torch.Tensor) -> torch.Tensor:
        """The part of the model output the scheduler steps on (the pipeline's rule; default: all of it)."""
        return out

    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, t: float, clean: torch.Tensor, steps: int) -> torch.Tensor:
        x, k = self.windows(x_t.to(self.device, torch.float32))

        def predict(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return self.prediction(self.call(sample, timestep)).float()

        return self.unwindows(run_scheduler(self.scheduler, x, self.level(t), steps, predict), len(x_t))

    @abstractmethod
    def level(self, t: float) -> float:
        """Where :func:`run_scheduler` starts for noise level t: the DDPM timestep, or sigma (flow)."""


class DDPMTransformerBackbone(TransformerBackbone):
    """A transformer on the DDPM t mapping of its folder's scheduler (:class:`DDPMSchedule`)."""

    t_mapping = "ddpm"

    def __init__(self, identity: str, encoder: LatentEncoder, folder: TransformerFolder,
                 null: torch.Tensor | None = None, window_latents: int | None = None,
                 window_stride: int | None = None, causal: bool = True) -> None:
        self.ddpm = DDPMSchedule.of(folder.scheduler, folder.path)
        super().__init__(identity, encoder, folder, null, window_latents, window_stride, causal)

    def noise(self, z: torch.Tensor, t: float, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ddpm.noise(z, t, eps)

    def level(self, t: float) -> float:
        return self.ddpm.index(t)
