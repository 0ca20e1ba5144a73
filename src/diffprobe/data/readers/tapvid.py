"""TAP-Vid point-tracking benchmarks from their released pickles: spec ``tapvid:FILE.pkl[@KEY=VALUE,...]``.

On-disk format (one pickle file, as released by TAP-Vid, Doersch et al. 2022)::

    tapvid_davis.pkl        dict  video_name -> record        (TAP-Vid DAVIS)
    0000_of_0010.pkl        list  [record, ...]               (TAP-Vid Kinetics shard; also RGB-Stacking)

    record = {"video":    uint8 (T, H, W, 3) array, or a list of T JPEG-encoded frames (bytes),
              "points":   float (N, T, 2) (x, y) normalised to [0, 1] of the frame's width and height,
              "occluded": bool (N, T),
              "video_id": str (Kinetics only, optional: the video's name; else its list index)}

Field mapping: ``video`` <- the record's frames (resized / cropped by the options); ``tracks`` float32 (N, T, 2)
<- ``points`` scaled to source pixels (``x * W0, y * H0``; pixel ``i`` spans ``[i, i + 1)``) and then through the
same geometry as the frames (with ``resize=stretch`` this is ``x * W_out, y * H_out``); ``visible`` bool (N, T) <-
``not occluded`` and inside the output frame. A video whose visible points are not in [0, 1] (points given in
pixels, say) is an error at open naming the file and the video (under ``on_bad=skip``: left out and listed). One
split, ``all``: one clip per video (``windows=first``, its first ``frames`` frames ``stride`` apart, or centred with
``start=center``) or one per non-overlapping window (``windows=all``). ``mode`` (``first`` | ``strided``) is the
dataset's ``query_mode``: how the point-tracking task samples query points from a clip
(:func:`diffprobe.metrics.tapvid.sample_queries`).

The format is one pickle, so it is loaded whole: on first use in a process (at open, and again in each worker
process that does not inherit it), then kept in memory for that process (:data:`_CACHE`, keyed by the file's path,
size and modification time). Only open pickles you trust: unpickling runs code the file names.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

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
from diffprobe.data.decode import read_image
from diffprobe.data.transforms import (
    apply_points,
    apply_video,
    frame_indices,
    in_frame,
    plan_geometry,
    too_short,
    unit_range_problem,
    windows,
)
from diffprobe.spec import DatasetSpec

#: (resolved path, size, mtime_ns) -> the unpickled file; one entry per file, for the life of the process
_CACHE: dict[tuple[str, int, int], Any] = {}

_KEYS = ("video", "points", "occluded")


@dataclasses.dataclass(frozen=True)
class TapVidOptions(VideoOptions):
    """Options of ``tapvid:`` specs (TAP-Vid's 256x256 stretch convention by default)."""

    size: int = 256
    resize: Literal["crop", "stretch", "none"] = "stretch"
    frames: int = 16
    stride: int = 1
    mode: Literal["first", "strided"] = "first"  #: the point-tracking query mode (``ds.query_mode``)
    windows: Literal["first", "all"] = "first"  #: one clip per video, or every non-overlapping window


@dataclasses.dataclass(frozen=True)
class _Video:
    """One record of the pickle, as indexed at open."""

    key: str | int  # its key in the dict, or its position in the list
    name: str
    length: int  # T
    height: int  # source frame size
    width: int


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _load_pickle(path: Path) -> tuple[tuple[str, int, int], Any]:
    """The unpickled file and its cache key, read once per process (a newer version of the file replaces it)."""
    key = _file_key(path)
    if key not in _CACHE:
        for old in [k for k in _CACHE if k[0] == key[0]]:
            del _CACHE[old]
        try:
            with path.open("rb") as f:
                data = pickle.load(f)
        except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, ImportError,
                IndexError, KeyError) as e:
            raise DatasetError(f"{path}: cannot unpickle: {type(e).__name__}: {e}") from e
        if not isinstance(data, (Mapping, list, tuple)):
            raise DatasetError(f"{path}: expected a dict of videos (TAP-Vid DAVIS) or a list of videos (TAP-Vid "
                               f"Kinetics), got {type(data).__name__}")
        _CACHE[key] = data
    return key, _CACHE[key]


def _records(data: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str | int, str, Any]]:
    """``(key, name, record)`` of every video: dict keys, or list positions named by ``video_id`` where present."""
    if isinstance(data, Mapping):
        return [(k, str(k), r) for k, r in data.items()]
    out: list[tuple[str | int, str, Any]] = []
    for i, r in enumerate(data):
        name = r["video_id"] if isinstance(r, Mapping) and "video_id" in r else i
        out.append((i, name.decode() if isinstance(name, bytes) else str(name), r))
    return out


def _frame_size(video: Any, where: str) -> tuple[int, int, int]:
    """``(T, H, W)`` of a record's video (an array, or JPEG bytes of which only the first header is read)."""
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise DatasetError(f"{where}: 'video' must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
        return video.shape[0], video.shape[1], video.shape[2]
    if isinstance(video, (list, tuple)) and video and all(isinstance(f, (bytes, bytearray)) for f in video):
        try:
            with Image.open(io.BytesIO(video[0])) as img:
                w, h = img.size
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"{where}: frame 0 is not a decodable image: {e}") from e
        return len(video), h, w
    raise DatasetError(f"{where}: 'video' must be a uint8 (T, H, W, 3) array or a non-empty list of encoded "
                       f"frames (bytes), got {type(video).__name__}")


