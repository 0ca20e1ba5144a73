"""WALT: the windowed-attention latent transformer denoiser (after Gupta et al. 2023), in the style of DiT.

Latents ``(B, C, T', H', W')`` are cut into ``p x p`` spatial patches (temporal patch 1), embedded to width ``D``
and given a space-time position code. A stack of ``depth`` transformer blocks follows; they alternate

* odd blocks (1, 3, 5, ...): **spatial** window attention, a ``1 x wh x ww`` window inside one latent frame;
* even blocks (2, 4, 6, ...): **spatiotemporal** window attention, a local ``wt x wh x ww`` box.

Each block is conditioned on the noise level (and optional class) through adaLN-Zero (DiT): a zero-initialised
linear map of the conditioning vector gives shift, scale and gate of both sub-layers, so every block starts as the
identity. Conditioning is per latent frame (``t`` may be ``(B, T')``, FVDM-style); a ``(B,)`` ``t`` is broadcast.
Optionally (``adaln_lora_rank > 0``) the modulation is WALT's AdaLN-LoRA: one shared full-rank map plus a low-rank
map per block. The final layer is zero-initialised too, so an untrained model predicts exactly 0.

Image mode is the same network on ``T' = 1`` inputs (windows clamp to the grid); no parameter changes.

Block numbering (used by feature extraction): block 0 = the embedded input tokens (patches + position code),
block ``l`` = the token grid after the ``l``-th transformer block, ``l = 1..depth``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from einops import rearrange
from torch import nn

from diffprobe.config import Config, ConfigError
from diffprobe.models.attention import WindowAttention
from diffprobe.models.embeddings import LabelEmbedder, SpaceTimePosEmbed, TimestepEmbedder

#: patching, windows and position tables of the presets, per latent grid (8 x 5 x 8 x 8 or 8 x 5 x 16 x 16)
_LAYOUT_32PX: dict[str, Any] = {"patch_size": 2, "spatial_window": [4, 4], "spatiotemporal_window": [5, 2, 2],
                                "max_latent_frames": 5, "max_latent_size": [8, 8]}
_LAYOUT_128PX: dict[str, Any] = {"patch_size": 2, "spatial_window": [8, 8], "spatiotemporal_window": [5, 4, 4],
                                 "max_latent_frames": 5, "max_latent_size": [16, 16]}


@dataclass(frozen=True)
class WALTConfig(Config):
    """Shape of the WALT denoiser. Windows are in tokens (after patching); they clamp to smaller grids."""

    in_channels: int = 8
    patch_size: int = 2
    hidden_size: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    spatial_window: tuple[int, int] = (4, 4)
    spatiotemporal_window: tuple[int, int, int] = (5, 2, 2)
    pos_embed: Literal["learned", "sinusoidal"] = "sinusoidal"
    max_latent_frames: int = 5
    max_latent_size: tuple[int, int] = (8, 8)
    num_classes: int = 0
    class_dropout_prob: float = 0.1
    adaln_lora_rank: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # latents 8 x 5 x 8 x 8 -> 5 x 4 x 4 tokens; spatial window = a whole frame, spatiotemporal = all frames x 2x2.
        "tiny": {**_LAYOUT_32PX, "hidden_size": 128, "depth": 6, "num_heads": 4},
        # the tiny layout at half the width (~0.5M parameters): the second model size of the CPU study.
        "micro": {**_LAYOUT_32PX, "hidden_size": 64, "depth": 6, "num_heads": 2},
        # latents 8 x 5 x 16 x 16 (128 px clips) -> 5 x 8 x 8 tokens.
        "S": {**_LAYOUT_128PX, "hidden_size": 384, "depth": 12, "num_heads": 6},
        "B": {**_LAYOUT_128PX, "hidden_size": 768, "depth": 12, "num_heads": 12},
        # ~300M parameters with WALT's AdaLN-LoRA (a full adaLN per block would add ~150M).
        "L": {**_LAYOUT_128PX, "hidden_size": 1024, "depth": 24, "num_heads": 16, "adaln_lora_rank": 64},
    }

    def validate(self) -> None:
        for name in ("in_channels", "patch_size", "hidden_size", "depth", "num_heads", "max_latent_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"WALTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"WALTConfig: hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ConfigError(f"WALTConfig.hidden_size must be divisible by 4 (position code), got {self.hidden_size}")
        if any(w < 1 for w in (*self.spatial_window, *self.spatiotemporal_window)):
            raise ConfigError(f"WALTConfig: windows must be >= 1, got spatial_window={self.spatial_window}, "
                              f"spatiotemporal_window={self.spatiotemporal_window}")
        if any(s < 1 or s % self.patch_size for s in self.max_latent_size):
            raise ConfigError(f"WALTConfig.max_latent_size {self.max_latent_size} must be positive multiples of "
                              f"patch_size {self.patch_size}")
        if self.num_classes < 0:
            raise ConfigError(f"WALTConfig.num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ConfigError(f"WALTConfig.class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"WALTConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.adaln_lora_rank < 0:
            raise ConfigError(f"WALTConfig.adaln_lora_rank must be >= 0 (0 = full adaLN), got {self.adaln_lora_rank}")

    def block_window(self, block: int) -> tuple[int, int, int]:
        """Attention window ``(wt, wh, ww)`` of block ``block`` (1-based): odd = spatial, even = spatiotemporal."""
        if not 1 <= block <= self.depth:
            raise ValueError(f"WALTConfig.block_window: block must be in 1..{self.depth}, got {block}")
        return (1, *self.spatial_window) if block % 2 == 1 else tuple(self.spatiotemporal_window)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens ``(B, T, H, W, D)`` by per-frame ``shift``/``scale`` ``(B, T, 1, 1, D)``."""
    return x * (1 + scale) + shift


