"""PCA pictures of feature tokens (the paper's Figures 3-4): the first three principal components as RGB, and the
first one alone as a heat map.

Conventions (stable colours across runs):

- The principal axes are the top-3 eigenvectors of the covariance of the fit tokens (mean-centred).
- Sign: each axis is oriented so that the projections of the fit tokens have a positive third moment (skewness):
  the minority of tokens that stands out from the bulk (a moving object, a salient region) is bright. When the
  skewness is negligible (|skew| < 1e-3), the axis' largest-magnitude coefficient is made positive instead.
- Scale: each component is mapped linearly from its ``percentiles`` (default 1st and 99th, over the fit tokens)
  to 0..255 and clipped, so a few outlier tokens do not wash out the picture. A component with no spread maps
  to 128.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

TOKENS_PREFIX = "tokens__"


def _as_tokens(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim != 4:
        raise ValueError(f"{name}: expected (T, H, W, C) tokens, got shape {x.shape}")
    if x.shape[-1] < 3:
        raise ValueError(f"{name}: need at least 3 channels for 3 principal components, got {x.shape[-1]}")
    return x


def fit_pca3(fit_tokens: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0),
             max_fit: int = 50_000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit the 3-component PCA on ``fit_tokens`` (N, C) (evenly strided down to ``max_fit`` tokens).

    Returns (mean (C,), axes (3, C), lo (3,), hi (3,)) with the sign and scale conventions of this module.
    """
    x = np.asarray(fit_tokens, dtype=np.float64)  # (N, C)
    if x.ndim != 2 or x.shape[1] < 3 or x.shape[0] < 2:
        raise ValueError(f"fit tokens must be (N>=2, C>=3), got shape {x.shape}")
    if x.shape[0] > max_fit:
        x = x[np.linspace(0, x.shape[0] - 1, max_fit).round().astype(int)]
    mean = x.mean(axis=0)  # (C,)
    xc = x - mean  # (N, C)
    cov = xc.T @ xc / (x.shape[0] - 1)  # (C, C)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    axes = vecs[:, ::-1][:, :3].T.copy()  # (3, C), largest variance first
    proj = xc @ axes.T  # (N, 3)
    for i in range(3):
        p = proj[:, i]
        m2 = float(np.mean(p**2))
        skew = float(np.mean(p**3)) / m2**1.5 if m2 > 0 else 0.0
        flip = skew < 0 if abs(skew) >= 1e-3 else axes[i, np.argmax(np.abs(axes[i]))] < 0
        if flip:
            axes[i] *= -1
            proj[:, i] *= -1
    lo, hi = np.percentile(proj, percentiles, axis=0)  # (3,), (3,)
    return mean, axes, lo, hi


