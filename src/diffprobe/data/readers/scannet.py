"""ScanNet v2 RGB-D scenes as exported by ScanNet's SensReader: video, metric depth, camera poses, intrinsics.

Spec ``scannet:DIR[@frames=8,stride=10,size=128,resize=crop,windows=all,max_clips_per_scene=0,...]``. ``DIR`` holds
one folder per scene, each as written by ``reader.py --export_color_images --export_depth_images --export_poses
--export_intrinsics``::

    DIR/
      scannetv2_train.txt           optional split files: scene names, one a line
      scannetv2_val.txt             (without any of them: one split ``all`` over every scene folder)
      scannetv2_test.txt
      scene0000_00/
        color/0.jpg 1.jpg ...       colour frames (1296x968 in ScanNet)
        depth/0.png 1.png ...       uint16 depth in millimetres (640x480), 0 = no measurement
        pose/0.txt 1.txt ...        4x4 camera-to-world; -inf / nan where tracking failed
        intrinsic/intrinsic_depth.txt   4x4, top-left 3x3 = K of the depth camera
        intrinsic/intrinsic_color.txt   (not read: see below)

Frames are the ``color/*.jpg`` files, ordered by their integer stem (``2.jpg`` before ``10.jpg``); a scene exported
with a frame skip simply has fewer frames, and ``stride`` counts exported frames.

One pixel grid: the depth camera's. Every colour frame is resized (bilinear, each axis by its own factor) to the
depth resolution and the depth intrinsics ``intrinsic_depth.txt`` are used for both: the usual practice for RGB-D
work on ScanNet, which treats the two calibrated streams as one camera (the colour intrinsics scaled to 640x480 agree
with the depth intrinsics to about a pixel; the small offset between the two sensors is ignored). One
:class:`~diffprobe.data.transforms.Geometry`, planned on the depth grid, then maps video (one bilinear resize straight
from the colour resolution), depth (nearest: no depth is blended across an edge) and intrinsics.

Fields: ``video`` (colour), ``depth`` (float32 metres = PNG / 1000, z-depth in the camera frame; 0 where there is no
measurement), ``camera`` (world-to-camera = the inverse of the pose file; OpenCV axes: x right, y down, z forward),
``intrinsics`` (the depth K in output pixels). Clips are windows of ``frames`` frames ``stride`` apart, tiled without
overlap over each scene (``windows=all``) or one per scene (``windows=first``: the first usable window, or with
``start=center`` the one nearest the scene's centre); ``max_clips_per_scene`` keeps that many, spread evenly. A window
with a frame whose pose is not finite is not a clip: it is left out of the index (counted in ``untracked``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffprobe.config import ConfigError
from diffprobe.data.dataset import (
    Clip,
    ClipSequence,
    DatasetError,
    FileDataset,
    IndexedClips,
    VideoOptions,
    dataset_identity,
    fingerprint,
    require_files,
)
from diffprobe.data.decode import read_image, read_png_map
from diffprobe.data.transforms import (
    Geometry,
    apply_depth,
    apply_intrinsics,
    apply_video,
    plan_geometry,
    too_short,
    windows,
)
from diffprobe.spec import DatasetSpec

KIND = "scannet"
#: split name -> the official split file in DIR
SPLIT_FILES: dict[str, str] = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt",
                               "test": "scannetv2_test.txt"}
DEPTH_SCALE = 1000.0  #: depth PNG units per metre


@dataclasses.dataclass(frozen=True)
class ScanNetOptions(VideoOptions):
    """Options of ``scannet:DIR@...``."""

    frames: int = 8
    stride: int = 10
    windows: Literal["all", "first"] = "all"  #: every non-overlapping window of a scene, or one per scene
    max_clips_per_scene: int = 0  #: keep at most this many windows per scene, spread evenly (0 = no cap)

    def validate(self) -> None:
        super().validate()
        if self.max_clips_per_scene < 0:
            raise ConfigError(f"{type(self).__name__}.max_clips_per_scene: must be >= 0, got "
                              f"{self.max_clips_per_scene}")


# ---- windows (shared with the RealEstate10K reader) ----------------------------------------------------------------
def tile_windows(length: int, frames: int, stride: int, start: str) -> list[np.ndarray]:
    """Non-overlapping windows of ``frames`` positions ``stride`` apart in a sequence of ``length``: from position 0
    (``start=first``), or shifted so that the tiling contains the centred window (``start=center``)."""
    span = (frames - 1) * stride + 1
    if length < span:
        return []
    offset = 0 if start == "first" else ((length - span) // 2) % span
    return [offset + w for w in windows(length - offset, frames, stride)]


def select_windows(cands: Sequence[np.ndarray], length: int, mode: str, start: str, cap: int = 0) -> list[np.ndarray]:
    """``mode=all``: every candidate (at most ``cap``, spread evenly, when ``cap > 0``); ``mode=first``: the first
    candidate, or with ``start=center`` the one whose centre is nearest the sequence's centre."""
    cands = list(cands)
    if not cands:
        return []
    if mode == "first":
        if start == "center":
            return [min(cands, key=lambda w: abs((w[0] + w[-1]) / 2 - (length - 1) / 2))]
        return cands[:1]
    if cap and len(cands) > cap:
        keep = np.unique(np.linspace(0, len(cands) - 1, cap).round().astype(int))
        return [cands[i] for i in keep]
    return cands


