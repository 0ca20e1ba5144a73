"""Previews of clips: an animated GIF per clip and a PNG contact sheet of several clips.

Both show the video with the labels it has drawn on: point tracks as coloured dots (filled when visible, hollow
when occluded, absent when out of frame) and object boxes (object 0, the main object, drawn thicker; dashed while
fully occluded), next to the depth map (inverse depth, bright = near; black where there is no measurement). A field
the clip lacks is simply not drawn.
"""

from __future__ import annotations

import dataclasses
import math
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


#: the contact sheet's largest size in inches, at :data:`SHEET_DPI` (1600 x 4000 pixels); a sheet of many clips
#: shrinks every cell to fit
SHEET_MAX_WIDTH_IN, SHEET_MAX_HEIGHT_IN = 16.0, 40.0
SHEET_DPI = 100
#: widest clip cell (a row of 9 frames) and narrowest (a still image), inches
CELL_MAX_WIDTH_IN, CELL_MIN_WIDTH_IN = 11.0, 2.4
#: mosaic pixels drawn per inch of the sheet (a 192-pixel frame: 2 inches)
MOSAIC_PX_PER_IN = 96.0
TITLE_IN = 0.28  #: room for a clip's title above its cell


@dataclasses.dataclass(frozen=True)
class SheetLayout:
    """Where a contact sheet puts its clips: ``cols`` x ``rows`` cells, each an image of ``image_w`` x ``image_h``
    inches with ``pad_left`` / ``pad_bottom`` for its tick labels and :data:`TITLE_IN` above it, all scaled by
    ``shrink`` (< 1 when the sheet would pass :data:`SHEET_MAX_HEIGHT_IN`)."""

    cols: int
    rows: int
    image_w: float
    image_h: float
    pad_left: float
    pad_bottom: float
    shrink: float

    @property
    def cell_w(self) -> float:
        return self.pad_left + self.image_w + 0.06

    @property
    def cell_h(self) -> float:
        return self.image_h + self.pad_bottom + TITLE_IN

    @property
    def size_in(self) -> tuple[float, float]:
        """(width, height) of the sheet in inches."""
        return self.cols * self.cell_w * self.shrink, self.rows * self.cell_h * self.shrink


def sheet_layout(n: int, mosaic_h: int, mosaic_w: int, ticks: bool) -> SheetLayout:
    """The grid of a contact sheet of ``n`` clip mosaics of ``mosaic_h`` x ``mosaic_w`` pixels: a wide mosaic (a
    row of frames) fills a row of the sheet; narrow ones (still images) share rows, the grid about as wide as tall,
    at most :data:`SHEET_MAX_WIDTH_IN` wide; the whole shrunk to at most :data:`SHEET_MAX_HEIGHT_IN` tall."""
    pad_left, pad_bottom = (0.5, 0.2) if ticks else (0.04, 0.04)
    image_w = min(CELL_MAX_WIDTH_IN - pad_left, max(CELL_MIN_WIDTH_IN, mosaic_w / MOSAIC_PX_PER_IN))
    layout = SheetLayout(1, n, image_w, image_w * mosaic_h / mosaic_w, pad_left, pad_bottom, 1.0)
    cols = max(1, min(n, int(SHEET_MAX_WIDTH_IN // layout.cell_w),
                      round(math.sqrt(n * layout.cell_h / layout.cell_w))))
    rows = math.ceil(n / cols)
    shrink = min(1.0, SHEET_MAX_HEIGHT_IN / (rows * layout.cell_h))
    return dataclasses.replace(layout, cols=cols, rows=rows, shrink=shrink)


def _fit(text: str, width_in: float, fontsize: float) -> str:
    """``text`` cut (with an ellipsis) to about the characters that fit ``width_in`` inches at ``fontsize``."""
    most = max(8, int(width_in * 72 / (0.55 * fontsize)))
    return text if len(text) <= most else text[: most - 1] + "\u2026"


def contact_sheet(clips: Sequence[dict[str, Any]], path: str | Path, max_frames: int = 9, scale: int | None = None,
                  names: dict[str, Sequence[str]] | None = None) -> None:
    """PNG of clips: per clip its annotated frames (at most ``max_frames``, evenly spaced) above its depth maps,
    titled with its labels; ``names`` maps the class fields (``label``, ``action``) to class names (a dataset's
    ``label_spaces``). A clip of several frames fills a row; still images (1-frame clips) share rows in a grid. The
    sheet is at most :data:`SHEET_MAX_WIDTH_IN` x :data:`SHEET_MAX_HEIGHT_IN` inches at :data:`SHEET_DPI`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, h, w = clips[0]["video"].shape[:3]
    scale = scale or auto_scale(h, w)
    times = [int(v) for v in np.unique(np.round(np.linspace(0, t - 1, min(t, max_frames))).astype(int))]
    mosaics = [clip_mosaic(c, times, scale) for c in clips]
    mh, mw = max(m.shape[0] for m in mosaics), mosaics[0].shape[1]
    ticks = len(times) > 1 or any("depth" in c for c in clips)
    lay = sheet_layout(len(clips), mh, mw, ticks)
    sheet_w, sheet_h = lay.cols * lay.cell_w, lay.rows * lay.cell_h  # before the shrink: the axes' fractions
    fig = plt.figure(figsize=lay.size_in)
    fontsize = 8 if ticks else 7
    for c, (clip, mosaic) in enumerate(zip(clips, mosaics, strict=True)):
        row, col = divmod(c, lay.cols)
        ax = fig.add_axes(((col * lay.cell_w + lay.pad_left) / sheet_w,
                           1 - ((row + 1) * lay.cell_h - lay.pad_bottom) / sheet_h,
                           lay.image_w / sheet_w, lay.image_h / sheet_h))
        ax.imshow(mosaic, interpolation="nearest")
        if ticks:
            ax.set_xticks([(j + 0.5) * mw / len(times) for j in range(len(times))], [f"t={ti}" for ti in times],
                          fontsize=6)
            ax.set_yticks([mh * 0.25, mh * 0.75] if "depth" in clip else [mh * 0.5],
                          ["frames", "depth"] if "depth" in clip else ["frames"], fontsize=6)
            ax.tick_params(length=0, pad=1)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        title = _fit(f"clip {c}: " + _title(clip, names), (lay.image_w + lay.pad_left) * lay.shrink, fontsize)
        ax.set_title(title, fontsize=fontsize, loc="left", pad=2)
        for side in ax.spines.values():
            side.set_visible(False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=SHEET_DPI)
    plt.close(fig)


def spread_over_labels(labels: np.ndarray, num: int) -> list[int]:
    """Indices of ``num`` clips taken from the classes in turn: the first clip of every class (in class order),
    then the second of every class that has one, ...; so every class shows when ``num`` is at least the number of
    classes. ``labels``: ``(N,)`` class index of each clip."""
    labels = np.asarray(labels)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    out: list[int] = []
    for k in range(max((len(b) for b in by_class), default=0)):
        out.extend(int(b[k]) for b in by_class if k < len(b))
    return out[:max(num, 0)]
