"""The one dataset interface: every dataset (Probe World and the readers of real data) is a :class:`ClipDataset`.

A dataset has an ``identity`` (for cache keys: it changes when the data changes), named ``splits``, and per split a
:class:`ClipSequence` of Clip dicts (the contract of ``DESIGN.md``: ``video`` uint8 (T, H, W, 3), ``depth``,
``camera`` + ``intrinsics``, ``tracks`` + ``visible``, ``boxes`` + ``box_visible``, ``label``, ``action``). Every clip
of a dataset has the same frame count and size (``frames``, ``height``, ``width``: readers resize, crop and sample
frames to them), so a split's task targets stack into fixed-shape arrays. A field a dataset lacks is absent from
``fields`` and from its clips, never faked.

Readers build on :class:`IndexedClips`: a list of index entries (files, frame numbers) and a ``load(entry)`` that
decodes one clip. ``on_bad=skip`` (an option of every reader) replaces a clip that fails to decode (or breaks the
Clip contract, :func:`diffprobe.data.check.clip_problem`) by nothing: the split is checked once, the failures are
listed in :attr:`ClipDataset.skipped` with their reasons and never silently dropped (a reader that finds a problem
while indexing, at open, records it there too). ``diffprobe.utils.cliopts.report_skipped`` reports them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from torch.utils.data import Dataset

from diffprobe.config import Config, ConfigError
from diffprobe.errors import DiffprobeError

Clip = dict[str, Any]

#: every field of the Clip contract, in its documented order
FIELDS: tuple[str, ...] = ("video", "depth", "camera", "intrinsics", "tracks", "visible", "boxes", "box_visible",
                           "label", "action")
#: the integer class fields, each with a label space (class names in index order)
LABEL_FIELDS: tuple[str, ...] = ("label", "action")


class DatasetError(DiffprobeError, ValueError):
    """A dataset file is missing, unreadable or malformed, or a spec / option is wrong; the message names the file
    (or the spec) and the problem."""


@dataclasses.dataclass(frozen=True)
class ReaderOptions(Config):
    """Options every reader takes after ``@`` in its spec."""

    on_bad: Literal["error", "skip"] = "error"  #: a clip that fails to read: stop with its error, or skip it


@dataclasses.dataclass(frozen=True)
class VideoOptions(ReaderOptions):
    """Frame sampling and resizing, applied identically to pixels and labels (see :mod:`diffprobe.data.transforms`).

    ``size``: output side (square frames) in pixels. ``resize``: ``crop`` scales the short side to ``size`` and cuts
    the centre square; ``stretch`` scales each side to ``size`` (TAP-Vid's convention); ``none`` keeps the frames as
    they are (all clips must then share one size). ``frames`` frames are taken ``stride`` apart, starting at the
    first frame (``start=first``) or centred in the video (``start=center``).
    """

    frames: int = 16
    stride: int = 1
    size: int = 128
    resize: Literal["crop", "stretch", "none"] = "crop"
    start: Literal["first", "center"] = "first"

    def validate(self) -> None:
        for name in ("frames", "stride", "size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{type(self).__name__}.{name}: must be >= 1, got {getattr(self, name)}")


class ClipSequence(Dataset):
    """The clips of one split, in a fixed order: ``len``, ``seq[i]`` (a Clip dict), ``seq.batch(indices)``.

    It is a map-style ``torch.utils.data.Dataset`` (``__getitems__`` reads a batch at once), so a ``DataLoader`` with
    workers streams it; no split is ever held whole in memory.
    """

    #: the identity of the dataset the clips come from, and which part of it they are (a split, or a seeded part
    #: of one): together they name the sequence in cache keys and messages
    dataset: str
    part: str

    @property
    def name(self) -> str:
        """``DATASET/PART``: the sequence's name in messages and file names."""
        return f"{self.dataset}/{self.part}"

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, index: int) -> Clip:
        """Clip ``index`` (already range-checked); a failed read raises :class:`DatasetError` naming the file."""

    def describe(self, index: int) -> str:
        """Where clip ``index`` comes from (a file, a sequence name), for messages and ``skipped.json``."""
        return f"{self.name}[{index}]"

    def _check(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self.name}: clip index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: clip {index} out of range for {len(self)} clips")
        return int(index)

    def __getitem__(self, index: int) -> Clip:
        return self.read(self._check(index))

    def batch(self, indices: Sequence[int]) -> list[Clip]:
        """Clips ``indices`` (a reader may read them together, as Probe World renders them in one call)."""
        return [self[i] for i in indices]

    def __getitems__(self, indices: Sequence[int]) -> list[Clip]:  # the DataLoader's batched fetch
        return self.batch(indices)

    def labels(self, field: str) -> np.ndarray:
        """``(N,)`` int64 values of a class field of every clip (readers override this to read their index, not
        the pixels)."""
        return np.array([int(self[i][field]) for i in range(len(self))], dtype=np.int64)


class IndexedClips(ClipSequence):
    """A split given by a list of index entries and a function decoding one entry into a Clip."""

    def __init__(self, dataset: str, part: str, entries: Sequence[Any], load: Callable[[Any], Clip],
                 describe: Callable[[Any], str] = str, labels: dict[str, np.ndarray] | None = None) -> None:
        self.dataset, self.part = dataset, part
        self.entries = list(entries)
        self._load = load
        self._describe = describe
        self._labels = labels or {}

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int) -> Clip:
        return self._load(self.entries[index])

    def describe(self, index: int) -> str:
        return self._describe(self.entries[self._check(index)])

    def labels(self, field: str) -> np.ndarray:
        if field in self._labels:
            return np.asarray(self._labels[field], dtype=np.int64)
        return super().labels(field)


