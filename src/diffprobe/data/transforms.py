"""Resizing, cropping and frame sampling, applied identically to pixels and labels.

Coordinates follow TAP-Vid: pixel ``i`` spans ``[i, i + 1)``, so resizing a frame by a factor ``s`` maps a continuous
coordinate ``x`` to ``s * x`` exactly (Pillow's resampling samples pixel centres at ``+0.5``), and a crop at offset
``o`` maps it to ``x - o``. A :class:`Geometry` holds that affine map from a source frame to the output frame;
every label (points, boxes, depth maps, masks, intrinsics) goes through the same map as the pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from diffprobe.data.dataset import DatasetError


@dataclasses.dataclass(frozen=True)
class Geometry:
    """``x_out = sx * x_src - ox``, ``y_out = sy * y_src - oy``: resize ``(src_h, src_w)`` to ``(rh, rw)``, then
    crop ``(height, width)`` at ``(oy, ox)``."""

    src_h: int
    src_w: int
    rh: int  # resized height, before the crop
    rw: int
    oy: int
    ox: int
    height: int
    width: int

    @property
    def sx(self) -> float:
        return self.rw / self.src_w

    @property
    def sy(self) -> float:
        return self.rh / self.src_h


def plan_geometry(src_h: int, src_w: int, size: int, mode: str) -> Geometry:
    """The map of a ``src_h x src_w`` frame to a ``size x size`` output: ``crop`` (short side to ``size``, centre
    square), ``stretch`` (each side to ``size``), or ``none`` (identity; ``size`` is ignored)."""
    if mode == "none":
        return Geometry(src_h, src_w, src_h, src_w, 0, 0, src_h, src_w)
    if mode == "stretch":
        return Geometry(src_h, src_w, size, size, 0, 0, size, size)
    if mode == "crop":
        scale = size / min(src_h, src_w)
        rh, rw = max(size, round(src_h * scale)), max(size, round(src_w * scale))
        return Geometry(src_h, src_w, rh, rw, (rh - size) // 2, (rw - size) // 2, size, size)
    raise ValueError(f"unknown resize mode {mode!r}; known: crop, stretch, none")


def _resize_crop(frame: np.ndarray, g: Geometry, resample: int) -> np.ndarray:
    img = Image.fromarray(frame)
    if (g.rh, g.rw) != (g.src_h, g.src_w):
        img = img.resize((g.rw, g.rh), resample)
    if (g.oy, g.ox, g.height, g.width) != (0, 0, g.rh, g.rw):
        img = img.crop((g.ox, g.oy, g.ox + g.width, g.oy + g.height))
    return np.asarray(img)


def check_frame(shape: tuple[int, ...], g: Geometry, where: str) -> None:
    if tuple(shape[:2]) != (g.src_h, g.src_w):
        raise DatasetError(f"{where}: frame of {shape[0]}x{shape[1]} pixels, expected {g.src_h}x{g.src_w} "
                           f"(the size of the clip's first frame)")


def apply_video(frames: np.ndarray, g: Geometry, where: str = "video") -> np.ndarray:
    """uint8 ``(T, H0, W0, 3)`` -> ``(T, height, width, 3)`` (bilinear, antialiased when shrinking)."""
    for f in frames:
        check_frame(f.shape, g, where)
    out = np.stack([_resize_crop(f, g, Image.BILINEAR) for f in frames])
    return np.ascontiguousarray(out, dtype=np.uint8)


def apply_depth(depth: np.ndarray, g: Geometry, where: str = "depth") -> np.ndarray:
    """float ``(T, H0, W0)`` depth -> ``(T, height, width)`` float32, nearest-neighbour (no depth is invented at an
    edge between a near and a far surface; 0 = no measurement stays 0)."""
    out = []
    for d in depth:
        check_frame(d.shape, g, where)
        out.append(_resize_crop(np.asarray(d, np.float32), g, Image.NEAREST))
    return np.stack(out).astype(np.float32)


def apply_mask(mask: np.ndarray, g: Geometry, where: str = "mask") -> np.ndarray:
    """Integer label maps ``(T, H0, W0)`` -> ``(T, height, width)``, nearest-neighbour."""
    out = []
    for m in mask:
        check_frame(m.shape, g, where)
        out.append(_resize_crop(np.asarray(m), g, Image.NEAREST))
    return np.stack(out)


def apply_points(xy: np.ndarray, g: Geometry) -> np.ndarray:
    """``(..., 2)`` (x, y) pixels of the source frame -> pixels of the output frame."""
    scale = np.array([g.sx, g.sy], np.float64)
    offset = np.array([g.ox, g.oy], np.float64)
    return (np.asarray(xy, np.float64) * scale - offset).astype(np.float32)


def in_frame(xy: np.ndarray, g: Geometry) -> np.ndarray:
    """``(...,)`` bool: the points lie inside the output frame."""
    return (xy[..., 0] >= 0) & (xy[..., 0] < g.width) & (xy[..., 1] >= 0) & (xy[..., 1] < g.height)


def apply_boxes(boxes: np.ndarray, visible: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(K, T, 4)`` (x0, y0, x1, y1) boxes -> output pixels, clipped to the frame; a box left with no area is not
    visible."""
    b = np.asarray(boxes, np.float64)
    scaled = np.concatenate([apply_points(b[..., :2], g), apply_points(b[..., 2:], g)], axis=-1).astype(np.float64)
    scaled[..., [0, 2]] = scaled[..., [0, 2]].clip(0, g.width)
    scaled[..., [1, 3]] = scaled[..., [1, 3]].clip(0, g.height)
    alive = (scaled[..., 2] > scaled[..., 0]) & (scaled[..., 3] > scaled[..., 1])
    return scaled.astype(np.float32), np.asarray(visible, bool) & alive


