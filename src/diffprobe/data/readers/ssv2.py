"""Something-Something v2: the official label / split JSONs and the ``.webm`` videos.

``ssv2:DIR`` reads::

    DIR/
      something-something-v2-labels.json       # {"Approaching something with your camera": "0", ...}
      something-something-v2-train.json        # [{"id": "78687", "label": "...", "template": "... [something] ...",
      something-something-v2-validation.json   #   "placeholders": [...]}, ...]
      20bn-something-something-v2/<id>.webm    # (or videos/<id>.webm)

An entry's class is its ``template`` with the square brackets removed (``"Approaching [something] with your
camera"`` -> ``"Approaching something with your camera"``), looked up in the labels JSON. Fields: ``video``
(``frames`` frames ``stride`` apart, centred in the video by default, resized / cropped to ``size``) and ``action``
(the class, in the order of the labels JSON's numeric ids). Splits: ``train`` and ``val``; the test JSON has no
labels and is not read. A split entry whose video is missing is an error at open, or under ``on_bad=skip`` left out
and listed in ``skipped[split]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal

from diffprobe.data.dataset import (
    ClipSequence,
    DatasetError,
    FileDataset,
    VideoOptions,
    dataset_identity,
    fingerprint,
    require_files,
)
from diffprobe.data.readers.folders import (
    FileClip,
    VideoLoader,
    has_bytes,
    labelled_clips,
    output_size,
    skip_or_raise,
)
from diffprobe.spec import DatasetSpec

LABELS_JSON = "something-something-v2-labels.json"
#: split -> its annotation JSON
SPLIT_JSONS: dict[str, str] = {"train": "something-something-v2-train.json",
                               "val": "something-something-v2-validation.json"}
#: the folders the videos may lie in, in the order they are looked up
VIDEO_FOLDERS: tuple[str, ...] = ("20bn-something-something-v2", "videos")


@dataclasses.dataclass(frozen=True)
class SSv2Options(VideoOptions):
    """SSv2 videos are 2-6 s at 12 fps: 16 frames 2 apart span ~2.6 s from the middle of the video."""

    frames: int = 16
    stride: int = 2
    size: int = 128
    resize: Literal["crop", "stretch", "none"] = "crop"
    start: Literal["first", "center"] = "center"


def _load_json(path: Path) -> Any:
    require_files(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot read JSON: {e}") from e


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names in the order of their numeric ids (the labels JSON maps name -> id string)."""
    data = _load_json(path)
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"{path}: expected a non-empty object of template -> id, got {type(data).__name__}")
    ids: dict[int, str] = {}
    for name, value in data.items():
        if not (isinstance(value, (str, int)) and str(value).isdigit()):
            raise DatasetError(f"{path}: id {value!r} of {name!r} is not a whole number")
        if int(value) in ids:
            raise DatasetError(f"{path}: id {value} given to both {ids[int(value)]!r} and {name!r}")
        ids[int(value)] = name
    return tuple(ids[i] for i in sorted(ids))


def read_split(path: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    """``(video id, class index)`` of every entry of a split JSON; a malformed entry or a template missing from the
    labels JSON is an error naming the JSON."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of entries, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "id" not in item or "template" not in item:
            raise DatasetError(f"{path}: entry {i} is not an object with 'id' and 'template': {item!r:.120}")
        template = str(item["template"]).replace("[", "").replace("]", "")
        if template not in index:
            raise DatasetError(f"{path}: entry {i} (id {item['id']}): template {template!r} is not in {LABELS_JSON}")
        out.append((str(item["id"]), index[template]))
    return out


def list_videos(root: Path) -> tuple[Path, set[str]]:
    """The first video folder that exists and the ids of the ``.webm`` videos in it; no folder is an error."""
    for name in VIDEO_FOLDERS:
        folder = root / name
        if folder.is_dir():
            with os.scandir(folder) as it:
                return folder, {e.name[: -len(".webm")] for e in it if e.name.endswith(".webm") and e.is_file()}
    raise DatasetError(f"{root}: no video folder ({' or '.join(VIDEO_FOLDERS)})")


class SSv2Dataset(FileDataset):
    """``ssv2:DIR`` (see the module docstring)."""

    kind = "ssv2"

    def __init__(self, root: Path, opts: SSv2Options, spec: str) -> None:
        super().__init__(root, opts, spec)
        labels_path = root / LABELS_JSON
        names = read_labels(labels_path)
        index = {name: i for i, name in enumerate(names)}
        folder, videos = list_videos(root)
        files = [labels_path]
        self.entries: dict[str, list[FileClip]] = {}
        for split, json_name in SPLIT_JSONS.items():
            split_path = root / json_name
            files.append(split_path)
            self.entries[split] = self._index(split, split_path, read_split(split_path, index), folder, videos)
            files.extend(e.path for e in self.entries[split])
        self.splits = tuple(SPLIT_JSONS)
        self.fields = frozenset({"video", "action"})
        self.label_spaces = {"action": names}
        first = next((e[0].path for e in self.entries.values() if e), None)
        self.frames = opts.frames
        self.height, self.width = output_size(opts.size, opts.resize, first, is_video=True, where=root)
        self.loader = VideoLoader.of(opts, self.height, self.width)
        self.identity = dataset_identity(self.kind, root, opts, fingerprint(files, root))

    def _index(self, split: str, split_path: Path, items: list[tuple[str, int]], folder: Path, videos: set[str]
               ) -> list[FileClip]:
        """The entries of one split whose videos exist; a missing one is an error or (``on_bad=skip``) skipped."""
        entries: list[FileClip] = []
        skipped: list[dict[str, Any]] = []
        for i, (video_id, action) in enumerate(items):
            path = folder / f"{video_id}.webm"
            if video_id not in videos:
                skip_or_raise(skipped, self.on_bad, i, path, f"{path}: no such video (entry {i} of {split_path})")
                continue
            if has_bytes(path, skipped, self.on_bad, i):
                entries.append(FileClip(path, targets=(("action", action),)))
        if skipped:
            self.skipped[split] = skipped
        return entries

    def split(self, name: str) -> ClipSequence:
        return labelled_clips(self.identity, name, self.entries[name], self.loader, "action")


def open_ssv2(spec: DatasetSpec) -> SSv2Dataset:
    """The registry's factory for ``ssv2:DIR[@options]``."""
    opts = spec.typed(SSv2Options)
    root = Path(spec.path).expanduser()
    require_files(root)
    return SSv2Dataset(root, opts, str(spec))
