"""Previews of clips: an animated GIF per clip and a PNG contact sheet of several clips.

Both show the video with the labels it has drawn on: point tracks as coloured dots (filled when visible, hollow
when occluded, absent when out of frame) and object boxes (object 0, the main object, drawn thicker; dashed while
fully occluded), next to the depth map (inverse depth, bright = near; black where there is no measurement). A field
the clip lacks is simply not drawn.
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

    valid = np.isfinite(depth) & (depth > 0)
    inv = np.where(valid, 1.0 / np.where(valid, depth, 1.0), np.nan)
    lo, hi = (float(np.nanmin(inv)), float(np.nanmax(inv))) if valid.any() else (0.0, 1.0)
    norm = np.nan_to_num((inv - lo) / max(hi - lo, 1e-12), nan=0.0)
    rgb = (np.asarray(matplotlib.colormaps["magma"](norm))[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def auto_scale(height: int, width: int) -> int:
    """The integer upscaling that shows a frame about 192 pixels wide (6 for Probe World's 32-pixel frames)."""
    return max(1, 192 // max(height, width))


def _in_frame(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    return (xy[..., 0] >= 0) & (xy[..., 0] < width) & (xy[..., 1] >= 0) & (xy[..., 1] < height)


def _annotated_frame(clip: dict[str, Any], t: int, scale: int) -> Image.Image:
    """Frame t, upscaled ``scale`` times, with tracks and boxes drawn on."""
    frame = clip["video"][t]
    h, w = frame.shape[:2]
    img = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    tracks = clip["tracks"] if "tracks" in clip else np.zeros((0, t + 1, 2), np.float32)
    visible = clip["visible"] if "visible" in clip else np.zeros(tracks.shape[:2], bool)
    cols = _track_colours(len(tracks))
    r = max(1.0, scale * 0.3, 0.012 * w * scale)  # dots stay visible on large frames
    for n, (xy, vis) in enumerate(zip(tracks[:, t], visible[:, t], strict=True)):
        if not _in_frame(xy, h, w):
            continue
        x, y = xy * scale
        c = tuple(int(v) for v in cols[n])
        draw.ellipse([x - r, y - r, x + r, y + r], fill=c if vis else None, outline=c, width=1)
    for k in range(len(clip["boxes"]) if "boxes" in clip else 0):
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


def save_gif(clip: dict[str, Any], path: str | Path, scale: int | None = None, frame_ms: int = 160) -> None:
    """Animated GIF of one clip: annotated video | raw video | depth, side by side, looping; written atomically
    (``scale``: integer upscaling, by default :func:`auto_scale`)."""
    t, h, w = clip["video"].shape[:3]
    scale = scale or auto_scale(h, w)
    depth = depth_image(clip["depth"]) if "depth" in clip else np.zeros((t, h, w, 3), np.uint8)
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
    """The clip's class fields by name (``names``: field -> class names), its camera path and object count."""
    parts = []
    for field in ("label", "action"):
        if field in clip:
            value = int(clip[field])
            parts.append(str(names[field][value]) if names and field in names else f"{field} {value}")
    if "camera_path" in clip:
        parts.append(f"camera {clip['camera_path']}")
    if "boxes" in clip:
        parts.append(f"{len(clip['boxes'])} object(s)")
    if "tracks" in clip:
        parts.append(f"{len(clip['tracks'])} track(s)")
    if "camera" in clip:
        moved = np.linalg.norm(clip["camera"][-1, :3, 3] - clip["camera"][0, :3, 3])
        parts.append(f"camera moves {moved:.2f} (translation of world-to-camera)")
    return " / ".join(parts) or "unlabelled"


def clip_mosaic(clip: dict[str, Any], times: Sequence[int], scale: int = 6) -> np.ndarray:
    """(2 H s + gap, n W s + gaps, 3) uint8: annotated frames ``times`` above their depth maps (without a depth
    field: (H s, n W s + gaps, 3), the frames alone)."""
    _, h, w = clip["video"].shape[:3]
    gap = max(1, scale // 2)
    rows = 2 if "depth" in clip else 1
    out = np.full((rows * h * scale + (rows - 1) * gap, len(times) * (w * scale + gap) - gap, 3), 255, dtype=np.uint8)
    depth = depth_image(clip["depth"]) if "depth" in clip else None
    for j, ti in enumerate(times):
        x = j * (w * scale + gap)
        out[: h * scale, x: x + w * scale] = np.asarray(_annotated_frame(clip, int(ti), scale))
        if depth is not None:
            out[h * scale + gap:, x: x + w * scale] = np.repeat(np.repeat(depth[ti], scale, 0), scale, 1)
    return out


def contact_sheet(clips: Sequence[dict[str, Any]], path: str | Path, max_frames: int = 9, scale: int | None = None,
                  names: dict[str, Sequence[str]] | None = None) -> None:
    """PNG of clips: per clip one row of annotated frames above one row of depth maps (at most ``max_frames``
    evenly spaced frames), titled with its labels; ``names`` maps the class fields (``label``, ``action``) to
    class names (a dataset's ``label_spaces``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, h, w = clips[0]["video"].shape[:3]
    scale = scale or auto_scale(h, w)
    times = [int(v) for v in np.unique(np.round(np.linspace(0, t - 1, min(t, max_frames))).astype(int))]
    mosaics = [clip_mosaic(c, times, scale) for c in clips]
    mh, mw = max(m.shape[0] for m in mosaics), mosaics[0].shape[1]
    width_in = 11.0
    row_in = width_in * mh / mw + 0.28
    fig, axes = plt.subplots(len(clips), 1, figsize=(width_in, row_in * len(clips)), squeeze=False)
    for c, (clip, mosaic) in enumerate(zip(clips, mosaics, strict=True)):
        ax = axes[c, 0]
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_xticks([(j + 0.5) * mw / len(times) for j in range(len(times))], [f"t={ti}" for ti in times],
                      fontsize=6)
        ax.tick_params(length=0, pad=1)
        ax.set_yticks([mh * 0.25, mh * 0.75] if "depth" in clip else [mh * 0.5],
                      ["frames", "depth"] if "depth" in clip else ["frames"], fontsize=6)
        ax.set_title(f"clip {c}: " + _title(clip, names), fontsize=8, loc="left", pad=2)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.subplots_adjust(left=0.05, right=0.995, top=1 - 0.2 / (row_in * len(clips)), bottom=0.01, hspace=0.16)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