class AdaLNModulation(nn.Module):
    """Conditioning ``(B, T, D)`` -> ``n`` modulation vectors, each ``(B, T, 1, 1, D)``; zero-initialised.

    ``rank = 0``: a full ``D -> n*D`` linear map (DiT). ``rank > 0``: a low-rank ``D -> r -> n*D`` map whose output
    is added to a shared full-rank one computed once by the model (WALT's AdaLN-LoRA).
    """

    def __init__(self, dim: int, n: int, rank: int) -> None:
        super().__init__()
        self.n = n
        if rank == 0:
            self.net = nn.Sequential(nn.SiLU(), nn.Linear(dim, n * dim))
        else:
            self.net = nn.Sequential(nn.SiLU(), nn.Linear(dim, rank, bias=False), nn.Linear(rank, n * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, c: torch.Tensor, shared: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        mod = self.net(c)  # (B, T, n*D)
        if shared is not None:
            mod = mod + shared
        return rearrange(mod, "b t (n d) -> n b t 1 1 d", n=self.n).unbind(0)


class WALTBlock(nn.Module):
    """Pre-norm transformer block with window attention and adaLN-Zero conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: tuple[int, int, int], lora_rank: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN = AdaLNModulation(dim, 6, lora_rank)

    def forward(self, x: torch.Tensor, c: torch.Tensor, shared: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, H, W, D) tokens; c: (B, T, D) per-frame conditioning; shared: (B, T, 6D) or None
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c, shared)  # each (B, T, 1, 1, D)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x  # (B, T, H, W, D)


class FinalLayer(nn.Module):
    """adaLN + linear to ``p*p*C`` values per token; zero-initialised so the untrained model outputs 0."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN = AdaLNModulation(dim, 2, 0)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c, None)  # each (B, T, 1, 1, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, H, W, p*p*C)


class WALT(nn.Module):
    """Windowed-attention latent transformer; predicts the diffusion target for latents ``(B, C, T', H', W')``."""

    def __init__(self, config: WALTConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.x_embed = nn.Linear(p * p * config.in_channels, d)
        self.pos_embed = SpaceTimePosEmbed(config.pos_embed, d, config.max_latent_frames,
                                           config.max_latent_size[0] // p, config.max_latent_size[1] // p)
        self.t_embed = TimestepEmbedder(d)
        self.y_embed = LabelEmbedder(config.num_classes, d) if config.num_classes > 0 else None
        self.shared_adaLN = AdaLNModulation(d, 6, 0) if config.adaln_lora_rank > 0 else None
        self.blocks = nn.ModuleList([
            WALTBlock(d, config.num_heads, config.mlp_ratio, config.block_window(i), config.adaln_lora_rank)
            for i in range(1, config.depth + 1)
        ])
        self.final = FinalLayer(d, p, config.in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT initialisation: xavier for linear layers, N(0, 0.02) for the embedding MLPs / table; the adaLN and
        # final projections were zero-initialised by their modules and are restored to zero here.
        zero = [m.net[-1] for m in self.modules() if isinstance(m, AdaLNModulation)] + [self.final.linear]
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for lin in self.t_embed.mlp:
            if isinstance(lin, nn.Linear):
                nn.init.normal_(lin.weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.table.weight, std=0.02)
        for lin in zero:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def null_class(self) -> int:
        """The label index of the null class (classifier-free guidance); only for class-conditional models."""
        if self.y_embed is None:
            raise ValueError("WALT.null_class: model is unconditional (num_classes=0)")
        return self.config.num_classes

    def _conditioning(self, t: torch.Tensor, y: torch.Tensor | None, b: int, frames: int) -> torch.Tensor:
        """Per-frame conditioning ``(B, T', D)`` from ``t`` ``(B,)`` or ``(B, T')`` and optional labels ``(B,)``."""
        if not torch.is_floating_point(t):
            raise ValueError(f"WALT: t must be a float tensor (noise level on 0..1000), got dtype {t.dtype}")
        if t.shape == (b,):
            t = t[:, None].expand(b, frames)  # (B, T')
        elif t.shape != (b, frames):
            raise ValueError(f"WALT: t must have shape (B,) = ({b},) or (B, T') = ({b}, {frames}), "
                             f"got {tuple(t.shape)}")
        c = self.t_embed(t)  # (B, T', D)
        if self.y_embed is None:
            if y is not None:
                raise ValueError("WALT: labels y given to an unconditional model (num_classes=0)")
            return c
        if y is None:  # no label = the null class: unconditional prediction of a class-conditional model
            y = torch.full((b,), self.null_class, dtype=torch.long, device=c.device)
        if y.shape != (b,):
            raise ValueError(f"WALT: y must have shape (B,) = ({b},), got {tuple(y.shape)}")
        return c + self.y_embed(y)[:, None, :]  # (B, T', D)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                blocks: Sequence[int] | None = None) -> torch.Tensor | dict[int, torch.Tensor]:
        """Predict the diffusion target ``(B, C, T', H', W')`` for noisy latents ``x`` at noise level ``t``.

        With ``blocks`` (numbers in 0..depth), return ``{l: tokens (B, T', H'/p, W'/p, D)}`` instead: the token grid
        after block ``l`` (0 = embedded input); computation stops after the last requested block.
        """
        cfg = self.config
        p = cfg.patch_size
        if x.ndim != 5 or x.shape[1] != cfg.in_channels or x.shape[3] % p or x.shape[4] % p:
            raise ValueError(f"WALT: expected latents (B, {cfg.in_channels}, T', H', W') with H', W' divisible by "
                             f"patch_size={p}, got {tuple(x.shape)}")
        b, _, frames, h, w = x.shape
        wanted: set[int] = set()
        if blocks is not None:
            wanted = set(blocks)
            if not wanted or not all(isinstance(i, int) and 0 <= i <= cfg.depth for i in wanted):
                raise ValueError(f"WALT: blocks must be a non-empty list of ints in 0..{cfg.depth}, got {list(blocks)}")

        tokens = rearrange(x, "b c t (h p1) (w p2) -> b t h w (p1 p2 c)", p1=p, p2=p)  # (B, T', h, w, p*p*C)
        tokens = self.pos_embed(self.x_embed(tokens))  # (B, T', h, w, D)
        out: dict[int, torch.Tensor] = {}
        if 0 in wanted:
            out[0] = tokens
            if max(wanted) == 0:
                return out

        c = self._conditioning(t, y, b, frames)  # (B, T', D)
        shared = self.shared_adaLN.net(c) if self.shared_adaLN is not None else None  # (B, T', 6D) or None
        for index, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, c, shared)  # (B, T', h, w, D)
            if index in wanted:
                out[index] = tokens
                if index == max(wanted):
                    return out

        pred = self.final(tokens, c)  # (B, T', h, w, p*p*C)
        return rearrange(pred, "b t h w (p1 p2 c) -> b c t (h p1) (w p2)", p1=p, p2=p)  # (B, C, T', H', W')
