"""The motion experiment of one backbone (the paper's Figure 4, protocol in :mod:`diffprobe.features.motion`): for
the first N clips of a dataset's test role, K variants that share frame 0 and differ in which region plays, their
first-frame tokens at one block and noise level, a figure per clip and the motion ratio, written with the run's full
config to ``OUT/motion.json``. `diffprobe motion` and the study's motion stage both run :func:`run_motion`."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from diffprobe.backbones.registry import ResolvedBackbone
from diffprobe.config import Config
from diffprobe.data.splits import RoleData
from diffprobe.errors import InputError
from diffprobe.features.motion import (
    DEFAULT_LAYOUT,
    MotionScore,
    default_regions,
    first_frame_tokens,
    motion_ratio,
    motion_variants,
    token_regions,
)
from diffprobe.study.figures import png_bytes
from diffprobe.study.pca import pca_rgb, upsample_nearest
from diffprobe.utils.io import atomic_write_bytes, atomic_write_json, read_json

RESULTS_FILE = "motion.json"
FIGURE_NAME = "fig_motion_clip-{index:03d}.png"


@dataclass(frozen=True)
class MotionConfig(Config):
    """One `diffprobe motion` run (saved in ``motion.json``)."""

    backbone: str = ""  #: the backbone spec
    dataset: str = ""  #: the dataset spec the clips come from (the test role of it)
    block: int = 0
    t: float = 0.0
    noise_seed: int = 0
    clips: int = 4  #: the first this many clips of the test role
    regions: str = DEFAULT_LAYOUT  #: the region layout (``quadrants``: K = 4, ``thirds``: K = 3)


def _pc1(tokens: np.ndarray) -> np.ndarray:
    """(K, H_f, W_f, C) -> (K, H_f, W_f) uint8: the first principal component, one PCA fitted over all K variants."""
    if tokens.shape[-1] < 3:
        raise InputError(f"motion figure: the tokens have {tokens.shape[-1]} channel(s); the PCA needs at least 3")
    return np.stack([a[0, :, :, 0] for a in pca_rgb([v[None] for v in tokens])])


def motion_figure(variants: np.ndarray, regions: np.ndarray, names: Sequence[str], tokens: np.ndarray,
                  score: MotionScore, title: str) -> Figure:
    """One column per variant; rows: frame 0 with the playing region bright (the rest dimmed), the variant's last
    frame, the first principal component of its first-frame tokens (PCA fitted jointly over the variants) and each
    token's change (distance to its mean over the variants, one colour scale for all)."""
    k, n_t, h, w, _ = variants.shape
    pc1 = _pc1(tokens)  # (K, H_f, W_f)
    top = float(score.change.max()) or 1.0
    cell = 1.9
    fig = Figure(figsize=(1.2 + cell * k, 0.6 + cell * 4 * h / w), dpi=100, layout="constrained")
    axes = fig.subplots(4, k, squeeze=False)
    image = None
    for j in range(k):
        shown = variants[j, 0].astype(np.float32)  # (H, W, 3)
        shown[~regions[j]] *= 0.35
        axes[0, j].imshow(shown.astype(np.uint8))
        axes[0, j].contour(regions[j].astype(float), levels=[0.5], colors="#FFD700", linewidths=1.2)
        axes[0, j].set_title(f"plays: {names[j]}", fontsize=9)
        axes[1, j].imshow(variants[j, -1])
        axes[2, j].imshow(upsample_nearest(pc1[j], h, w), cmap="inferno", vmin=0, vmax=255)
        image = axes[3, j].imshow(upsample_nearest(score.change[j], h, w), cmap="viridis", vmin=0.0, vmax=top)
    for r, label in enumerate(("frame 0\n(region played)", f"frame {n_t - 1}", "first-frame\ntokens PC 1",
                               "token change\n‖x − mean‖")):
        axes[r, 0].set_ylabel(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes[3]), fraction=0.03, pad=0.02)
    wrapped = textwrap.fill(title, width=int(11 * k), break_long_words=True)  # long paths stay within the panels
    fig.suptitle(f"{wrapped}\nmotion ratio {score.ratio:.3f} (inside {score.inside:.3g} / outside "
                 f"{score.outside:.3g})", fontsize=10)
    return fig


def held_config(out_dir: Path) -> dict[str, Any] | None:
    """The config of the motion run whose results ``out_dir`` holds (None: no results there)."""
    path = out_dir / RESULTS_FILE
    return read_json(path).get("config") if path.is_file() else None


def run_motion(resolved: ResolvedBackbone, role: RoleData, config: MotionConfig, out_dir: Path,
               echo: Callable[[str], Any] = print) -> float:
    """Run ``config`` on ``resolved`` with the first ``config.clips`` clips of ``role``; write a figure per clip and
    ``motion.json`` (config, per-clip ratios, the mean) into ``out_dir``; return the mean ratio. A folder holding
    another config's results is refused (a folder of results is the user's: only the same run may write it again)."""
    clips = role.clips
    if config.clips > len(clips):
        raise InputError(f"motion: {config.clips} clips asked (--clips, or a study's motion_clips); the test role of "
                         f"{config.dataset!r} ({role.source}) has {len(clips)} clips")
    held = held_config(out_dir)
    if held is not None and held != config.to_dict():
        raise InputError(f"{out_dir / RESULTS_FILE}: holds a motion run of another config ({held}); give another "
                         "folder or delete that one")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, names = [], ()
    for i in range(config.clips):
        video = np.asarray(clips[i]["video"])  # (T, H, W, 3) uint8
        masks, names = default_regions(video.shape[1], video.shape[2], config.regions)  # (K, H, W)
        variants = motion_variants(video, masks)  # (K, T, H, W, 3)
        tokens = first_frame_tokens(resolved.backbone, variants, config.block, config.t, config.noise_seed,
                                    clip_id=i)  # (K, h, w, C)
        score = motion_ratio(tokens, token_regions(masks, tokens.shape[1], tokens.shape[2]))
        figure = out_dir / FIGURE_NAME.format(index=i)
        title = f"{config.backbone} · block {config.block} · t {config.t:g} · {clips.describe(i)}"
        atomic_write_bytes(figure, png_bytes(motion_figure(variants, masks, names, tokens, score, title)))
        rows.append({"index": i, "clip": clips.describe(i), "ratio": score.ratio, "inside": score.inside,
                     "outside": score.outside, "tokens": list(tokens.shape), "figure": figure.name})
        echo(f"clip {i} ({clips.describe(i)}): motion ratio {score.ratio:.4f} (inside {score.inside:.4g}, "
             f"outside {score.outside:.4g})")
    mean = float(np.mean([r["ratio"] for r in rows]))
    atomic_write_json(out_dir / RESULTS_FILE, {
        "config": config.to_dict(), "backbone_identity": resolved.backbone.identity, "mode": resolved.mode,
        "dataset_identity": role.dataset.identity, "clips_source": role.source, "region_names": list(names),
        "clips": rows, "mean_ratio": mean})
    return mean
