"""DDIM sampling (Song et al. 2021) for the v-prediction denoiser, with optional classifier-free guidance."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from diffprobe.diffusion.objective import v_to_eps, v_to_x0
from diffprobe.diffusion.schedule import DEFAULT_SCHEDULE, NUM_STEPS, NoiseSchedule


def _predict(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
             guidance_scale: float) -> torch.Tensor:
    """The model's v at ``(x, t)``; with guidance, ``v_uncond + s * (v_cond - v_uncond)`` in one batched call."""
    if guidance_scale == 1.0:
        return model(x, t, y)
    if y is None:
        raise ValueError(f"ddim_sample: guidance_scale={guidance_scale} needs class labels y")
    null = torch.full_like(y, model.null_class)
    v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, C, T', H', W')
    v_cond, v_uncond = v.chunk(2)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


@torch.no_grad()
def ddim_sample(model: nn.Module, shape: tuple[int, ...], steps: int, generator: torch.Generator,
                y: torch.Tensor | None = None, guidance_scale: float = 1.0, eta: float = 0.0, progress: bool = True,
                schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Sample clean latents of ``shape`` ``(B, C, T', H', W')`` in ``steps`` DDIM steps from t = 1000 to 0.

    Starts from ``N(0, I)`` noise; ``eta = 0`` is deterministic DDIM, ``eta = 1`` DDPM-like ancestral noise. All
    random numbers come from ``generator`` (drawn on its device, moved to the model's), so the same seed gives the
    same latents bit for bit. The model is called as ``model(x, t (B,), y)`` and must predict v.
    """
    if len(shape) != 5:
        raise ValueError(f"ddim_sample: shape must be (B, C, T', H', W'), got {tuple(shape)}")
    x = torch.randn(shape, generator=generator, device=generator.device)  # (B, C, T', H', W') at t=1000
    return ddim_from(model, x, NUM_STEPS, steps, generator, y, guidance_scale, eta, progress, schedule)


@torch.no_grad()
def ddim_from(model: nn.Module, x: torch.Tensor, t_start: float, steps: int, generator: torch.Generator | None = None,
              y: torch.Tensor | None = None, guidance_scale: float = 1.0, eta: float = 0.0, progress: bool = True,
              schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """DDIM from latents ``x`` ``(B, C, T', H', W')`` at noise level ``t_start`` down to 0 in ``steps`` steps: the
    clean estimate. ``eta > 0`` draws its noise from ``generator`` (required then)."""
    if steps < 1:
        raise ValueError(f"ddim_sample: steps must be >= 1, got {steps}")
    if eta < 0:
        raise ValueError(f"ddim_sample: eta must be >= 0, got {eta}")
    if eta > 0 and generator is None:
        raise ValueError("ddim_from: eta > 0 draws noise and needs a generator")
    schedule = schedule or DEFAULT_SCHEDULE
    device = next(model.parameters()).device
    shape, b = tuple(x.shape), x.shape[0]
    times = torch.linspace(t_start, 0, steps + 1, dtype=torch.float64).tolist()
    x = x.to(device)
    for i in tqdm(range(steps), desc="ddim", disable=not progress):
        t = torch.full((b,), times[i], device=device)  # (B,)
        t_next = torch.full((b,), times[i + 1], device=device)
        v = _predict(model, x, t, y, guidance_scale).to(x.dtype)
        x0 = v_to_x0(x, v, t, schedule)
        if i == steps - 1:  # t_next = 0: the clean estimate
            x = x0
            break
        eps = v_to_eps(x, v, t, schedule)
        ab, ab_next = schedule.alpha_bar(t)[0], schedule.alpha_bar(t_next)[0]
        sigma = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).clamp(min=0).sqrt()
        x = ab_next.sqrt() * x0 + (1 - ab_next - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x = x + sigma * torch.randn(shape, generator=generator, device=generator.device).to(device)
    return x
