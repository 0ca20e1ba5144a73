"""DAVIS-2017 (semi-supervised) as box tracking: spec ``davis:DIR[@KEY=VALUE,...]``.

On-disk layout (the DAVIS-2017 trainval release)::

    DIR/
      JPEGImages/480p/<seq>/00000.jpg, 00001.jpg, ...     RGB frames
      Annotations/480p/<seq>/00000.png, 00001.png, ...    palette PNGs: pixel value = object id, 0 background,
                                                          255 void (ignored)
      ImageSets/2017/train.txt, val.txt                   one sequence name per line

(``resolution=Full-Resolution`` reads ``JPEGImages/Full-Resolution`` and ``Annotations/Full-Resolution``.)

Field mapping: ``video`` <- the JPEGs; ``boxes`` float32 (K, T, 4) and ``box_visible`` bool (K, T) <- the masks:
the K objects are the ids present in the sequence's first annotation frame (the semi-supervised protocol gives the
objects in frame 0), sorted by id; each one's box in a frame is its mask's tight box in source pixels (``x0`` = min
column, ``y0`` = min row, ``x1`` = max column + 1, ``y1`` = max row + 1), then mapped through the same geometry as
the frames and clipped to them; it is visible where its mask is non-empty (and the mapped box keeps some area).
Boxes that are not visible are zeros. ``max_objects`` is the largest K of the dataset's sequences.

Splits: ``train`` and ``val``, those whose list file exists. One clip per sequence (``windows=first``: its first
``frames`` frames ``stride`` apart, or centred with ``start=center``) or one per non-overlapping window
(``windows=all``). Open time lists the files and reads each sequence's first mask and first JPEG header; the clip
frames are decoded when read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

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
    apply_boxes,
    apply_video,
    frame_indices,
    plan_geometry,
    too_short,
    windows,
)
from diffprobe.spec import DatasetSpec

SPLITS = ("train", "val")
VOID = 255  # the annotation value of pixels DAVIS leaves unlabelled


@dataclasses.dataclass(frozen=True)
class DavisOptions(VideoOptions):
    """Options of ``davis:`` specs."""

    size: int = 256
    resize: Literal["crop", "stretch", "none"] = "stretch"
    frames: int = 16
    stride: int = 1
    windows: Literal["first", "all"] = "first"  #: one clip per sequence, or every non-overlapping window
    resolution: Literal["480p", "Full-Resolution"] = "480p"  #: which release folder to read


@dataclasses.dataclass(frozen=True)
class _Sequence:
    """One sequence, as indexed at open."""

    name: str
    images: tuple[Path, ...]  # the JPEGs, in frame order
    masks: tuple[Path, ...]  # the annotation PNGs, one per JPEG
    objects: tuple[int, ...]  # ids present in the first mask, sorted
    height: int  # source frame size
    width: int


def _read_list(path: Path) -> list[str]:
    """The sequence names of an ImageSets list file."""
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read sequence list: {e}") from e


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image from its header (nothing is decoded)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(f"{path}: cannot decode image: {e}") from e
    return h, w


def _read_mask(path: Path) -> np.ndarray:
    """``(H, W)`` object ids of one annotation PNG."""
    mask = read_png_map(path)
    if mask.ndim != 2:
        raise DatasetError(f"{path}: expected a single-channel (palette) mask, got shape {mask.shape}")
    return mask


def _check_mask_size(mask: np.ndarray, mask_path: Path, size: tuple[int, int], image_path: Path) -> None:
    if mask.shape != size:
        raise DatasetError(f"{mask_path}: mask of {mask.shape[0]}x{mask.shape[1]} pixels, its frame {image_path} "
                           f"is {size[0]}x{size[1]}")


def tight_boxes(masks: np.ndarray, objects: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(T, H, W)`` id maps -> ``(K, T, 4)`` float64 tight boxes (x0, y0, x1, y1) in pixels (zeros where absent)
    and ``(K, T)`` bool: the object's mask is non-empty."""
    t, h, w = masks.shape
    boxes = np.zeros((len(objects), t, 4), np.float64)
    visible = np.zeros((len(objects), t), bool)
    for k, obj in enumerate(objects):
        m = masks == obj  # (T, H, W)
        rows, cols = m.any(axis=2), m.any(axis=1)  # (T, H), (T, W)
        seen = rows.any(axis=1)  # (T,)
        y0, y1 = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)  # (T,)
        x0, x1 = cols.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
        boxes[k] = np.where(seen[:, None], np.stack([x0, y0, x1, y1], axis=-1), 0)
        visible[k] = seen
    return boxes, visible