# ---- files ----------------------------------------------------------------------------------------------------------
def read_matrix4(path: Path, what: str) -> np.ndarray:
    """A 4x4 whitespace-separated text matrix (float64; ``-inf`` / ``nan`` parse as such)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read {what}: {e}") from e
    try:
        rows = [[float(v) for v in line.split()] for line in text.splitlines() if line.strip()]
    except ValueError as e:
        raise DatasetError(f"{path}: {what} is not a matrix of numbers: {e}") from e
    if len(rows) != 4 or any(len(r) != 4 for r in rows):
        raise DatasetError(f"{path}: {what} must be a 4x4 matrix, got {len(rows)} row(s) of "
                           f"{sorted({len(r) for r in rows})} value(s)")
    return np.array(rows, np.float64)


def read_depth_intrinsics(path: Path) -> np.ndarray:
    """``(3, 3)`` K from ``intrinsic_depth.txt`` (the top-left of its 4x4)."""
    m = read_matrix4(path, "intrinsics")
    k = m[:3, :3]
    if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0 or not np.allclose(k[2], (0, 0, 1)):
        raise DatasetError(f"{path}: not a pinhole K (top-left 3x3 {k.tolist()})")
    return k


def read_depth_png(path: Path) -> np.ndarray:
    """``(H, W)`` float32 metres of a 16-bit millimetre PNG (0 = no measurement)."""
    raw = read_png_map(path)
    if raw.dtype != np.uint16:
        raise DatasetError(f"{path}: depth PNG must be 16-bit (millimetres), got {raw.dtype} pixels")
    return raw.astype(np.float32) / np.float32(DEPTH_SCALE)


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from an image's header (nothing decoded)."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: cannot read image header: {e}") from e


def same_size(images: list[np.ndarray], paths: Sequence[Path]) -> list[np.ndarray]:
    """``images`` (decoded from ``paths``), checked to share the first one's height and width."""
    for img, path in zip(images, paths, strict=True):
        if img.shape[:2] != images[0].shape[:2]:
            raise DatasetError(f"{path}: {img.shape[0]}x{img.shape[1]} pixels, but {paths[0].name} of the same clip "
                               f"has {images[0].shape[0]}x{images[0].shape[1]}")
    return images


def scene_frames(scene: Path) -> list[int]:
    """The frame numbers of a scene: the integer stems of ``color/*.jpg``, in numeric order."""
    color = scene / "color"
    require_files(color)
    numbers = []
    for p in color.glob("*.jpg"):
        if not p.stem.isdigit():
            raise DatasetError(f"{p}: colour frame name is not a frame number")
        numbers.append(int(p.stem))
    if not numbers:
        raise DatasetError(f"{color}: no colour frames (*.jpg)")
    return sorted(numbers)


def lost_tracking(pose: np.ndarray | DatasetError) -> bool:
    """A pose that was read and holds ``-inf`` / ``nan`` (SensReader's mark of a frame where tracking failed)."""
    return isinstance(pose, np.ndarray) and not np.isfinite(pose).all()


