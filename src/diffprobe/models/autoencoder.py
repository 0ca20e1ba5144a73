"""The video tokenizer: a causal 3D convolutional VAE after MAGVIT-v2, as used by WALT.

Every layer is causal in time (see :mod:`diffprobe.models.causal_conv`), so frame 0 is encoded on its own and an
image is a 1-frame video living in the same latent space as the first frame of a clip. A clip of
``T = 1 + k * tc`` frames of ``H x W`` pixels becomes ``T' = 1 + k`` latent frames of ``H/s x W/s``
(``tc`` = temporal, ``s`` = spatial downsampling).

The bottleneck is a diagonal Gaussian (mean, log-variance) with a small KL penalty, so latents stay well-scaled
and smooth; :meth:`CausalAutoencoder.encode` returns ``(mean - shift) * scale`` where ``latent_scale`` and
``latent_shift`` are buffers (saved in the state dict) measured after training with
:meth:`CausalAutoencoder.measure_latent_stats` so that latents have unit standard deviation.
Training loss: mean absolute error (L1) per pixel + ``kl_weight`` x mean KL per latent element (or L2, by config).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from diffprobe.config import Config, ConfigError
from diffprobe.errors import InputError
from diffprobe.models.causal_conv import CausalConv3d, Downsample3d, FrameGroupNorm, ResBlock3d, Upsample3d


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


@dataclass(frozen=True)
class CausalAutoencoderConfig(Config):
    """Shape of the causal 3D VAE. ``len(channel_mult) - 1`` stages each halve H and W; the last
    ``log2(temporal_downsample)`` of them also halve time."""

    in_channels: int = 3
    base_channels: int = 8
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    spatial_downsample: int = 4
    temporal_downsample: int = 2
    latent_channels: int = 8
    kl_weight: float = 1e-4
    recon_loss: Literal["l1", "l2"] = "l1"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # 32x32 x 9 frames -> 8 x 5 x 8 x 8 latents; narrow, to train on a CPU (its cost, and why width 8 rather
        # than 16: docs/models.md).
        "tiny": {"base_channels": 8, "channel_mult": [1, 2, 4], "num_res_blocks": 1,
                 "spatial_downsample": 4, "temporal_downsample": 2, "latent_channels": 8},
        # 64x64 x 17 frames -> 8 x 5 x 8 x 8 latents.
        "small": {"base_channels": 32, "channel_mult": [1, 2, 2, 4], "num_res_blocks": 1,
                  "spatial_downsample": 8, "temporal_downsample": 4, "latent_channels": 8},
        # WALT's setting: 128x128 x 17 frames -> 8 x 5 x 16 x 16 latents.
        "base": {"base_channels": 128, "channel_mult": [1, 2, 2, 4], "num_res_blocks": 2,
                 "spatial_downsample": 8, "temporal_downsample": 4, "latent_channels": 8},
    }

    def validate(self) -> None:
        for name in ("in_channels", "base_channels", "num_res_blocks", "latent_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CausalAutoencoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ConfigError(f"CausalAutoencoderConfig.channel_mult must be positive ints, got {self.channel_mult}")
        if not _is_power_of_two(self.spatial_downsample):
            raise ConfigError(f"CausalAutoencoderConfig.spatial_downsample must be a power of 2, "
                              f"got {self.spatial_downsample}")
        stages = len(self.channel_mult) - 1
        if 2**stages != self.spatial_downsample:
            raise ConfigError(f"CausalAutoencoderConfig: spatial_downsample={self.spatial_downsample} needs "
                              f"len(channel_mult) = {int(math.log2(self.spatial_downsample)) + 1}, "
                              f"got channel_mult={self.channel_mult}")
        if self.temporal_downsample not in (1, 2, 4):
            raise ConfigError(f"CausalAutoencoderConfig.temporal_downsample must be 1, 2 or 4, "
                              f"got {self.temporal_downsample}")
        if int(math.log2(self.temporal_downsample)) > stages:
            raise ConfigError(f"CausalAutoencoderConfig: temporal_downsample={self.temporal_downsample} needs at "
                              f"least {int(math.log2(self.temporal_downsample))} downsampling stages, got {stages}")
        if self.kl_weight < 0:
            raise ConfigError(f"CausalAutoencoderConfig.kl_weight must be >= 0, got {self.kl_weight}")

    def temporal_stages(self) -> list[bool]:
        """For each of the ``len(channel_mult) - 1`` encoder downsampling stages: does it also halve time?"""
        stages = len(self.channel_mult) - 1
        n_t = int(math.log2(self.temporal_downsample))
        return [i >= stages - n_t for i in range(stages)]


class Encoder(nn.Module):
    """Pixels ``(B, 3, T, H, W)`` -> posterior parameters ``(B, 2 * C_lat, T', H/s, W/s)``."""

    def __init__(self, cfg: CausalAutoencoderConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        temporal = cfg.temporal_stages()
        self.conv_in = CausalConv3d(cfg.in_channels, widths[0])
        layers: list[nn.Module] = []
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock3d(ch, width))
                ch = width
            if level < len(widths) - 1:
                layers.append(Downsample3d(ch, temporal=temporal[level]))
        self.down = nn.Sequential(*layers)
        self.mid = ResBlock3d(ch, ch)
        self.norm_out = FrameGroupNorm(min(32, ch // 4) or 1, ch, eps=1e-6)
        self.conv_out = CausalConv3d(ch, 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.conv_in(x))  # (B, C_top, T', H/s, W/s)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 * C_lat, T', H/s, W/s)


class Decoder(nn.Module):
    """Latents ``(B, C_lat, T', H', W')`` -> pixels ``(B, 3, 1 + (T'-1) * tc, H' * s, W' * s)``."""

    def __init__(self, cfg: CausalAutoencoderConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        temporal = cfg.temporal_stages()
        ch = widths[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, ch)
        self.mid = ResBlock3d(ch, ch)
        layers: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock3d(ch, widths[level]))
                ch = widths[level]
            if level > 0:  # mirror of the encoder's downsampling stage level - 1
                layers.append(Upsample3d(ch, temporal=temporal[level - 1]))
        self.up = nn.Sequential(*layers)
        self.norm_out = FrameGroupNorm(min(32, ch // 4) or 1, ch, eps=1e-6)
        self.conv_out = CausalConv3d(ch, cfg.in_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, C_top, T', H', W')
        h = self.up(h)  # (B, C_0, T, H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, T, H, W)


class CausalAutoencoder(nn.Module):
    """Causal 3D VAE: ``encode`` pixels in [-1, 1] to scaled latents, ``decode`` them back, ``loss`` to train."""

    def __init__(self, config: CausalAutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # latents returned by encode() are (mean - latent_shift) * latent_scale; set after training from data.
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.register_buffer("latent_shift", torch.tensor(0.0))

    # ---- shapes -------------------------------------------------------------------------------
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, T', H', W')`` of the latents of a ``frames x height x width`` clip (validated)."""
        self._check_input_shape((1, self.config.in_channels, frames, height, width))
        s, tc = self.config.spatial_downsample, self.config.temporal_downsample
        return self.config.latent_channels, 1 + (frames - 1) // tc, height // s, width // s

    def check_clip(self, frames: int, height: int, width: int) -> None:
        """An :class:`~diffprobe.errors.InputError` naming the clip size and the sizes this tokenizer takes, unless
        ``frames = 1 + k * temporal_downsample`` and ``height``, ``width`` are multiples of ``spatial_downsample``."""
        tc, s = self.config.temporal_downsample, self.config.spatial_downsample
        if frames < 1 or (frames - 1) % tc:
            below = 1 + max(0, (frames - 1) // tc) * tc
            near = sorted({below, below + tc} - {frames})
            raise InputError(f"clips of {frames} frames: this tokenizer takes 1 + k * {tc} frames (temporal "
                             f"compression {tc}), e.g. {' or '.join(map(str, near))}; set the dataset's frames option")
        if height % s or width % s:
            raise InputError(f"clips of {height} x {width} px: this tokenizer takes sides that are multiples of {s} "
                             f"(spatial compression {s}); set the dataset's clip size")

    def _check_input_shape(self, shape: tuple[int, ...]) -> None:
        cfg = self.config
        if len(shape) != 5 or shape[1] != cfg.in_channels:
            raise ValueError(f"CausalAutoencoder: expected input (B, {cfg.in_channels}, T, H, W), got {tuple(shape)}")
        self.check_clip(*shape[2:])

    # ---- encode / decode ----------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior ``(mean, logvar)``, each ``(B, C_lat, T', H', W')``, of pixels ``(B, 3, T, H, W)``."""
        self._check_input_shape(tuple(x.shape))
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # (B, C_lat, T', H', W') each
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels ``(B, 3, T, H, W)`` in [-1, 1] -> scaled latents ``(B, C_lat, T', H', W')``.

        ``sample=False`` returns the posterior mean; ``sample=True`` draws from the posterior with ``generator``.
        """
        mean, logvar = self.posterior(x)
        z = mean
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * eps
        return (z - self.latent_shift) * self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, C_lat, T', H', W')`` -> pixels ``(B, 3, 1 + (T'-1) * tc, H' * s, W' * s)``."""
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"CausalAutoencoder.decode: expected latents (B, {self.config.latent_channels}, T', H', "
                             f"W'), got {tuple(z.shape)}")
        return self.decoder(z / self.latent_scale + self.latent_shift)

    # ---- training -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The training loss (see :meth:`loss`); a forward pass so that DDP synchronises its gradients."""
        return self.loss(x, generator)

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """VAE loss on pixels ``(B, 3, T, H, W)``: ``loss = recon + kl_weight * kl`` (scalars).

        ``recon`` is the mean absolute (``l1``) or squared (``l2``) error per pixel value; ``kl`` is the mean KL
        divergence to N(0, 1) per latent element. The posterior sample is drawn with ``generator``.
        """
        mean, logvar = self.posterior(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * eps  # (B, C_lat, T', H', W'), unscaled
        x_hat = self.decoder(z)  # (B, 3, T, H, W)
        err = x_hat - x  # (B, 3, T, H, W)
        recon = err.abs().mean() if self.config.recon_loss == "l1" else err.square().mean()
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
        return {"loss": recon + self.config.kl_weight * kl, "recon": recon, "kl": kl}

    # ---- latent scaling -----------------------------------------------------------------------
    @torch.no_grad()
    def measure_latent_stats(self, batches: Iterable[torch.Tensor], progress: bool = True) -> tuple[float, float]:
        """Mean and std of the unscaled posterior means over ``batches`` of pixels ``(B, 3, T, H, W)``;
        returns ``(scale, shift) = (1 / std, mean)``, the values that make latents zero-mean, unit-std."""
        total, total_sq, count = 0.0, 0.0, 0
        for x in tqdm(batches, desc="latent stats", disable=not progress):
            mean, _ = self.posterior(x)
            m = mean.double()
            total += m.sum().item()
            total_sq += m.square().sum().item()
            count += m.numel()
        if count == 0:
            raise ValueError("measure_latent_stats: no batches given")
        mu = total / count
        std = math.sqrt(max(total_sq / count - mu * mu, 0.0))
        if std == 0.0:
            raise ValueError("measure_latent_stats: latents have zero variance; cannot set a scale")
        return 1.0 / std, mu

    def set_latent_stats(self, scale: float, shift: float = 0.0) -> None:
        """Set the buffers so ``encode`` returns ``(mean - shift) * scale``."""
        if not scale > 0:
            raise ValueError(f"set_latent_stats: scale must be > 0, got {scale}")
        self.latent_scale.fill_(float(scale))
        self.latent_shift.fill_(float(shift))
