"""Unlabelled folders of videos or images (what the tokenizer and the twin models train on), and the clip loading
shared by every reader of plain video / image files (Kinetics, Something-Something v2, class folders).

``videos:DIR`` reads every video under ``DIR`` (recursively) that PyAV decodes::

    DIR/
      any/depth/clip.mp4        # .mp4 .webm .avi .mkv .mov .m4v (any case)
      other.webm

``images:DIR`` reads every image under ``DIR`` (recursively; .jpg .jpeg .png .bmp .webp, any case) as a 1-frame clip.

Both have one split ``all`` with the files in sorted path order (relative to ``DIR``) and one field, ``video`` uint8
``(T, H, W, 3)``. ``videos`` takes ``frames`` frames ``stride`` apart from the first frame (``start=first``) or from
the middle of each video (``start=center``), one clip per video (``windows=first``), or every non-overlapping window
of every video (``windows=all``: each video's length is read at open).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffprobe.config import ConfigError
from diffprobe.data.dataset import (
    Clip,
    ClipSequence,
    DatasetError,
    FileDataset,
    IndexedClips,
    ReaderOptions,
    VideoOptions,
    dataset_identity,
    fingerprint,
    require_files,
)
from diffprobe.data.decode import NOT_A_VIDEO, read_image, read_video, video_length
from diffprobe.data.transforms import apply_video, frame_indices, plan_geometry, too_short, windows
from diffprobe.spec import DatasetSpec
from diffprobe.utils.media import av_error_text

#: file name endings of the videos and images the readers pick up (compared in lower case)
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class ImageOptions(ReaderOptions):
    """Options of the image readers: ``size`` (output side in pixels) and ``resize`` (``crop``: short side to
    ``size`` then the centre square; ``stretch``: each side to ``size``; ``none``: as stored, every image must then
    have the first image's size). An image is a 1-frame clip, so there is no ``frames`` / ``stride`` / ``start``."""

    size: int = 128
    resize: Literal["crop", "stretch", "none"] = "crop"

    def validate(self) -> None:
        if self.size < 1:
            raise ConfigError(f"{type(self).__name__}.size: must be >= 1, got {self.size}")


@dataclasses.dataclass(frozen=True)
class VideoFolderOptions(VideoOptions):
    """``videos:DIR`` options: :class:`VideoOptions` plus ``windows`` (``first``: one clip per video, ``all``: every
    non-overlapping window, from the first frame on, so ``start`` must stay ``first``)."""

    windows: Literal["first", "all"] = "first"

    def validate(self) -> None:
        super().validate()
        if self.windows == "all" and self.start != "first":
            raise ConfigError(f"{type(self).__name__}.start: windows=all tiles each video from its first frame; "
                              f"start={self.start!r} does not apply")


# ---- index entries and loaders shared by the video / image readers ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileClip:
    """One clip of an index: a file, its source frame numbers (``None``: chosen at read from the video's length)
    and its class fields (``(("action", 3),)``)."""

    path: Path
    indices: tuple[int, ...] | None = None
    targets: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        if self.indices is None:
            return str(self.path)
        return f"{self.path} frames {self.indices[0]}..{self.indices[-1]}"


def describe_entry(entry: FileClip) -> str:
    return entry.describe()


def labelled_clips(dataset: str, part: str, entries: Sequence[FileClip], load: Callable[[FileClip], Clip],
                   field: str) -> IndexedClips:
    """A split of file clips that each carry the class ``field``, with those labels read from the index."""
    labels = np.array([dict(e.targets)[field] for e in entries], dtype=np.int64)
    return IndexedClips(dataset, part, entries, load, describe_entry, labels={field: labels})


def _check_size(frame_hw: tuple[int, int], expect_hw: tuple[int, int], where: Path) -> None:
    if frame_hw != expect_hw:
        raise DatasetError(f"{where}: is {frame_hw[0]}x{frame_hw[1]} pixels, but resize=none needs every clip at the "
                           f"first clip's {expect_hw[0]}x{expect_hw[1]}")


@dataclasses.dataclass(frozen=True)
class VideoLoader:
    """Decodes one :class:`FileClip` of a video into a Clip: samples the frames, resizes / crops them to
    ``(frames, height, width)``; picklable, so DataLoader workers can run it."""

    frames: int
    stride: int
    start: str
    size: int
    resize: str
    height: int
    width: int

    @classmethod
    def of(cls, opts: VideoOptions, height: int, width: int) -> VideoLoader:
        return cls(opts.frames, opts.stride, opts.start, opts.size, opts.resize, height, width)

    def indices(self, path: Path) -> tuple[int, ...]:
        """The source frames of a clip taken from the whole video (its length from the container)."""
        length = video_length(path)
        found = frame_indices(length, self.frames, self.stride, self.start)
        if found is None:
            raise DatasetError(f"{path}: {too_short(length, self.frames, self.stride)}")
        return tuple(int(i) for i in found)

    def __call__(self, entry: FileClip) -> Clip:
        indices = entry.indices if entry.indices is not None else self.indices(entry.path)
        raw = read_video(entry.path, indices)  # (T, H0, W0, 3)
        g = plan_geometry(raw.shape[1], raw.shape[2], self.size, self.resize)
        if self.resize == "none":
            _check_size((g.height, g.width), (self.height, self.width), entry.path)
        clip: Clip = {"video": apply_video(raw, g, where=str(entry.path))}  # (T, height, width, 3)
        clip.update({name: int(value) for name, value in entry.targets})
        return clip


@dataclasses.dataclass(frozen=True)
class ImageLoader:
    """Decodes one :class:`FileClip` of an image into a 1-frame Clip ``(1, height, width, 3)``; picklable."""

    size: int
    resize: str
    height: int
    width: int

    @classmethod
    def of(cls, opts: ImageOptions, height: int, width: int) -> ImageLoader:
        return cls(opts.size, opts.resize, height, width)

    def __call__(self, entry: FileClip) -> Clip:
        raw = read_image(entry.path)[None]  # (1, H0, W0, 3)
        g = plan_geometry(raw.shape[1], raw.shape[2], self.size, self.resize)
        if self.resize == "none":
            _check_size((g.height, g.width), (self.height, self.width), entry.path)
        clip: Clip = {"video": apply_video(raw, g, where=str(entry.path))}  # (1, height, width, 3)
        clip.update({name: int(value) for name, value in entry.targets})
        return clip


def video_frame_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of a video from its stream header (no decoding)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: has no video stream")
            ctx = container.streams.video[0].codec_context
            if not ctx.height or not ctx.width:
                raise DatasetError(f"{path}: video stream header has no frame size")
            return int(ctx.height), int(ctx.width)
    except (av.FFmpegError, OSError) as e:
        raise DatasetError(f"{path}: {NOT_A_VIDEO}: {av_error_text(e)}") from e


def image_frame_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image from its header (no decoding)."""
    try:
        with Image.open(path) as img:
            return int(img.height), int(img.width)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read image header: {e}") from e


def output_size(size: int, resize: str, first: Path | None, is_video: bool, where: Path) -> tuple[int, int]:
    """``(height, width)`` of every clip: ``size`` square, or under ``resize=none`` the first file's size (read from
    its header; every other clip is checked against it when read). ``where``: the dataset, for the message when
    there is no clip at all."""
    if resize != "none":
        return size, size
    if first is None:
        raise DatasetError(f"{where}: no readable clip to take the frame size of resize=none from")
    return video_frame_size(first) if is_video else image_frame_size(first)


def find_files(root: Path, extensions: Sequence[str]) -> list[Path]:
    """Every file under ``root`` (recursively, following no hidden folders) whose name ends in one of
    ``extensions`` (case-insensitive), in sorted order of the path relative to ``root``."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        found.extend(Path(folder) / n for n in names
                     if not n.startswith(".") and n.lower().endswith(tuple(extensions)))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def skip_or_raise(skipped: list[dict[str, Any]], on_bad: str, index: int, source: Path, error: str) -> None:
    """An index problem found at open: an error (``on_bad=error``) or a record in ``skipped`` (``on_bad=skip``)."""
    if on_bad != "skip":
        raise DatasetError(error)
    skipped.append({"index": index, "source": str(source), "error": error})


