"""RealEstate10K: YouTube clips with per-frame cameras (world-to-camera poses and intrinsics), no depth.

Spec ``re10k:DIR[@frames=8,stride=4,size=128,resize=crop,windows=first,...]``. ``DIR`` is the official release
(``train/`` and ``test/`` folders of camera files) with each clip's frames extracted beside its camera file, one image
per camera line named by its timestamp, as the usual download scripts write them::

    DIR/
      train/
        0000cc6d8b108390.txt        line 1: the YouTube URL; then one line per frame
        0000cc6d8b108390/
          45045000.png              <timestamp_us>.png (or .jpg), any size
          45078367.png
      test/
        ...

A camera line is 19 numbers: ``timestamp_us fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3``, the
intrinsics normalised by the image width / height and the 3x4 matrix world-to-camera (OpenCV axes: x right, y down,
z forward; translations are in the arbitrary scale of the SLAM reconstruction behind the release).

Fields: ``video``, ``camera`` (T, 4, 4) world-to-camera (the 3x4 plus a ``0 0 0 1`` row), ``intrinsics`` (3, 3) in
output pixels: ``fx * W, fy * H, cx * W, cy * H`` with ``W x H`` the frames' size on disk, then through the geometry
(the first frame's intrinsics; a window whose intrinsics change is an error). Clips are windows of ``frames`` camera
lines ``stride`` apart: one per clip (``windows=first``, or with ``start=center`` the one nearest the clip's centre)
or every non-overlapping window (``windows=all``). Only the frames of those windows must exist on disk.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import numpy as np

from diffprobe.data.dataset import (
    Clip,
    ClipSequence,
    DatasetError,
    FileDataset,
    IndexedClips,
    VideoOptions,
    dataset_identity,
    fingerprint,
)
from diffprobe.data.decode import read_image
from diffprobe.data.readers.scannet import image_size, one_size, same_size, select_windows, tile_windows
from diffprobe.data.transforms import apply_intrinsics, apply_video, plan_geometry, too_short, unit_range_problem
from diffprobe.spec import DatasetSpec

KIND = "re10k"
SPLITS: tuple[str, ...] = ("train", "test")  #: the release's split folders
VALUES_PER_LINE = 19
FRAME_EXTS: tuple[str, ...] = (".png", ".jpg")  #: looked for in this order
K_TOLERANCE = 1e-4  #: most change of a normalised intrinsic within a window


@dataclasses.dataclass(frozen=True)
class RE10KOptions(VideoOptions):
    """Options of ``re10k:DIR@...``."""

    frames: int = 8
    stride: int = 4
    windows: Literal["first", "all"] = "first"  #: one window per clip, or every non-overlapping window


@dataclasses.dataclass(frozen=True)
class CameraFile:
    """A parsed camera file: per line its timestamp, normalised intrinsics and world-to-camera."""

    path: Path
    timestamps: np.ndarray  # (N,) int64 microseconds
    k: np.ndarray  # (N, 4) fx, fy, cx, cy normalised
    w2c: np.ndarray  # (N, 4, 4)


def read_camera_file(path: Path) -> CameraFile:
    """Parse a RealEstate10K camera file; a malformed line is an error naming the file and the line number."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read camera file: {e}") from e
    rows: list[list[float]] = []
    stamps: list[int] = []
    for n, line in enumerate(lines[1:], start=2):  # line 1 is the video's URL
        parts = line.split()
        if not parts:
            continue
        if len(parts) != VALUES_PER_LINE:
            raise DatasetError(f"{path}: line {n}: {len(parts)} values, a camera line has {VALUES_PER_LINE}")
        try:
            stamps.append(int(parts[0]))
            rows.append([float(v) for v in parts[1:]])
        except ValueError as e:
            raise DatasetError(f"{path}: line {n}: not a camera line of numbers: {e}") from e
    if not rows:
        raise DatasetError(f"{path}: no camera lines after the URL line")
    v = np.array(rows, np.float64)  # (N, 18)
    if not np.isfinite(v).all():
        n = 2 + int(np.flatnonzero(~np.isfinite(v).all(axis=1))[0])
        raise DatasetError(f"{path}: line {n}: a value is not finite")
    problem = unit_range_problem(v[:, 2:4], "principal points (cx, cy)")
    if problem:
        raise DatasetError(f"{path}: {problem} (normalised by the frame's width and height)")
    w2c = np.tile(np.eye(4), (len(v), 1, 1))
    w2c[:, :3, :] = v[:, 6:].reshape(-1, 3, 4)
    return CameraFile(path, np.array(stamps, np.int64), v[:, :4], w2c)


@dataclasses.dataclass(frozen=True, eq=False)
class RE10KEntry:
    """One clip: a window of frames of one RealEstate10K clip."""

    camera_file: Path
    frames: tuple[Path, ...]
    w2c: np.ndarray  # (T, 4, 4)
    k: np.ndarray  # (4,) fx, fy, cx, cy normalised

    def __str__(self) -> str:
        return f"{self.camera_file} frames {[f.name for f in self.frames]}"


