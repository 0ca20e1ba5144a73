"""Previews of clips: an animated GIF per clip and a PNG contact sheet of several clips.

Both show the video with its labels drawn on: point tracks as coloured dots (filled when visible, hollow when
occluded, absent when out of frame) and object boxes (object 0, the main object, drawn thicker; dashed while fully
occluded), next to the depth map (inverse depth, bright = near).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from diffprobe.utils.io import atomic_path

BOX_COLOURS = [(255, 64, 64), (64, 160, 255), (255, 220, 0), (0, 230, 120), (255, 128, 255), (255, 160, 64),
               (160, 255, 255), (200, 200, 200)]


def _track_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours for n tracks."""
    import matplotlib

    return (np.asarray(matplotlib.colormaps["hsv"](np.arange(n) / max(n, 1)))[:, :3] * 255).astype(np.uint8)


def depth_image(depth: np.ndarray) -> np.ndarray:
    """(T, H, W) depth -> (T, H, W, 3) uint8 colour map of inverse depth, one scale for the whole clip."""
    import matplotlib

    inv = 1.0 / np.maximum(depth, 1e-6)
    lo, hi = float(inv.min()), float(inv.max())
    norm = (inv - lo) / max(hi - lo, 1e-12)
    return (np.asarray(matplotlib.colormaps["magma"](norm))[..., :3] * 255).astype(np.uint8)


def _in_frame(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    return (xy[..., 0] >= 0) & (xy[..., 0] < width) & (xy[..., 1] >= 0) & (xy[..., 1] < height)


def _annotated_frame(clip: dict[str, Any], t: int, scale: int) -> Image.Image:
    """Frame t, upscaled ``scale`` times, with tracks and boxes drawn on."""
    frame = clip["video"][t]
    h, w = frame.shape[:2]
    img = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    cols = _track_colours(len(clip["tracks"]))
    r = max(1.0, scale * 0.3)
    for n, (xy, vis) in enumerate(zip(clip["tracks"][:, t], clip["visible"][:, t], strict=True)):
        if not _in_frame(xy, h, w):
            continue
        x, y = xy * scale
        c = tuple(int(v) for v in cols[n])
        draw.ellipse([x - r, y - r, x + r, y + r], fill=c if vis else None, outline=c, width=1)
    for k in range(len(clip["boxes"])):
        x0, y0, x1, y1 = clip["boxes"][k, t] * scale
        if x1 <= x0:
            continue
        colour = BOX_COLOURS[k % len(BOX_COLOURS)]
        width = 2 if k == 0 else 1
        if clip["box_visible"][k, t]:
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
        else:  # fully occluded: dotted outline
            for px in range(int(x0), int(x1), 4):
                draw.point([(px, y0), (px, y1 - 1)], fill=colour)
            for py in range(int(y0), int(y1), 4):
                draw.point([(x0, py), (x1 - 1, py)], fill=colour)
    return img


def save_gif(clip: dict[str, Any], path: str | Path, scale: int = 6, frame_ms: int = 160) -> None:
    """Animated GIF of one clip: annotated video | raw video | depth, side by side, looping; written atomically."""
    t, h, w = clip["video"].shape[:3]
    depth = depth_image(clip["depth"])
    frames = []
    for i in range(t):
        panel = Image.new("RGB", (3 * w * scale + 2 * scale, h * scale), (255, 255, 255))
        panel.paste(_annotated_frame(clip, i, scale), (0, 0))
        panel.paste(Image.fromarray(clip["video"][i]).resize((w * scale, h * scale), Image.NEAREST),
                    (w * scale + scale, 0))
        panel.paste(Image.fromarray(depth[i]).resize((w * scale, h * scale), Image.NEAREST),
                    (2 * w * scale + 2 * scale, 0))
        frames.append(panel)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)


def _title(clip: dict[str, Any], names: dict[str, Sequence[str]] | None) -> str:
    label, action = int(clip["label"]), int(clip["action"])
    text = f"{names['categories'][label]} / {names['motions'][action]}" if names else f"label {label} / action {action}"
    if "camera_path" in clip:
        text += f" / camera {clip['camera_path']}"
    return text + f" / {len(clip['boxes'])} object(s)"


def clip_mosaic(clip: dict[str, Any], times: Sequence[int], scale: int = 6) -> np.ndarray:
    """(2 H s + gap, n W s + gaps, 3) uint8: annotated frames ``times`` above their depth maps."""
    _, h, w = clip["video"].shape[:3]
    gap = max(1, scale // 2)
    depth = depth_image(clip["depth"])
    out = np.full((2 * h * scale + gap, len(times) * (w * scale + gap) - gap, 3), 255, dtype=np.uint8)
    for j, ti in enumerate(times):
        x = j * (w * scale + gap)
        out[: h * scale, x: x + w * scale] = np.asarray(_annotated_frame(clip, int(ti), scale))
        out[h * scale + gap:, x: x + w * scale] = np.repeat(np.repeat(depth[ti], scale, 0), scale, 1)
    return out


def contact_sheet(clips: Sequence[dict[str, Any]], path: str | Path, max_frames: int = 9, scale: int = 6,
                  names: dict[str, Sequence[str]] | None = None) -> None:
    """PNG of clips: per clip one row of annotated frames above one row of depth maps (at most ``max_frames``
    evenly spaced frames), titled with its labels; ``names`` maps ``categories`` / ``motions`` to class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = clips[0]["video"].shape[0]
    times = [int(v) for v in np.unique(np.round(np.linspace(0, t - 1, min(t, max_frames))).astype(int))]
    mosaics = [clip_mosaic(c, times, scale) for c in clips]
    mh, mw = mosaics[0].shape[:2]
    width_in = 11.0
    row_in = width_in * mh / mw + 0.28
    fig, axes = plt.subplots(len(clips), 1, figsize=(width_in, row_in * len(clips)), squeeze=False)
    for c, (clip, mosaic) in enumerate(zip(clips, mosaics, strict=True)):
        ax = axes[c, 0]
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_xticks([(j + 0.5) * mw / len(times) for j in range(len(times))], [f"t={ti}" for ti in times],
                      fontsize=6)
        ax.tick_params(length=0, pad=1)
        ax.set_yticks([mh * 0.25, mh * 0.75], ["frames", "depth"], fontsize=6)
        ax.set_title(f"clip {c}: " + _title(clip, names), fontsize=8, loc="left", pad=2)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.subplots_adjust(left=0.05, right=0.995, top=1 - 0.2 / (row_in * len(clips)), bottom=0.01, hspace=0.16)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