class DavisDataset(FileDataset):
    """DAVIS-2017 behind the dataset interface (see the module docstring)."""

    kind = "davis"

    def __init__(self, path: str | Path, opts: DavisOptions, spec: str) -> None:
        super().__init__(path, opts, spec)
        self.image_dir = self.root / "JPEGImages" / opts.resolution
        self.mask_dir = self.root / "Annotations" / opts.resolution
        sets = self.root / "ImageSets" / "2017"
        lists = {s: sets / f"{s}.txt" for s in SPLITS if (sets / f"{s}.txt").is_file()}
        if not lists:
            raise DatasetError(f"{sets}: no sequence list ({', '.join(f'{s}.txt' for s in SPLITS)}) found")
        require_files(self.image_dir, self.mask_dir)
        self.splits = tuple(lists)
        self.fields = frozenset({"video", "boxes", "box_visible"})
        self.label_spaces = {}
        self.frames = opts.frames
        self._sequences: dict[str, _Sequence] = {}
        self._entries: dict[str, list[tuple[str, tuple[int, ...]]]] = {}  # split -> (sequence, frame indices)
        files: set[Path] = {*lists.values(), self.image_dir, self.mask_dir}  # folders: sequences come and go
        for split, list_file in lists.items():
            self._entries[split] = []
            for i, name in enumerate(_read_list(list_file)):
                images, masks = self._files(name)
                files.update(images + masks)  # skipped sequences too: repairing one changes the identity
                try:
                    if name in self._sequences:
                        seq = self._sequences[name]
                    else:
                        seq = self._index_sequence(name, list_file, images, masks)
                    clips = self._windows(seq)
                except DatasetError as e:
                    if self.on_bad != "skip":
                        raise
                    self.skipped.setdefault(split, []).append(
                        {"index": i, "source": str(self.image_dir / name), "error": str(e)})
                    continue
                self._sequences[name] = seq
                self._entries[split].extend((name, tuple(int(f) for f in c)) for c in clips)
        self.identity = dataset_identity(self.kind, self.root, opts, fingerprint(files, self.root))
        if not self._sequences:
            raise DatasetError(f"{self.root}: no usable sequence in {', '.join(map(str, lists.values()))}")
        self.max_objects = max(len(s.objects) for s in self._sequences.values())
        first = next(iter(self._sequences.values()))
        self.height, self.width = (first.height, first.width) if opts.resize == "none" else (opts.size, opts.size)

    def _files(self, name: str) -> tuple[list[Path], list[Path]]:
        """A sequence's JPEGs and annotation PNGs, sorted (none where its folder is missing)."""
        return sorted((self.image_dir / name).glob("*.jpg")), sorted((self.mask_dir / name).glob("*.png"))

    def _index_sequence(self, name: str, list_file: Path, images: list[Path], masks: list[Path]) -> _Sequence:
        """Check a sequence's frames and masks, read its first mask's objects and its frame size."""
        image_dir, mask_dir = self.image_dir / name, self.mask_dir / name
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise DatasetError(f"{d}: no such folder (sequence {name!r} listed in {list_file})")
        if not images:
            raise DatasetError(f"{image_dir}: no .jpg frames")
        if len(masks) != len(images):
            raise DatasetError(f"{mask_dir}: {len(masks)} mask frame(s) for the {len(images)} video frame(s) of "
                               f"{image_dir}")
        for image, mask in zip(images, masks, strict=True):
            if image.stem != mask.stem:
                raise DatasetError(f"{mask}: mask frame {mask.stem!r} where frame {image.stem!r} ({image}) was "
                                   f"expected")
        size = _image_size(images[0])
        first = _read_mask(masks[0])  # (H, W)
        _check_mask_size(first, masks[0], size, images[0])
        objects = tuple(int(v) for v in np.unique(first) if v not in (0, VOID))
        return _Sequence(name, tuple(images), tuple(masks), objects, *size)

    def _windows(self, seq: _Sequence) -> list[np.ndarray]:
        """The frame indices of each clip of a sequence; too short is an error."""
        o = self.opts
        if o.resize == "none" and self._sequences:
            first = next(iter(self._sequences.values()))
            if (seq.height, seq.width) != (first.height, first.width):
                raise DatasetError(f"{seq.images[0]}: frames of {seq.height}x{seq.width}, but with resize=none every "
                                   f"sequence must match the first ({first.height}x{first.width})")
        if o.windows == "first":
            idx = frame_indices(len(seq.images), o.frames, o.stride, o.start)
            clips = [] if idx is None else [idx]
        else:
            clips = windows(len(seq.images), o.frames, o.stride)
        if not clips:
            raise DatasetError(f"{self.image_dir / seq.name}: {too_short(len(seq.images), o.frames, o.stride)}")
        return clips

    def _describe(self, entry: tuple[str, tuple[int, ...]]) -> str:
        name, idx = entry
        return f"{self.image_dir / name}: frames {idx[0]}..{idx[-1]}"

    def _load(self, entry: tuple[str, tuple[int, ...]]) -> Clip:
        seq = self._sequences[entry[0]]
        images, masks = [], []
        for i in entry[1]:
            image = read_image(seq.images[i])  # (H, W, 3)
            if image.shape[:2] != (seq.height, seq.width):
                raise DatasetError(f"{seq.images[i]}: frame of {image.shape[0]}x{image.shape[1]} pixels, the "
                                   f"sequence's first frame is {seq.height}x{seq.width}")
            mask = _read_mask(seq.masks[i])  # (H, W)
            _check_mask_size(mask, seq.masks[i], image.shape[:2], seq.images[i])
            images.append(image)
            masks.append(mask)
        g = plan_geometry(seq.height, seq.width, self.opts.size, self.opts.resize)
        boxes, visible = self._boxes(np.stack(masks), seq.objects, g)
        return {"video": apply_video(np.stack(images), g, str(self.image_dir / seq.name)),  # (T, H, W, 3)
                "boxes": boxes,  # (K, T, 4)
                "box_visible": visible}  # (K, T)

    @staticmethod
    def _boxes(masks: np.ndarray, objects: tuple[int, ...], g: Geometry) -> tuple[np.ndarray, np.ndarray]:
        boxes, visible = apply_boxes(*tight_boxes(masks, objects), g)  # (K, T, 4), (K, T)
        return np.where(visible[..., None], boxes, 0).astype(np.float32), visible

    def split(self, name: str) -> ClipSequence:
        return IndexedClips(self.identity, name, self._entries[name], self._load, self._describe)


def open_davis(spec: DatasetSpec) -> DavisDataset:
    """The registry's factory: ``path`` is the DAVIS folder (the one holding ``JPEGImages``)."""
    return DavisDataset(spec.path, spec.typed(DavisOptions), str(spec))