def has_bytes(path: Path, skipped: list[dict[str, Any]], on_bad: str, index: int) -> bool:
    """Whether a file found by an index holds any bytes: an empty (0-byte) file, a broken download, is an error
    at open (``on_bad=error``) or recorded in ``skipped`` (``on_bad=skip``) and not indexed. Costs one ``stat``."""
    if path.stat().st_size:
        return True
    skip_or_raise(skipped, on_bad, index, path, f"{path}: empty file (0 bytes)")
    return False


# ---- videos:DIR and images:DIR ---------------------------------------------------------------------------------


class FolderDataset(FileDataset):
    """An unlabelled folder of videos or images: one split ``all``, field ``video``."""

    def __init__(self, root: Path, spec: str, opts: VideoFolderOptions | ImageOptions,
                 entries: list[FileClip], files: Iterable[Path], loader: VideoLoader | ImageLoader,
                 skipped: list[dict[str, Any]]) -> None:
        super().__init__(root, opts, spec)
        self.identity = dataset_identity(self.kind, root, opts, fingerprint(files, root))
        self.splits = ("all",)
        self.fields = frozenset({"video"})
        self.label_spaces = {}
        self.frames = loader.frames if isinstance(loader, VideoLoader) else 1
        self.height, self.width = loader.height, loader.width
        self.entries = entries
        self.loader = loader
        if skipped:
            self.skipped["all"] = skipped

    def split(self, name: str) -> ClipSequence:
        return IndexedClips(self.identity, name, self.entries, self.loader, describe_entry)