@dataclasses.dataclass(frozen=True, eq=False)
class ScanNetEntry:
    """One clip: a window of frames of one scene."""

    scene: Path
    frames: tuple[int, ...]  # frame numbers (file stems)
    pose: np.ndarray  # (T, 4, 4) camera-to-world, finite
    k: np.ndarray  # (3, 3) depth intrinsics, depth pixels

    def color(self, i: int) -> Path:
        return self.scene / "color" / f"{i}.jpg"

    def depth(self, i: int) -> Path:
        return self.scene / "depth" / f"{i}.png"

    def files(self) -> list[Path]:
        return [f for i in self.frames for f in (self.color(i), self.depth(i), self.scene / "pose" / f"{i}.txt")]

    def __str__(self) -> str:
        return f"{self.scene} frames {list(self.frames)}"


def one_size(opts: VideoOptions, sizes: dict[Path, tuple[int, int]], what: str,
             where: Callable[[Path], Path] = lambda p: p) -> tuple[int, int]:
    """The output frame size: ``size`` square, or with ``resize=none`` the one source size ``sizes`` (folder ->
    (H, W) of its first frame) all share; a second size is an error naming both folders (``where`` of each)."""
    if opts.resize != "none":
        return opts.size, opts.size
    distinct = set(sizes.values())
    if len(distinct) > 1:
        first = next(iter(sizes.items()))
        other = next((p, hw) for p, hw in sizes.items() if hw != first[1])
        raise DatasetError(f"{where(other[0])}: {what} of {other[1][0]}x{other[1][1]} pixels, but "
                           f"{where(first[0])} has {first[1][0]}x{first[1][1]}; resize=none needs one size")
    return distinct.pop() if distinct else (0, 0)


