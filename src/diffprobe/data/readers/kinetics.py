"""Kinetics-400 / 600 / 700: the official annotation CSVs and the downloaded, trimmed clips.

``kinetics:DIR`` reads::

    DIR/
      train.csv  validate.csv (or val.csv)  test.csv     # also accepted in DIR/annotations/
      train/<label>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4
      validate/...                                       # clip folder named as the CSV (validate/ or val/ both work)

A CSV has the header ``label,youtube_id,time_start,time_end,split`` (``is_cc`` and other extra columns are
ignored; ``split`` is not needed). A clip lies in ``<folder>/<label>/`` (the label as written, or with its spaces
replaced by ``_``) or flat in ``<folder>/``, where ``<folder>`` is ``DIR/<csv stem>``, else ``DIR/validate`` or
``DIR/val`` for the validation CSV (``validate.csv`` and ``val.csv`` are both the split ``val``).

Fields: ``video`` (``frames`` frames ``stride`` apart, centred in the clip by default, resized / cropped to
``size``) and ``action`` (index into the sorted union of the labels of every CSV). Splits: ``train``, ``val``,
``test`` for the CSVs present; a ``test.csv`` without a ``label`` column (Kinetics-700's) is not exposed.
A CSV row whose clip is missing is an error at open, or under ``on_bad=skip`` left out and listed in
``skipped[split]`` (every Kinetics download misses some clips).
"""

from __future__ import annotations

import csv
import dataclasses
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

#: CSV stem -> split, in the order the splits are listed
CSV_SPLITS: dict[str, str] = {"train": "train", "validate": "val", "val": "val", "test": "test"}
#: columns every split CSV must have (``label`` may be missing from ``test.csv`` only)
REQUIRED_COLUMNS: tuple[str, ...] = ("label", "youtube_id", "time_start", "time_end")


@dataclasses.dataclass(frozen=True)
class KineticsOptions(VideoOptions):
    """Kinetics clips are 10 s at 25-30 fps: 16 frames 4 apart span ~2.5 s from the middle of the clip."""

    frames: int = 16
    stride: int = 4
    size: int = 128
    resize: Literal["crop", "stretch", "none"] = "crop"
    start: Literal["first", "center"] = "center"


@dataclasses.dataclass(frozen=True)
class Row:
    """One annotation row (``line``: its line in the CSV): the clip's label and file name."""

    line: int
    label: str
    name: str  # <youtube_id>_<time_start:06d>_<time_end:06d>.mp4


def find_csvs(root: Path) -> dict[str, Path]:
    """split -> annotation CSV, from ``DIR``, else from ``DIR/annotations``; ``validate.csv`` beside ``val.csv`` is
    an error."""
    for folder in (root, root / "annotations"):
        found: dict[str, Path] = {}
        for stem, split in CSV_SPLITS.items():
            path = folder / f"{stem}.csv"
            if not path.is_file():
                continue
            if split in found:
                raise DatasetError(f"{folder}: both {found[split].name} and {path.name}; keep one validation CSV")
            found[split] = path
        if found:
            return found
    raise DatasetError(f"{root}: no Kinetics annotation CSV (train.csv, validate.csv, val.csv, test.csv) in it or "
                       f"in {root / 'annotations'}")


def _int(value: str, column: str, path: Path, line: int) -> int:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise DatasetError(f"{path}:{line}: {column} {value!r} is not a whole number of seconds")
    return int(number)