class VideosDataset(FolderDataset):
    """``videos:DIR``."""

    kind = "videos"


class ImagesDataset(FolderDataset):
    """``images:DIR``."""

    kind = "images"


def _folder(path: str) -> Path:
    root = Path(path).expanduser()
    require_files(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    return root


def open_videos(spec: DatasetSpec) -> VideosDataset:
    """``videos:DIR``: every video under ``DIR``, unlabelled (see the module docstring)."""
    opts = spec.typed(VideoFolderOptions)
    root = _folder(spec.path)
    files = find_files(root, VIDEO_EXTENSIONS)
    if not files:
        raise DatasetError(f"{root}: no videos ({' '.join(VIDEO_EXTENSIONS)}) found")
    entries: list[FileClip] = []
    skipped: list[dict[str, Any]] = []
    for i, f in enumerate(files):
        if not has_bytes(f, skipped, opts.on_bad, i):
            continue
        if opts.windows == "first":  # the length is read with the clip
            entries.append(FileClip(f))
            continue
        try:
            length = video_length(f)
        except DatasetError as e:
            skip_or_raise(skipped, opts.on_bad, i, f, str(e))
            continue
        found = windows(length, opts.frames, opts.stride)
        if not found:
            skip_or_raise(skipped, opts.on_bad, i, f, f"{f}: {too_short(length, opts.frames, opts.stride)}")
        entries.extend(FileClip(f, tuple(int(j) for j in w)) for w in found)
    good = [e.path for e in entries]
    height, width = output_size(opts.size, opts.resize, good[0] if good else None, is_video=True, where=root)
    return VideosDataset(root, str(spec), opts, entries, files, VideoLoader.of(opts, height, width), skipped)


def open_images(spec: DatasetSpec) -> ImagesDataset:
    """``images:DIR``: every image under ``DIR`` as a 1-frame clip, unlabelled (see the module docstring)."""
    opts = spec.typed(ImageOptions)
    root = _folder(spec.path)
    files = find_files(root, IMAGE_EXTENSIONS)
    if not files:
        raise DatasetError(f"{root}: no images ({' '.join(IMAGE_EXTENSIONS)}) found")
    skipped: list[dict[str, Any]] = []
    entries = [FileClip(f) for i, f in enumerate(files) if has_bytes(f, skipped, opts.on_bad, i)]
    height, width = output_size(opts.size, opts.resize, entries[0].path if entries else None, is_video=False,
                                where=root)
    return ImagesDataset(root, str(spec), opts, entries, files, ImageLoader.of(opts, height, width), skipped)