def _to_rgb(tokens: np.ndarray, mean: np.ndarray, axes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    proj = (tokens.astype(np.float64) - mean) @ axes.T  # (T, H, W, 3)
    span = hi - lo  # (3,)
    safe = np.where(span > 0, span, 1.0)
    scaled = np.where(span > 0, (proj - lo) / safe, 0.5)  # (T, H, W, 3)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def pca_rgb(tokens: np.ndarray | Sequence[np.ndarray], fit_on: np.ndarray | None = None,
            percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray | list[np.ndarray]:
    """First three principal components of tokens as RGB.

    ``tokens``: (T, H, W, C) float, or a list of such arrays (same C) that share one PCA so their colours compare.
    ``fit_on``: tokens (..., C) to fit the PCA on; by default all the given tokens. Returns (T, H, W, 3) uint8
    (a list of them for a list input); channel 0 is the first component.
    """
    many = not isinstance(tokens, np.ndarray)
    arrays = [_as_tokens(np.asarray(a), f"tokens[{i}]") for i, a in enumerate(tokens)] if many \
        else [_as_tokens(tokens, "tokens")]
    channels = {a.shape[-1] for a in arrays}
    if len(channels) != 1:
        raise ValueError(f"tokens have different channel counts {sorted(channels)}")
    c = channels.pop()
    if fit_on is None:
        fit = np.concatenate([a.reshape(-1, c) for a in arrays])  # (N, C)
    else:
        if fit_on.shape[-1] != c:
            raise ValueError(f"fit_on has {fit_on.shape[-1]} channels, tokens have {c}")
        fit = fit_on.reshape(-1, c)
    basis = fit_pca3(fit, percentiles)
    out = [_to_rgb(a, *basis) for a in arrays]
    return out if many else out[0]


def frame_to_feature_index(n_frames: int, n_feature_frames: int) -> np.ndarray:
    """Feature frame shown under each video frame: ``floor(i * T_f / T)`` (proportional mapping), (T,) int."""
    return np.minimum(np.arange(n_frames) * n_feature_frames // n_frames, n_feature_frames - 1)


def upsample_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of (H, W, ...) to (height, width, ...)."""
    rows = np.minimum(np.arange(height) * img.shape[0] // height, img.shape[0] - 1)  # (height,)
    cols = np.minimum(np.arange(width) * img.shape[1] // width, img.shape[1] - 1)  # (width,)
    return img[rows][:, cols]


def pca_figure(frames: np.ndarray, tokens_by_backbone: Mapping[str, np.ndarray], max_frames: int = 8,
               title: str | None = None) -> Figure:
    """Frames in the first row; for each backbone, its PCA-RGB maps and its first component as a heat map.

    Each backbone gets its own PCA, fit on all its tokens. Feature maps are upsampled (nearest) to the frame size;
    when a backbone has T_f != T feature frames, frame i shows feature frame ``floor(i * T_f / T)`` and the row
    label says so. At most ``max_frames`` evenly spaced frames are shown.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if not tokens_by_backbone:
        raise ValueError("no backbone tokens to show")
    n_t, h, w, _ = frames.shape
    shown = np.unique(np.linspace(0, n_t - 1, min(max_frames, n_t)).round().astype(int))  # (F,)
    n_rows = 1 + 2 * len(tokens_by_backbone)
    cell = 1.7
    fig = Figure(figsize=(1.6 + cell * len(shown), 0.5 + cell * h / w * n_rows), dpi=100)
    axes = fig.subplots(n_rows, len(shown), squeeze=False)
    for j, i in enumerate(shown):
        axes[0, j].imshow(frames[i])
        axes[0, j].set_title(f"frame {i}", fontsize=9)
    axes[0, 0].set_ylabel("input", fontsize=9)
    for r, (name, toks) in enumerate(tokens_by_backbone.items()):
        toks = _as_tokens(np.asarray(toks), f"tokens of {name}")
        rgb = pca_rgb(toks)  # (T_f, H_f, W_f, 3)
        fmap = frame_to_feature_index(n_t, toks.shape[0])  # (T,)
        mapped = "" if toks.shape[0] == n_t else f"\n(feature frame\n= ⌊i·{toks.shape[0]}/{n_t}⌋)"
        for j, i in enumerate(shown):
            axes[1 + 2 * r, j].imshow(upsample_nearest(rgb[fmap[i]], h, w))
            axes[2 + 2 * r, j].imshow(upsample_nearest(rgb[fmap[i], :, :, 0], h, w), cmap="inferno", vmin=0,
                                      vmax=255)
        axes[1 + 2 * r, 0].set_ylabel(f"{name}\nPCA 1-3{mapped}", fontsize=8)
        axes[2 + 2 * r, 0].set_ylabel(f"{name}\nPC 1", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def load_pca_npz(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read a ``pca/<clip>.npz``: ``frames`` (T, H, W, 3) uint8 and ``tokens__<backbone>`` (T_f, H_f, W_f, C)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "frames" not in arrays:
        raise ValueError(f"{path}: no 'frames' array (has {sorted(arrays)})")
    unknown = sorted(k for k in arrays if k != "frames" and not k.startswith(TOKENS_PREFIX))
    if unknown:
        raise ValueError(f"{path}: unexpected arrays {unknown}; expected 'frames' and '{TOKENS_PREFIX}<backbone>'")
    tokens = {k[len(TOKENS_PREFIX):]: v for k, v in arrays.items() if k.startswith(TOKENS_PREFIX)}
    if not tokens:
        raise ValueError(f"{path}: no '{TOKENS_PREFIX}<backbone>' arrays")
    return arrays["frames"], tokens