def apply_intrinsics(k: np.ndarray, g: Geometry) -> np.ndarray:
    """``(3, 3)`` pinhole intrinsics in source pixels -> output pixels (focal lengths scale, the principal point
    moves with the crop)."""
    out = np.asarray(k, np.float64).copy()
    out[0] *= g.sx
    out[1] *= g.sy
    out[0, 2] -= g.ox
    out[1, 2] -= g.oy
    out[2] = (0.0, 0.0, 1.0)
    return out.astype(np.float32)


def frame_indices(length: int, frames: int, stride: int, start: str = "first") -> np.ndarray | None:
    """The ``frames`` source frames ``stride`` apart in a video of ``length`` frames, from its first frame or centred;
    ``None`` if the video is too short."""
    span = (frames - 1) * stride + 1
    if length < span:
        return None
    first = 0 if start == "first" else (length - span) // 2
    return first + stride * np.arange(frames)


def windows(length: int, frames: int, stride: int) -> list[np.ndarray]:
    """Every non-overlapping window of ``frames`` frames ``stride`` apart in a video of ``length`` frames."""
    span = (frames - 1) * stride + 1
    return [s + stride * np.arange(frames) for s in range(0, length - span + 1, span)]


def too_short(length: int, frames: int, stride: int) -> str:
    """The problem of a video of ``length`` frames that holds no clip of ``frames`` frames ``stride`` apart, in
    words (after the file's name in a message): "only 5 frame(s), needs 9 for frames=5 at stride=2"."""
    return f"only {length} frame(s), needs {(frames - 1) * stride + 1} for frames={frames} at stride={stride}"


#: how far outside [0, 1] a normalised coordinate may lie (a point annotated on the frame's edge), in frame fractions
UNIT_TOLERANCE = 0.01


def unit_range_problem(values: np.ndarray, name: str) -> str | None:
    """The problem of coordinates that should be normalised to [0, 1] of the frame (TAP-Vid's points, RealEstate10K's
    principal points) but are not finite or lie outside it (beyond :data:`UNIT_TOLERANCE`), in words: "points look
    like pixels: max 212.0, expected [0, 1]"; ``None`` when they are fine."""
    v = np.asarray(values, np.float64)
    if not v.size:
        return None
    if not np.isfinite(v).all():
        return f"{name} are not all finite (NaN or infinite), expected [0, 1]"
    lo, hi = float(v.min()), float(v.max())
    if lo >= -UNIT_TOLERANCE and hi <= 1 + UNIT_TOLERANCE:
        return None
    if hi > 2:
        return f"{name} look like pixels: max {hi:.1f}, expected [0, 1]"
    return f"{name} lie outside the frame: {f'max {hi:.3f}' if hi > 1 + UNIT_TOLERANCE else f'min {lo:.3f}'}, " \
           f"expected [0, 1]"
