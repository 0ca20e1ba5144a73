"""The motion-sensitivity experiment (the paper's Figure 4): do a backbone's first-frame tokens see later motion?

Protocol. From one clip, K *variants* are made that share frame 0 exactly: variant k plays the clip inside region k
and freezes every pixel outside it at frame 0 (:func:`motion_variants`). The default regions are the four quadrants
of the frame, a 2x2 grid (``quadrants``, K = 4); ``thirds`` (three vertical strips, K = 3) is the other layout
(:data:`REGION_LAYOUTS`). K >= 3 is needed: two variants deviate equally from their mean, so the ratio below would
be 1 whatever the model (halves measure nothing). Every variant goes through the backbone with the same clip id,
hence the same noise, and the first feature frame of each is kept (:func:`first_frame_tokens`). An image model reads
frame 0 alone, so its first-frame tokens are identical across the variants; a video model's differ where it looks at
later frames.

The number (:func:`motion_ratio`): with tokens ``x[k, i]`` (variant k, token i) and their mean over the variants
``m[i]``, a token's *change* in variant k is ``d[k, i] = ||x[k, i] - m[i]||_2``. Each token belongs to the region
that covers most of its pixels (:func:`token_regions`; ties go to the first region), so the regions partition the
token grid. The ratio is

    mean of d[k, i] over (k, i) with token i inside region k (the variant where it plays)
    / mean of d[k, i] over (k, i) with token i outside region k (the variants where it is frozen).

Identical tokens across variants (an image model, or block 0 of a causal video tokenizer) give 0 / 0, which is 1.0 by
convention. Because the regions partition the tokens and each token's deviations sum to zero over the variants, the
ratio lies in [0, K - 1]: 1 means a token reacts as much to motion elsewhere as to its own (no locality), K - 1 that
it reacts only to motion under it (perfectly local). Caveat: a backbone whose first feature frame already spans
several input frames (a tubelet of 2) sees the region play inside its first feature frame, not only later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffprobe.backbones.base import Backbone
from diffprobe.errors import InputError


def _quadrants(height: int, width: int) -> np.ndarray:
    """(4, H, W) bool: top-left, top-right, bottom-left, bottom-right."""
    rows, cols = np.arange(height)[:, None] < height // 2, np.arange(width)[None, :] < width // 2  # (H, 1), (1, W)
    return np.stack([rows & cols, rows & ~cols, ~rows & cols, ~rows & ~cols])


def _thirds(height: int, width: int) -> np.ndarray:
    """(3, H, W) bool: left, middle, right vertical strips (columns cut at round(W/3), round(2W/3))."""
    strip = np.searchsorted([round(width / 3), round(2 * width / 3)], np.arange(width), side="right")  # (W,)
    return np.stack([np.broadcast_to(strip[None, :] == k, (height, width)) for k in range(3)])


#: layout name -> (region masks of an H x W frame, the regions' names)
REGION_LAYOUTS: dict[str, tuple[Callable[[int, int], np.ndarray], tuple[str, ...]]] = {
    "quadrants": (_quadrants, ("top-left", "top-right", "bottom-left", "bottom-right")),
    "thirds": (_thirds, ("left", "middle", "right")),
}
DEFAULT_LAYOUT = "quadrants"


def default_regions(height: int, width: int, layout: str = DEFAULT_LAYOUT) -> tuple[np.ndarray, tuple[str, ...]]:
    """The regions of ``layout`` (see :data:`REGION_LAYOUTS`) for an ``height`` x ``width`` frame: (K, H, W) bool
    masks that partition the frame, and their names."""
    if layout not in REGION_LAYOUTS:
        raise InputError(f"motion regions {layout!r}: unknown layout; known layouts are {sorted(REGION_LAYOUTS)}")
    if height < 2 or width < 2:
        raise InputError(f"motion regions: a {height}x{width} frame is too small to divide into {layout}")
    make, names = REGION_LAYOUTS[layout]
    return make(height, width), names


def motion_variants(video: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Variant k of ``video`` (T, H, W, 3) uint8 plays inside ``regions[k]`` ((K, H, W) bool) and is frozen at frame 0
    outside it: (K, T, H, W, 3) uint8; every variant's frame 0 is ``video[0]``."""
    video, regions = np.asarray(video), np.asarray(regions, dtype=bool)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise InputError(f"motion variants: video must be (T, H, W, 3) uint8, got {video.shape} {video.dtype}")
    if regions.ndim != 3 or regions.shape[1:] != video.shape[1:3]:
        raise InputError(f"motion variants: regions must be (K, H, W) = (K, {video.shape[1]}, {video.shape[2]}), "
                         f"got {regions.shape}")
    inside = regions[:, None, :, :, None]  # (K, 1, H, W, 1)
    return np.where(inside, video[None], video[None, :1])  # (K, T, H, W, 3)