def _index_video(key: str | int, name: str, record: Any, where: str) -> _Video:
    """Check one record's keys and shapes; an error names the file and the video."""
    if not isinstance(record, Mapping):
        raise DatasetError(f"{where}: expected a dict with keys {list(_KEYS)}, got {type(record).__name__}")
    missing = [k for k in _KEYS if k not in record]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {missing} (has {sorted(map(str, record))})")
    t, h, w = _frame_size(record["video"], where)
    points, occluded = np.shape(record["points"]), np.shape(record["occluded"])
    if len(points) != 3 or points[2] != 2:
        raise DatasetError(f"{where}: 'points' must be (N, T, 2), got {points}")
    if occluded != points[:2]:
        raise DatasetError(f"{where}: 'occluded' is {occluded}, 'points' is {points}: expected (N, T) = {points[:2]}")
    if points[1] != t:
        raise DatasetError(f"{where}: 'points' cover {points[1]} frames, 'video' has {t}")
    visible = np.asarray(record["points"], np.float64)[~np.asarray(record["occluded"], bool)]  # (M, 2) normalised
    problem = unit_range_problem(visible, "points")
    if problem:  # (pixels would leave every track out of frame: invisible)
        raise DatasetError(f"{where}: {problem} (x, y normalised by the frame's width and height)")
    return _Video(key, name, t, h, w)


class TapVidDataset(FileDataset):
    """A TAP-Vid pickle behind the dataset interface (see the module docstring)."""

    kind = "tapvid"

    def __init__(self, path: str | Path, opts: TapVidOptions, spec: str) -> None:
        super().__init__(path, opts, spec)
        self.path = self.root  # the pickle file
        self._key, data = _load_pickle(self.path)
        self.identity = dataset_identity(self.kind, self.path, opts, fingerprint([self.path], self.path.parent))
        self.splits = ("all",)
        self.fields = frozenset({"video", "tracks", "visible"})
        self.label_spaces = {}
        self.query_mode = opts.mode
        self.max_objects = 0
        self.max_tracks = 0  # the most tracks of any video: the point-tracking task pads every clip to it
        self.frames = opts.frames
        self._videos: list[_Video] = []
        self._entries: list[tuple[int, tuple[int, ...]]] = []  # (video number, source frame indices)
        records = _records(data)
        if not records:
            raise DatasetError(f"{self.path}: holds no videos")
        for i, (key, name, record) in enumerate(records):
            where = f"{self.path}: video {name!r}"
            try:
                video = _index_video(key, name, record, where)
                clips = self._windows(video, where)
            except DatasetError as e:
                if self.on_bad != "skip":
                    raise
                self.skipped.setdefault("all", []).append({"index": i, "source": where, "error": str(e)})
                continue
            self._videos.append(video)
            self.max_tracks = max(self.max_tracks, int(np.shape(record["points"])[0]))
            self._entries.extend((len(self._videos) - 1, tuple(int(f) for f in c)) for c in clips)
        if not self._videos:
            raise DatasetError(f"{self.path}: no usable video ({len(records)} skipped, see the errors above)")
        first = self._videos[0]
        self.height, self.width = (first.height, first.width) if opts.resize == "none" else (opts.size, opts.size)

    def _windows(self, video: _Video, where: str) -> list[np.ndarray]:
        """The source frame indices of each clip of a video; too short is an error."""
        o = self.opts
        if o.resize == "none" and self._videos and (video.height, video.width) != (self._videos[0].height,
                                                                                     self._videos[0].width):
            raise DatasetError(f"{where}: frames of {video.height}x{video.width}, but with resize=none every video "
                               f"must match the first ({self._videos[0].height}x{self._videos[0].width})")
        if o.windows == "first":
            idx = frame_indices(video.length, o.frames, o.stride, o.start)
            clips = [] if idx is None else [idx]
        else:
            clips = windows(video.length, o.frames, o.stride)
        if not clips:
            raise DatasetError(f"{where}: {too_short(video.length, o.frames, o.stride)}")
        return clips

    def _data(self) -> Any:
        """The unpickled file (this process's copy), checked to be the version indexed at open."""
        require_files(self.path)
        key, data = _load_pickle(self.path)
        if key != self._key:
            raise DatasetError(f"{self.path}: changed since the dataset was opened; open it again")
        return data

    def _describe(self, entry: tuple[int, tuple[int, ...]]) -> str:
        video, idx = self._videos[entry[0]], entry[1]
        return f"{self.path}: video {video.name!r} frames {idx[0]}..{idx[-1]}"

    def _load(self, entry: tuple[int, tuple[int, ...]]) -> Clip:
        video, idx = self._videos[entry[0]], np.asarray(entry[1])
        where = f"{self.path}: video {video.name!r}"
        record = self._data()[video.key]
        frames = record["video"]
        if isinstance(frames, np.ndarray):
            source = frames[idx]  # (T, H0, W0, 3)
        else:
            source = np.stack([read_image(bytes(frames[i]), where=f"{where} frame {i}") for i in idx])
        g = plan_geometry(video.height, video.width, self.opts.size, self.opts.resize)
        points = np.asarray(record["points"], np.float64)[:, idx]  # (N, T, 2) normalised (x, y)
        tracks = apply_points(points * np.array([video.width, video.height], np.float64), g)  # (N, T, 2) pixels
        occluded = np.asarray(record["occluded"], bool)[:, idx]  # (N, T)
        return {"video": apply_video(source, g, where),  # (T, size, size, 3)
                "tracks": tracks,
                "visible": ~occluded & in_frame(tracks, g)}  # (N, T)

    def split(self, name: str) -> ClipSequence:
        return IndexedClips(self.identity, name, self._entries, self._load, self._describe)


def open_tapvid(spec: DatasetSpec) -> TapVidDataset:
    """The registry's factory: ``path`` is the pickle file."""
    return TapVidDataset(spec.path, spec.typed(TapVidOptions), str(spec))
