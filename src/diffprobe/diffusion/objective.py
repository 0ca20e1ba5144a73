"""The training objective: forward noising, v-prediction targets and conversions, and the diffusion loss.

The denoiser predicts ``v = sqrt(ab) * eps - sqrt(1 - ab) * x0`` (Salimans & Ho 2022), where ``ab = alpha_bar(t)``.
From ``(x_t, v)``: ``x0 = sqrt(ab) * x_t - sqrt(1 - ab) * v`` and ``eps = sqrt(1 - ab) * x_t + sqrt(ab) * v``.
``t`` is ``(B,)`` (one noise level per sample) or ``(B, T')`` (one per latent frame, FVDM-style); coefficients are
broadcast over latents ``(B, C, T', H', W')``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from diffprobe.diffusion.schedule import DEFAULT_SCHEDULE, NUM_STEPS, NoiseSchedule

if TYPE_CHECKING:
    from diffprobe.models.walt import WALTConfig


def _coefs(t: torch.Tensor, x: torch.Tensor, schedule: NoiseSchedule | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``sqrt(ab)``, ``sqrt(1 - ab)`` at ``t`` shaped to broadcast over ``x`` ``(B, C, T', H', W')``."""
    if x.ndim != 5:
        raise ValueError(f"diffusion: expected latents (B, C, T', H', W'), got shape {tuple(x.shape)}")
    b, _, frames = x.shape[:3]
    if t.shape == (b,):
        view = (b, 1, 1, 1, 1)
    elif t.shape == (b, frames):
        view = (b, 1, frames, 1, 1)
    else:
        raise ValueError(f"diffusion: t must have shape (B,) = ({b},) or (B, T') = ({b}, {frames}), "
                         f"got {tuple(t.shape)} for latents {tuple(x.shape)}")
    a, s = (schedule or DEFAULT_SCHEDULE).signal_noise(t)
    return a.to(x.dtype).reshape(view), s.to(x.dtype).reshape(view)


def add_noise(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
              schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """``x_t = sqrt(ab(t)) * x0 + sqrt(1 - ab(t)) * eps``; latents ``(B, C, T', H', W')``, t ``(B,)`` or ``(B, T')``."""
    if eps.shape != x0.shape:
        raise ValueError(f"add_noise: eps shape {tuple(eps.shape)} differs from x0 shape {tuple(x0.shape)}")
    a, s = _coefs(t, x0, schedule)
    return a * x0 + s * eps


def v_target(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
             schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """The v-prediction target ``sqrt(ab) * eps - sqrt(1 - ab) * x0``."""
    a, s = _coefs(t, x0, schedule)
    return a * eps - s * x0


def v_to_x0(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
            schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Clean latents predicted by ``v`` at ``x_t``: ``sqrt(ab) * x_t - sqrt(1 - ab) * v``."""
    a, s = _coefs(t, x_t, schedule)
    return a * x_t - s * v


def v_to_eps(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor,
             schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Noise predicted by ``v`` at ``x_t``: ``sqrt(1 - ab) * x_t + sqrt(ab) * v``."""
    a, s = _coefs(t, x_t, schedule)
    return s * x_t + a * v


def _model_config(model: nn.Module) -> WALTConfig:
    """The config of a WALT, looking through a DistributedDataParallel wrapper."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return inner.config


def diffusion_loss(model: nn.Module, x0: torch.Tensor, generator: torch.Generator, y: torch.Tensor | None = None,
                   per_frame_t: bool = False, schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Mean squared error of the model's v-prediction on clean latents ``x0`` ``(B, C, T', H', W')``.

    Draws, in this order and all from ``generator``: noise levels ``t ~ U[0, 1000]`` of shape ``(B,)`` (or
    ``(B, T')`` with ``per_frame_t``), noise ``eps ~ N(0, I)``, and, when labels ``y`` are given, the classifier-free
    label dropout (each label replaced by the null class with ``model.config.class_dropout_prob``). Random numbers
    are drawn on the generator's device and moved to ``x0``'s, so a step is reproducible from the seed.
    """
    if x0.ndim != 5:
        raise ValueError(f"diffusion_loss: expected latents (B, C, T', H', W'), got shape {tuple(x0.shape)}")
    b, _, frames = x0.shape[:3]
    gdev = generator.device
    t_shape = (b, frames) if per_frame_t else (b,)
    t = (torch.rand(t_shape, generator=generator, device=gdev) * NUM_STEPS).to(x0.device)  # (B,) or (B, T')
    eps = torch.randn(x0.shape, generator=generator, device=gdev).to(device=x0.device, dtype=x0.dtype)
    if y is not None:
        cfg = _model_config(model)
        drop = (torch.rand((b,), generator=generator, device=gdev) < cfg.class_dropout_prob).to(y.device)  # (B,)
        y = torch.where(drop, torch.full_like(y, cfg.num_classes), y)  # num_classes = the null class
    x_t = add_noise(x0, t, eps, schedule)
    pred = model(x_t, t, y)  # (B, C, T', H', W')
    return (pred.float() - v_target(x0, eps, t, schedule).float()).square().mean()