def first_frame_tokens(backbone: Backbone, variants: np.ndarray, block: int, t: float, noise_seed: int,
                       clip_id: int = 0) -> np.ndarray:
    """The first feature frame of each variant at ``block`` and noise level ``t``: (K, H_f, W_f, C) float32. Every
    variant is read with the same ``clip_id``, so the same noise (seed ``noise_seed``), and in a forward of its own,
    so identical inputs give bit-identical features whatever the kernels do with a batch."""
    ids = torch.tensor([clip_id], dtype=torch.long)  # (1,)
    out = []
    with torch.no_grad():
        for variant in variants:
            video = torch.from_numpy(np.ascontiguousarray(variant))[None]  # (1, T, H, W, 3) uint8
            feats = backbone.features(video, ids, [block], t, noise_seed)[block]  # (1, T_f, H_f, W_f, C)
            out.append(feats[0, 0].float().cpu().numpy())  # (H_f, W_f, C)
    return np.stack(out)


def token_regions(regions: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel regions (K, H, W) bool -> token regions (K, height, width) bool: each token belongs to the region that
    covers the largest share of its pixels (ties: the first), so pixel regions that partition the frame partition
    the token grid."""
    cover = F.adaptive_avg_pool2d(torch.from_numpy(np.asarray(regions, dtype=np.float32)), (height, width))  # (K,h,w)
    owner = cover.argmax(dim=0)  # (h, w)
    return (owner[None] == torch.arange(cover.shape[0])[:, None, None]).numpy()  # (K, h, w)


@dataclass(frozen=True)
class MotionScore:
    """The motion ratio and its parts (see the module docstring)."""

    ratio: float  #: inside / outside; 1.0 when both are 0
    inside: float  #: mean change of tokens in the variants where their region plays
    outside: float  #: mean change of tokens in the variants where their region is frozen
    change: np.ndarray  #: (K, H_f, W_f) each token's distance to its mean over the variants


def token_change(tokens: np.ndarray) -> np.ndarray:
    """(K, H_f, W_f, C) -> (K, H_f, W_f): each token's L2 distance to its mean over the K variants."""
    x = np.asarray(tokens, dtype=np.float64)
    return np.linalg.norm(x - x.mean(axis=0, keepdims=True), axis=-1)


def motion_ratio(tokens: np.ndarray, regions: np.ndarray) -> MotionScore:
    """The motion ratio of first-frame ``tokens`` (K, H_f, W_f, C) of K variants whose playing regions on the token
    grid are ``regions`` (K, H_f, W_f) bool (a partition: every token in exactly one region, see
    :func:`token_regions`). Definition, range and the 0 / 0 = 1.0 convention: the module docstring."""
    tokens, regions = np.asarray(tokens), np.asarray(regions, dtype=bool)
    if tokens.ndim != 4 or tokens.shape[0] < 3:
        raise InputError(f"motion ratio: tokens must be (K>=3, H_f, W_f, C) (two variants always give 1.0), got "
                         f"{tokens.shape}")
    if regions.shape != tokens.shape[:3]:
        raise InputError(f"motion ratio: regions {regions.shape} do not match the tokens' (K, H_f, W_f) "
                         f"{tokens.shape[:3]}")
    counts = regions.sum(axis=0)  # (H_f, W_f)
    if (counts != 1).any():
        raise InputError(f"motion ratio: the regions must partition the token grid; {int((counts != 1).sum())} "
                         "token(s) are in none or several")
    change = token_change(tokens)  # (K, H_f, W_f)
    inside, outside = float(change[regions].mean()), float(change[~regions].mean())
    # outside == 0 means every token equals its mean in K - 1 variants, hence in all: 0 / 0, which is 1.0
    ratio = inside / outside if outside > 0.0 else 1.0
    return MotionScore(ratio, inside, outside, change.astype(np.float32))