class Subset(ClipSequence):
    """Clips ``indices`` of another sequence, renumbered 0..n-1 (a seeded part of a split, the good clips); ``part``
    names it within the dataset (the base's part when it stands for the same clips)."""

    def __init__(self, base: ClipSequence, indices: Sequence[int], part: str) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.dataset, self.part = base.dataset, part

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, index: int) -> Clip:
        return self.base[self.indices[index]]

    def batch(self, indices: Sequence[int]) -> list[Clip]:
        return self.base.batch([self.indices[self._check(i)] for i in indices])

    def describe(self, index: int) -> str:
        return self.base.describe(self.indices[self._check(index)])

    def labels(self, field: str) -> np.ndarray:
        return self.base.labels(field)[self.indices]


class ClipDataset(ABC):
    """A dataset behind the Clip contract. Readers set the attributes in ``__init__`` and implement :meth:`split`.

    Attributes: ``spec`` (as given to :func:`~diffprobe.data.open_dataset`), ``identity``, ``splits``, ``fields``
    (the Clip keys every clip has), ``label_spaces`` (``{"label": names, "action": names}`` for the class fields it
    has, names in index order), ``frames`` / ``height`` / ``width`` (every clip's shape), ``max_objects`` (most boxes
    in a clip; 0 without boxes), ``max_tracks`` (most point tracks in a clip; 0 without tracks) and ``query_mode``
    (TAP-Vid query sampling for point tracking).
    """

    kind: ClassVar[str]
    spec: str
    identity: str
    splits: tuple[str, ...]
    fields: frozenset[str]
    label_spaces: dict[str, tuple[str, ...]]
    frames: int
    height: int
    width: int
    max_objects: int = 0
    max_tracks: int = 0
    query_mode: str = "first"
    on_bad: str = "error"

    def __init__(self) -> None:
        self._checked: dict[str, ClipSequence] = {}
        #: split -> clips skipped under ``on_bad=skip``: ``[{"index", "source", "error"}]``
        self.skipped: dict[str, list[dict[str, Any]]] = {}

    @abstractmethod
    def split(self, name: str) -> ClipSequence:
        """The clips of split ``name`` (already known to be one of :attr:`splits`)."""

    def clips(self, split: str) -> ClipSequence:
        """The clips of ``split``; an unknown split is an error listing the known ones. Under ``on_bad=skip`` the
        split is read once and the clips that fail are left out (and listed in :attr:`skipped`)."""
        if split not in self.splits:
            raise DatasetError(f"dataset {self.spec!r}: no split {split!r}; its splits are {list(self.splits)}")
        if self.on_bad != "skip":
            return self.split(split)
        if split not in self._checked:
            self._checked[split] = self._good_clips(split)
        return self._checked[split]

    def _good_clips(self, split: str) -> ClipSequence:
        from tqdm.auto import tqdm

        from diffprobe.data.check import read_checked

        seq = self.split(split)
        good, bad = [], []
        for i in tqdm(range(len(seq)), desc=f"check {split}", unit="clip", dynamic_ncols=True, leave=False):
            try:
                read_checked(self, seq, i)  # decodes, and checks the clip against the contract
            except DatasetError as e:
                bad.append({"index": i, "source": seq.describe(i), "error": str(e)})
            else:
                good.append(i)
        self.skipped.setdefault(split, []).extend(bad)  # beside what the reader's index already left out
        return Subset(seq, good, seq.part) if bad else seq

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (what ``diffprobe data info`` prints)."""
        return {"spec": self.spec, "identity": self.identity, "kind": self.kind,
                "splits": {s: len(self.clips(s)) for s in self.splits}, "fields": sorted(self.fields),
                "label_spaces": {k: list(v) for k, v in self.label_spaces.items()},
                "frames": self.frames, "height": self.height, "width": self.width, "max_objects": self.max_objects,
                "max_tracks": self.max_tracks, "query_mode": self.query_mode}


class FileDataset(ClipDataset):
    """A dataset read from a file or folder on disk: keeps the path (``root``, checked to exist), the reader's typed
    options (``opts``, their ``on_bad`` included) and the spec it was opened with."""

    def __init__(self, path: str | Path, opts: ReaderOptions, spec: str) -> None:
        super().__init__()
        self.root = Path(path)
        self.opts, self.spec, self.on_bad = opts, spec, opts.on_bad
        require_files(self.root)


def fingerprint(files: Iterable[str | Path], root: str | Path | None = None) -> str:
    """A short hash of files' names (relative to ``root``), sizes and modification times: it changes when any file
    is added, removed, replaced or edited, without reading the files."""
    h = hashlib.sha256()
    for f in sorted(str(p) for p in files):
        st = os.stat(f)
        name = os.path.relpath(f, root) if root is not None else f
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def dataset_identity(kind: str, path: str | Path, options: Config, index_fingerprint: str) -> str:
    """``<kind>-<folder or file name>-<hash>``, the hash over the kind, the resolved path, every option and the
    index fingerprint."""
    resolved = str(Path(path).resolve())
    blob = json.dumps({"kind": kind, "path": resolved, "options": options.to_dict(), "index": index_fingerprint},
                      sort_keys=True)
    stem = "".join(c if c.isalnum() or c in "._+-" else "-" for c in Path(path).name) or "root"
    return f"{kind}-{stem}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def require_files(*paths: Path) -> None:
    """An error naming the first path that does not exist."""
    for p in paths:
        if not p.exists():
            raise DatasetError(f"{p}: no such file or folder")