class RE10KDataset(FileDataset):
    """RealEstate10K clips with ``video``, ``camera`` and ``intrinsics`` (see the module docstring)."""

    kind = KIND

    def __init__(self, root: str | Path, opts: RE10KOptions, spec: str) -> None:
        super().__init__(root, opts, spec)
        self.splits = tuple(s for s in SPLITS if (self.root / s).is_dir())
        if not self.splits:
            raise DatasetError(f"{self.root}: no split folder ({' or '.join(SPLITS)}/) of camera files")
        self.fields = frozenset({"video", "camera", "intrinsics"})
        self.label_spaces = {}
        self.frames = opts.frames
        self._files: set[Path] = set()
        self._sizes: dict[Path, tuple[int, int]] = {}  # (H, W) of each clip's first frame (resize=none)
        self._entries = {s: self._index_split(s) for s in self.splits}
        self.height, self.width = self._output_size()
        self.identity = dataset_identity(KIND, self.root, opts, fingerprint(self._files, self.root))

    def _bad(self, split: str, index: int, source: Path | str, error: DatasetError) -> None:
        if self.on_bad != "skip":
            raise error
        self.skipped.setdefault(split, []).append({"index": index, "source": str(source), "error": str(error)})

    def _index_split(self, split: str) -> list[RE10KEntry]:
        entries: list[RE10KEntry] = []
        for path in sorted((self.root / split).glob("*.txt")):
            try:
                cams = read_camera_file(path)
                cands = tile_windows(len(cams.timestamps), self.opts.frames, self.opts.stride, self.opts.start)
                if not cands:
                    raise DatasetError(f"{path}: {too_short(len(cams.timestamps), self.opts.frames, self.opts.stride)}")
                folder = path.with_suffix("")
                if not folder.is_dir():
                    raise DatasetError(f"{folder}: no such folder (the frames of {path.name})")
                on_disk = set(os.listdir(folder))
            except DatasetError as e:
                self._bad(split, len(entries) + len(self.skipped.get(split, [])), path, e)
                continue
            self._files.add(path)
            for w in select_windows(cands, len(cams.timestamps), self.opts.windows, self.opts.start):
                try:
                    entry = self._entry(cams, folder, on_disk, w)
                except DatasetError as e:
                    self._bad(split, len(entries) + len(self.skipped.get(split, [])), path, e)
                    continue
                entries.append(entry)
                self._files.update(entry.frames)
        return entries

    def _entry(self, cams: CameraFile, folder: Path, on_disk: set[str], w: np.ndarray) -> RE10KEntry:
        frames = []
        for p in w:
            ts = int(cams.timestamps[p])
            name = next((f"{ts}{ext}" for ext in FRAME_EXTS if f"{ts}{ext}" in on_disk), None)
            if name is None:
                raise DatasetError(f"{folder / f'{ts}.png'}: no such file (nor .jpg), the frame of line {p + 2} of "
                                   f"{cams.path.name}")
            frames.append(folder / name)
        k = cams.k[w]  # (T, 4)
        if np.abs(k - k[0]).max() > K_TOLERANCE:
            raise DatasetError(f"{cams.path}: lines {int(w[0]) + 2}-{int(w[-1]) + 2}: the intrinsics change within "
                               f"a clip window")
        if self.opts.resize == "none" and folder not in self._sizes:
            self._sizes[folder] = image_size(frames[0])
        return RE10KEntry(cams.path, tuple(frames), cams.w2c[w], k[0])

    def _output_size(self) -> tuple[int, int]:
        return one_size(self.opts, self._sizes, "frames")

    def split(self, name: str) -> ClipSequence:
        return IndexedClips(self.identity, name, self._entries[name], self._load, str)

    def _load(self, e: RE10KEntry) -> Clip:
        frames = np.stack(same_size([read_image(f) for f in e.frames], e.frames))  # (T, H0, W0, 3)
        h, w = frames.shape[1:3]
        g = plan_geometry(h, w, self.opts.size, self.opts.resize)
        if (g.height, g.width) != (self.height, self.width):
            raise DatasetError(f"{e.frames[0]}: frame of {h}x{w} pixels, the dataset's frames are "
                               f"{self.height}x{self.width} (resize=none needs one size)")
        fx, fy, cx, cy = e.k
        k = np.array([[fx * w, 0.0, cx * w], [0.0, fy * h, cy * h], [0.0, 0.0, 1.0]])
        return {
            "video": apply_video(frames, g, where=str(e.camera_file.with_suffix(""))),  # (T, H, W, 3)
            "camera": e.w2c.astype(np.float32),  # (T, 4, 4) world-to-camera
            "intrinsics": apply_intrinsics(k, g),  # (3, 3)
        }


def open_re10k(spec: DatasetSpec) -> RE10KDataset:
    """The registry's factory for ``re10k:DIR@...``."""
    return RE10KDataset(spec.path, spec.typed(RE10KOptions), str(spec))
