"""The noise schedule: ``alpha_bar(t)`` for a continuous noise level ``t`` on the DDPM scale 0..1000.

``x_t = sqrt(alpha_bar(t)) * x0 + sqrt(1 - alpha_bar(t)) * eps``; t = 0 is the clean input, t = 1000 is (almost)
pure noise. "Noise level t" therefore means what it means in the paper (DDPM-style steps 0..1000).

Two schedules:

* ``cosine`` (default; Nichol & Dhariwal 2021): ``alpha_bar(t) = cos^2(((t/1000 + s) / (1 + s)) * pi/2)``,
  normalised so ``alpha_bar(0) = 1``, floored at ``1e-6`` so t = 1000 is not exactly zero signal. It destroys
  information gradually over the whole range, which matters for our small (8x8) latents, where the linear schedule
  leaves the last few hundred steps as near-pure noise.
* ``linear``: DDPM's ``beta`` linearly from 1e-4 to 0.02 over 1000 steps; ``log alpha_bar`` is the cumulative sum
  of ``log(1 - beta)``, exact at integer t and linearly interpolated in between.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

NUM_STEPS = 1000
ALPHA_BAR_MIN = 1e-6


class NoiseSchedule:
    """``alpha_bar(t)`` for ``t`` on the continuous 0..1000 scale (``kind`` = ``cosine`` or ``linear``)."""

    def __init__(self, kind: Literal["cosine", "linear"] = "cosine", cosine_s: float = 0.008,
                 beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        if kind not in ("cosine", "linear"):
            raise ValueError(f"NoiseSchedule: kind must be 'cosine' or 'linear', got {kind!r}")
        self.kind = kind
        self.cosine_s = cosine_s
        if kind == "linear":
            if not 0 < beta_start < beta_end < 1:
                raise ValueError(f"NoiseSchedule: need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
            betas = torch.linspace(beta_start, beta_end, NUM_STEPS, dtype=torch.float64)  # (1000,)
            # log_alpha_bar[n] for n = 0..1000 (n = 0: clean)
            self._log_alpha_bar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])

    def __repr__(self) -> str:
        return f"NoiseSchedule(kind={self.kind!r})"

    def _table(self, device: torch.device) -> torch.Tensor:
        """The linear schedule's ``log_alpha_bar`` table on ``device``, copied there once."""
        if self._log_alpha_bar.device != device:
            self._log_alpha_bar = self._log_alpha_bar.to(device)
        return self._log_alpha_bar

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """Signal fraction ``alpha_bar(t)`` (float32, same shape and device as ``t``); ``t`` must lie in [0, 1000]."""
        t64 = t.detach().to(torch.float64)
        # The range is checked where t lives on the host; on an accelerator reading it back would make every
        # training step wait for the device (the library draws its own t inside the range by construction).
        if t64.device.type == "cpu" and t64.numel() and (float(t64.min()) < 0 or float(t64.max()) > NUM_STEPS):
            raise ValueError(f"NoiseSchedule.alpha_bar: t must lie in [0, {NUM_STEPS}], "
                             f"got range [{float(t64.min())}, {float(t64.max())}]")
        if self.kind == "cosine":
            s = self.cosine_s
            f = torch.cos((t64 / NUM_STEPS + s) / (1 + s) * math.pi / 2) ** 2
            ab = f / math.cos(s / (1 + s) * math.pi / 2) ** 2
        else:
            table = self._table(t64.device)
            lo = t64.floor().clamp(max=NUM_STEPS - 1).long()
            frac = t64 - lo
            ab = torch.exp(table[lo] * (1 - frac) + table[lo + 1] * frac)
        return ab.clamp(ALPHA_BAR_MIN, 1.0).to(torch.float32)

    def signal_noise(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(alpha_bar), sqrt(1 - alpha_bar))`` at ``t``."""
        ab = self.alpha_bar(t)
        return ab.sqrt(), (1 - ab).sqrt()


#: The schedule every function uses unless given another.
DEFAULT_SCHEDULE = NoiseSchedule("cosine")
