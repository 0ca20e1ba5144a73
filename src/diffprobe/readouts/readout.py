"""The one cross-attention readout shared by every task (after 4DS's attention readout and V-JEPA's attentive probe).

Frozen features ``(B, T_f, H_f, W_f, C)`` are layer-normed, projected to the readout width D and given a learned,
factorised space-time position embedding; they are the keys and values. Task queries ``(B, Q, D)`` cross-attend to
them (multi-head), pass a residual MLP, and a linear head maps each query to the task's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from diffprobe.readouts.config import ReadoutConfig


def norm_linear(x: Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> Tensor:
    """``linear(norm(x))`` with the norm's affine folded into the linear map: ``W (gamma * x_hat + beta) + b`` as
    ``(W gamma) x_hat + (W beta + b)``, the same function of the same parameters with two passes less over ``x``
    (a large token grid, and a probe bank's P of them)."""
    weight = linear.weight * norm.weight  # (out, C)
    bias = linear.bias + linear.weight @ norm.bias  # (out,)
    return F.linear(F.layer_norm(x, norm.normalized_shape, eps=norm.eps), weight, bias)


class SpaceTimePosEmbed(nn.Module):
    """Learned factorised position embedding: ``t_table[t] + h_table[y] + w_table[x]`` for a fixed token grid."""

    def __init__(self, grid: tuple[int, int, int], dim: int) -> None:
        super().__init__()
        t, h, w = grid
        self.t_table = nn.Parameter(torch.randn(t, dim) * 0.02)
        self.h_table = nn.Parameter(torch.randn(h, dim) * 0.02)
        self.w_table = nn.Parameter(torch.randn(w, dim) * 0.02)

    def forward(self) -> Tensor:
        """The embedding of every grid cell, ``(T_f, H_f, W_f, D)``."""
        return self.t_table[:, None, None] + self.h_table[None, :, None] + self.w_table[None, None, :]


class AttentionReadout(nn.Module):
    """Queries cross-attend to frozen feature tokens; a residual MLP and a linear head give ``out_dim`` per query.

    Args:
        cfg: readout sizes (width D, heads, MLP ratio, dropout).
        feature_dim: channel count C of the frozen features.
        feature_grid: ``(T_f, H_f, W_f)``, the token grid the features come on; sizes the position embedding.
        out_dim: numbers the head outputs per query.
    """

    def __init__(self, cfg: ReadoutConfig, feature_dim: int, feature_grid: tuple[int, int, int], out_dim: int) -> None:
        super().__init__()
        d = cfg.width
        self.feature_grid = tuple(feature_grid)
        self.heads = cfg.heads
        self.dropout = cfg.dropout
        # "layer": each token normalised over its channels (V-JEPA, 4DS); "batch": each channel standardised over
        # the batch's tokens (running statistics at evaluation, as MAE's linear probe), an invertible affine map.
        self.feature_norm = (nn.LayerNorm(feature_dim) if cfg.feature_norm == "layer"
                             else nn.BatchNorm1d(feature_dim, affine=False))
        self.feature_proj = nn.Linear(feature_dim, d)
        self.pos = SpaceTimePosEmbed(self.feature_grid, d)
        self.query_norm = nn.LayerNorm(d)
        self.kv_norm = nn.LayerNorm(d)
        self.to_q = nn.Linear(d, d)
        self.to_kv = nn.Linear(d, 2 * d)
        self.attn_out = nn.Linear(d, d)
        hidden = max(1, round(cfg.mlp_ratio * d))
        self.mlp = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, d)
        )
        self.head_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, out_dim)
        # zero-initialised head (as DiT's final layer): an untrained readout outputs zeros, which every decoder reads
        # as "no change" (static points, copied boxes, no camera motion); Probe adds the task's baseline to reach the
        # task's prior (class frequencies, scene depth, ...).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def embed(self, features: Tensor) -> Tensor:
        """``features (B, T_f, H_f, W_f, C)`` -> normalised, projected tokens ``(B, T_f, H_f, W_f, D)`` (no position
        embedding yet); query encoders that read features sample this grid."""
        if tuple(features.shape[1:4]) != self.feature_grid:
            raise ValueError(f"features grid {tuple(features.shape[1:4])} != readout grid {self.feature_grid}")
        _, t, h, w, _ = features.shape
        tokens = rearrange(features, "b t h w c -> b (t h w) c")  # (B, N, C)
        if isinstance(self.feature_norm, nn.BatchNorm1d):
            tokens = self.feature_norm(tokens.transpose(1, 2)).transpose(1, 2)  # statistics over (B, N) per channel
            tokens = self.feature_proj(tokens)  # (B, N, D)
        else:
            tokens = norm_linear(tokens, self.feature_norm, self.feature_proj)  # (B, N, D)
        return rearrange(tokens, "b (t h w) d -> b t h w d", t=t, h=h, w=w)

    def attend(self, tokens: Tensor, queries: Tensor) -> Tensor:
        """Embedded ``tokens (B, T_f, H_f, W_f, D)`` (see :meth:`embed`), ``queries (B, Q, D)`` -> ``(B, Q, out)``."""
        tokens = rearrange(tokens + self.pos(), "b t h w d -> b (t h w) d")  # (B, N, D)
        q = norm_linear(queries, self.query_norm, self.to_q)  # (B, Q, D)
        k, v = norm_linear(tokens, self.kv_norm, self.to_kv).chunk(2, dim=-1)  # (B, N, D) each
        q, k, v = (rearrange(x, "b n (h e) -> b h n e", h=self.heads) for x in (q, k, v))
        p = self.dropout if self.training else 0.0
        if q.device.type == "cpu":  # written out: the CPU kernels (flash and math) cost as much again in checks
            weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)  # (B, heads, Q, N)
            attn = F.dropout(weights, p) @ v if p else weights @ v  # (B, heads, Q, D/heads)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, heads, Q, D/heads)
        x = queries + self.attn_out(rearrange(attn, "b h n e -> b n (h e)"))  # (B, Q, D)
        norm, up, act, drop, down = self.mlp
        x = x + down(drop(act(norm_linear(x, norm, up))))  # (B, Q, D)
        return norm_linear(x, self.head_norm, self.head)  # (B, Q, out_dim)

    def forward(self, features: Tensor, queries: Tensor) -> Tensor:
        """``features (B, T_f, H_f, W_f, C)``, ``queries (B, Q, D)`` -> ``(B, Q, out_dim)``."""
        return self.attend(self.embed(features), queries)