class ScanNetDataset(FileDataset):
    """ScanNet scenes as clips with ``video``, ``depth``, ``camera`` and ``intrinsics`` (see the module docstring)."""

    kind = KIND

    def __init__(self, root: str | Path, opts: ScanNetOptions, spec: str) -> None:
        super().__init__(root, opts, spec)
        self.fields = frozenset({"video", "depth", "camera", "intrinsics"})
        self.label_spaces = {}
        self.frames = opts.frames
        #: split -> windows left out because a frame's pose is not finite (tracking lost)
        self.untracked: dict[str, int] = {}
        self._files: set[Path] = set()
        self._sizes: dict[Path, tuple[int, int]] = {}  # depth (H, W) of the first frame of each scene (resize=none)
        scenes = self._split_scenes()
        self.splits = tuple(scenes)
        self._entries = {name: self._index_split(name, names) for name, names in scenes.items()}
        self.height, self.width = self._output_size()
        self.identity = dataset_identity(KIND, self.root, opts, fingerprint(self._files, self.root))

    # ---- index ------------------------------------------------------------------------------------------------------
    def _split_scenes(self) -> dict[str, list[str]]:
        """split -> scene names, from the split files present, else every scene folder as ``all``."""
        out = {}
        for split, fname in SPLIT_FILES.items():
            path = self.root / fname
            if path.is_file():
                self._files.add(path)
                try:
                    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
                except (OSError, UnicodeDecodeError) as e:
                    raise DatasetError(f"{path}: cannot read split file: {e}") from e
                out[split] = list(dict.fromkeys(names))
        if out:
            return out
        names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise DatasetError(f"{self.root}: no scene folders and no split files ({', '.join(SPLIT_FILES.values())})")
        return {"all": names}

    def _bad(self, split: str, index: int, source: Path | str, error: DatasetError) -> None:
        """A problem found at open: an error, or under ``on_bad=skip`` an entry of :attr:`skipped`."""
        if self.on_bad != "skip":
            raise error
        self.skipped.setdefault(split, []).append({"index": index, "source": str(source), "error": str(error)})

    def _index_split(self, split: str, names: list[str]) -> list[ScanNetEntry]:
        entries: list[ScanNetEntry] = []
        self.untracked[split] = 0
        for name in names:
            scene = self.root / name
            try:
                frames = scene_frames(scene)
                k = read_depth_intrinsics(scene / "intrinsic" / "intrinsic_depth.txt")
                cands = tile_windows(len(frames), self.opts.frames, self.opts.stride, self.opts.start)
                if not cands:
                    raise DatasetError(f"{scene}: {too_short(len(frames), self.opts.frames, self.opts.stride)}")
            except DatasetError as e:
                self._bad(split, len(entries) + len(self.skipped.get(split, [])), scene, e)
                continue
            self._files.add(scene / "intrinsic" / "intrinsic_depth.txt")
            poses = self._read_poses(scene, frames, cands)
            tracked = [w for w in cands if not any(lost_tracking(poses[p]) for p in w)]
            self.untracked[split] += len(cands) - len(tracked)
            chosen = select_windows(tracked, len(frames), self.opts.windows, self.opts.start,
                                    self.opts.max_clips_per_scene)
            for w in chosen:
                try:
                    entry = self._entry(scene, [frames[p] for p in w], [poses[p] for p in w], k)
                except DatasetError as e:
                    self._bad(split, len(entries) + len(self.skipped.get(split, [])),
                              f"{scene} frames {[frames[p] for p in w]}", e)
                    continue
                entries.append(entry)
                self._files.update(entry.files())
        return entries

    @staticmethod
    def _read_poses(scene: Path, frames: list[int], cands: list[np.ndarray]) -> dict[int, np.ndarray | DatasetError]:
        """position -> the pose (4x4) of every frame the candidate windows use, or the error reading it."""
        out: dict[int, np.ndarray | DatasetError] = {}
        for p in sorted({int(p) for w in cands for p in w}):
            path = scene / "pose" / f"{frames[p]}.txt"
            if not path.is_file():
                out[p] = DatasetError(f"{path}: no such file (the pose of colour frame {frames[p]})")
                continue
            try:
                out[p] = read_matrix4(path, "pose")
            except DatasetError as e:  # kept: raised (or skipped) only if a chosen window uses this frame
                out[p] = e
        return out

    def _entry(self, scene: Path, numbers: list[int], poses: list[np.ndarray | DatasetError],
               k: np.ndarray) -> ScanNetEntry:
        for i, pose in zip(numbers, poses, strict=True):
            if isinstance(pose, DatasetError):
                raise pose
            if not (np.allclose(pose[3], (0, 0, 0, 1)) and abs(np.linalg.det(pose[:3, :3]) - 1) < 1e-2):
                raise DatasetError(f"{scene / 'pose' / f'{i}.txt'}: pose is not a rigid camera-to-world transform")
        for i in numbers:
            depth = scene / "depth" / f"{i}.png"
            if not depth.is_file():
                raise DatasetError(f"{depth}: no such file (the depth of colour frame {i})")
        entry = ScanNetEntry(scene, tuple(numbers), np.stack(poses), k)
        if self.opts.resize == "none" and scene not in self._sizes:
            self._sizes[scene] = image_size(entry.depth(numbers[0]))
        return entry

    def _output_size(self) -> tuple[int, int]:
        return one_size(self.opts, self._sizes, "depth", lambda scene: scene / "depth")

    # ---- clips ------------------------------------------------------------------------------------------------------
    def split(self, name: str) -> ClipSequence:
        return IndexedClips(self.identity, name, self._entries[name], self._load, str)

    def _load(self, e: ScanNetEntry) -> Clip:
        paths = [e.depth(i) for i in e.frames]
        depth = np.stack(same_size([read_depth_png(p) for p in paths], paths))  # (T, h, w) metres
        g = plan_geometry(depth.shape[1], depth.shape[2], self.opts.size, self.opts.resize)
        if (g.height, g.width) != (self.height, self.width):
            raise DatasetError(f"{e.depth(e.frames[0])}: depth of {depth.shape[1]}x{depth.shape[2]} pixels, the "
                               f"dataset's frames are {self.height}x{self.width} (resize=none needs one size)")
        paths = [e.color(i) for i in e.frames]
        color = np.stack(same_size([read_image(p) for p in paths], paths))  # (T, H0, W0, 3)
        # the colour frame goes straight to the depth grid's resized size, then the same crop
        gc = Geometry(color.shape[1], color.shape[2], g.rh, g.rw, g.oy, g.ox, g.height, g.width)
        return {
            "video": apply_video(color, gc, where=str(e.scene / "color")),  # (T, H, W, 3)
            "depth": apply_depth(depth, g, where=str(e.scene / "depth")),  # (T, H, W)
            "camera": np.linalg.inv(e.pose).astype(np.float32),  # (T, 4, 4) world-to-camera
            "intrinsics": apply_intrinsics(e.k, g),  # (3, 3)
        }


def open_scannet(spec: DatasetSpec) -> ScanNetDataset:
    """The registry's factory for ``scannet:DIR@...``."""
    return ScanNetDataset(spec.path, spec.typed(ScanNetOptions), str(spec))

