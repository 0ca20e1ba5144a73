"""What the diffusers transformer kinds (``dit``, ``cogvideox``, ``wan``, ``latte``) share once loaded (how they load
a folder: :mod:`diffprobe.backbones.loading`).

- :class:`DDPMSchedule`: the DDPM t mapping on the folder's scheduler (``index = min(round(t * N / 1000), N - 1)``
  with N = its ``num_train_timesteps``, ``x_t = sqrt(ab) z + sqrt(1 - ab) eps`` with ab its ``alphas_cumprod``);
  :func:`flow_noise`: the flow-matching mapping (``sigma = t / 1000``, ``x_t = (1 - sigma) z + sigma eps``).
- :class:`VAEFramesOptions`: the ``vae_frames`` option of the kinds whose VAE encodes frame by frame (the video
  kinds' windows: :mod:`diffprobe.backbones.video_windows`).
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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import rearrange

from diffprobe.backbones.external import (
    BackboneLoadError,
    ExternalOptions,
    LatentDiffusionBackbone,
    LatentEncoder,
    require_at_least,
)
from diffprobe.backbones.video_windows import stitch_index
from diffprobe.errors import InputError

if TYPE_CHECKING:
    from diffprobe.backbones.loading import TransformerFolder

#: schedulers whose ``step`` goes from ``timestep`` to ``timestep - N // num_inference_steps`` (any start works)
DDIM_FAMILY = ("DDIMScheduler", "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")


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


# ---- options -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VAEFramesOptions(ExternalOptions):
    """The ``vae_frames`` option of the kinds whose VAE encodes frame by frame (``dit``, ``latte``)."""

    vae_frames: int = 16  #: frames per VAE encode call

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "vae_frames")


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