def read_csv(path: Path) -> list[Row] | None:
    """The rows of a split CSV; ``None`` for a ``test.csv`` without labels. A missing column or a bad value is an
    error naming the CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            labelled = "label" in columns
            if not labelled and path.stem == "test":
                return None
            for column in REQUIRED_COLUMNS:
                if column not in columns:
                    raise DatasetError(f"{path}: no column {column!r} (header: {','.join(columns)}); expected "
                                       f"{','.join(REQUIRED_COLUMNS)},split")
            rows = []
            for row in reader:
                line = reader.line_num
                if None in row or None in row.values():
                    raise DatasetError(f"{path}:{line}: the row does not have the header's {len(columns)} values")
                if not row["label"]:
                    raise DatasetError(f"{path}:{line}: empty label")
                start = _int(row["time_start"], "time_start", path, line)
                end = _int(row["time_end"], "time_end", path, line)
                rows.append(Row(line, row["label"], f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read CSV: {e}") from e


def list_clips(folder: Path) -> set[str]:
    """Relative paths (``name`` and ``sub/name``) of the files in a clip folder and its sub-folders."""
    found: set[str] = set()
    if not folder.is_dir():
        return found
    with os.scandir(folder) as top:
        for entry in top:
            if entry.is_dir():
                with os.scandir(entry.path) as sub:
                    found.update(f"{entry.name}/{e.name}" for e in sub if e.is_file())
            elif entry.is_file():
                found.add(entry.name)
    return found


class KineticsDataset(FileDataset):
    """``kinetics:DIR`` (see the module docstring)."""

    kind = "kinetics"

    def __init__(self, root: Path, opts: KineticsOptions, spec: str) -> None:
        super().__init__(root, opts, spec)
        csvs = find_csvs(root)
        tables = {split: read_csv(path) for split, path in csvs.items()}
        labelled = {split: rows for split, rows in tables.items() if rows is not None}
        if not labelled:
            raise DatasetError(f"{root}: no labelled Kinetics CSV (a test.csv without labels is not read)")
        names = sorted({r.label for rows in labelled.values() for r in rows})
        index = {name: i for i, name in enumerate(names)}
        self.entries: dict[str, list[FileClip]] = {}
        files: list[Path] = list(csvs.values())
        for split, rows in labelled.items():
            self.entries[split] = self._index(root, csvs[split], split, rows, index)
            files.extend(e.path for e in self.entries[split])
        self.splits = tuple(s for s in ("train", "val", "test") if s in labelled)
        self.fields = frozenset({"video", "action"})
        self.label_spaces = {"action": tuple(names)}
        first = next((e[0].path for e in self.entries.values() if e), None)
        self.frames = opts.frames
        self.height, self.width = output_size(opts.size, opts.resize, first, is_video=True, where=root)
        self.loader = VideoLoader.of(opts, self.height, self.width)
        self.identity = dataset_identity(self.kind, root, opts, fingerprint(files, root))

    def _index(self, root: Path, csv_path: Path, split: str, rows: list[Row], index: dict[str, int]
               ) -> list[FileClip]:
        """The clips of one CSV whose files exist; a missing one is an error or (``on_bad=skip``) skipped."""
        stems = [csv_path.stem] + [stem for stem, name in CSV_SPLITS.items() if name == split]
        folders = [root / stem for stem in dict.fromkeys(stems)]  # validate/ and val/ both hold val clips
        if self.on_bad != "skip" and rows and not any(f.is_dir() for f in folders):
            raise DatasetError(f"{csv_path}: no clip folder {' or '.join(str(f) for f in folders)}")
        listed = [(folder, list_clips(folder)) for folder in folders]
        entries: list[FileClip] = []
        skipped: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            candidates = (f"{row.label}/{row.name}", f"{row.label.replace(' ', '_')}/{row.name}", row.name)
            path = next((folder / c for folder, names in listed for c in candidates if c in names), None)
            if path is None:
                tried = list(dict.fromkeys(folder / c for folder in folders for c in candidates))
                others = ", ".join(str(p.relative_to(root)) for p in tried[1:])
                skip_or_raise(skipped, self.on_bad, i, tried[0], f"{tried[0]}: no such clip (row {row.line} of "
                              f"{csv_path}; nor {others})")
                continue
            if has_bytes(path, skipped, self.on_bad, i):
                entries.append(FileClip(path, targets=(("action", index[row.label]),)))
        if skipped:
            self.skipped[split] = skipped
        return entries

    def split(self, name: str) -> ClipSequence:
        return labelled_clips(self.identity, name, self.entries[name], self.loader, "action")


def open_kinetics(spec: DatasetSpec) -> KineticsDataset:
    """The registry's factory for ``kinetics:DIR[@options]``."""
    opts = spec.typed(KineticsOptions)
    root = Path(spec.path).expanduser()
    require_files(root)
    return KineticsDataset(root, opts, str(spec))
