"""Checking a dataset before compute is spent on it: :func:`check_dataset` reads clips of every split (the first and
the last, or all of them) and checks each against the Clip contract (:func:`clip_problem`: shapes and types, frame
count and size, coordinate ranges, class indices), so a folder of broken or too-short videos, or TAP-Vid points
given in pixels, is found by ``diffprobe data info`` instead of hours into a run.

A problem under ``on_bad=error`` (the default) is a :class:`~diffprobe.data.dataset.DatasetError` naming the file
and the problem; under ``on_bad=skip`` the dataset has already left such clips out (a split is read whole once, see
:meth:`~diffprobe.data.dataset.ClipDataset.clips`), and the check lists them with their count and reasons.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffprobe.data.dataset import LABEL_FIELDS, Clip, ClipDataset, DatasetError
from diffprobe.utils.cliopts import skip_reasons


def _shape(clip: Clip, key: str, shape: Sequence[int | None], kinds: str) -> str | None:
    """The problem of ``clip[key]`` when it is not an array of dtype kind in ``kinds`` (numpy kind letters) and of
    ``shape`` (``None``: any length on that axis)."""
    a = clip[key]
    if not isinstance(a, np.ndarray):
        return f"{key!r} is a {type(a).__name__}, not an array"
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape,
                                                                                          strict=True)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        return f"{key!r} has shape {a.shape}, expected {want}"
    if a.dtype.kind not in kinds:
        return f"{key!r} is {a.dtype}, expected {'bool' if kinds == 'b' else 'uint8' if kinds == 'u' else 'float'}"
    return None


def _points_problem(clip: Clip, t: int, height: int, width: int, most: int) -> str | None:
    problem = _shape(clip, "tracks", (None, t, 2), "f") or _shape(clip, "visible", (None, t), "b")
    if problem:
        return problem
    tracks, visible = clip["tracks"], clip["visible"]
    if len(tracks) != len(visible):
        return f"{len(tracks)} tracks but {len(visible)} visibility rows"
    if most and len(tracks) > most:
        return f"{len(tracks)} tracks, more than the dataset's max_tracks={most}"
    shown = tracks[visible]  # (M, 2) pixels (x, y)
    if not np.isfinite(shown).all():
        return "a visible track point is not finite"
    if len(shown) and ((shown < 0).any() or (shown[:, 0] > width).any() or (shown[:, 1] > height).any()):
        return (f"visible track points outside the {width}x{height} frame: x in [{shown[:, 0].min():.1f}, "
                f"{shown[:, 0].max():.1f}], y in [{shown[:, 1].min():.1f}, {shown[:, 1].max():.1f}] pixels")
    return None


def _boxes_problem(clip: Clip, t: int, most: int) -> str | None:
    problem = _shape(clip, "boxes", (None, t, 4), "f") or _shape(clip, "box_visible", (None, t), "b")
    if problem:
        return problem
    boxes, visible = clip["boxes"], clip["box_visible"]
    if len(boxes) != len(visible) or (most and len(boxes) > most):
        return f"{len(boxes)} boxes, {len(visible)} visibility rows, at most {most} boxes a clip"
    shown = boxes[visible]  # (M, 4) x0, y0, x1, y1
    if not np.isfinite(shown).all() or (shown[:, 2] < shown[:, 0]).any() or (shown[:, 3] < shown[:, 1]).any():
        return "a visible box is not finite or has x1 < x0 or y1 < y0"
    return None


def _camera_problem(clip: Clip, t: int) -> str | None:
    problem = _shape(clip, "camera", (t, 4, 4), "f") or _shape(clip, "intrinsics", (3, 3), "f")
    if problem:
        return problem
    if not (np.isfinite(clip["camera"]).all() and np.isfinite(clip["intrinsics"]).all()):
        return "the camera poses or intrinsics are not finite"
    if clip["intrinsics"][0, 0] <= 0 or clip["intrinsics"][1, 1] <= 0:
        return f"intrinsics have a focal length <= 0: fx {clip['intrinsics'][0, 0]}, fy {clip['intrinsics'][1, 1]}"
    return None


def clip_problem(ds: ClipDataset, clip: Clip) -> str | None:
    """What is wrong with one clip of ``ds`` by the Clip contract (``DESIGN.md``), in words, or ``None``: a field of
    ``ds.fields`` missing, a wrong shape or type, a frame count or size other than the dataset's, a visible track
    point or box outside the frame or not finite, a depth below 0, a class index outside the label space."""
    missing = sorted(ds.fields - set(clip))
    if missing:
        return f"clip lacks the field(s) {missing} the dataset declares"
    t, h, w = ds.frames, ds.height, ds.width
    problem = _shape(clip, "video", (None, None, None, 3), "u")
    if problem or clip["video"].dtype != np.uint8:
        return problem or f"'video' is {clip['video'].dtype}, expected uint8"
    if clip["video"].shape[:3] != (t, h, w):
        got = clip["video"].shape
        return f"{got[0]} frame(s) of {got[1]}x{got[2]} px, the dataset's clips are {t} of {h}x{w}"
    if "depth" in clip:
        problem = _shape(clip, "depth", (t, h, w), "f")
        if problem or (clip["depth"] < 0).any():
            return problem or "'depth' has values below 0"
    checks = {"tracks": lambda: _points_problem(clip, t, h, w, ds.max_tracks),
              "boxes": lambda: _boxes_problem(clip, t, ds.max_objects),
              "camera": lambda: _camera_problem(clip, t)}
    for field, check in checks.items():
        problem = check() if field in clip else None
        if problem:
            return problem
    for field in LABEL_FIELDS:
        if field in clip and field in ds.label_spaces:
            value, n = int(clip[field]), len(ds.label_spaces[field])
            if not 0 <= value < n:
                return f"{field} {value} is outside the label space of {n} classes"
    return None


def read_checked(ds: ClipDataset, seq: Any, index: int) -> Clip:
    """Clip ``index`` of ``seq`` (a split of ``ds``), checked by :func:`clip_problem`; a read failure or a problem
    is a :class:`DatasetError` naming the clip's file."""
    clip = seq[index]
    problem = clip_problem(ds, clip)
    if problem:
        raise DatasetError(f"{seq.describe(index)}: {problem}")
    return clip


@dataclasses.dataclass(frozen=True)
class SplitCheck:
    """What :func:`check_dataset` found in one split."""

    split: str
    clips: int  #: clips the split serves (under ``on_bad=skip``: those left after the skips)
    checked: int  #: clips read and checked
    skipped: tuple[dict[str, Any], ...]  #: ``ds.skipped[split]``: ``{"index", "source", "error"}`` each

    def summary(self, limit: int = 3) -> str:
        """One line: ``"train: 0 clips: 3 skipped: a.mp4: only 0 frame(s), needs 9 ...; ..."``."""
        text = f"{self.split}: {self.clips} clip{'' if self.clips == 1 else 's'}, {self.checked} read and checked"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped: " + skip_reasons(self.skipped, limit)
        return text


@dataclasses.dataclass(frozen=True)
class DatasetCheck:
    """What :func:`check_dataset` found: one :class:`SplitCheck` a split, in the dataset's split order."""

    spec: str
    full: bool  #: every clip was read (else the first and the last of each split)
    splits: tuple[SplitCheck, ...]

    @property
    def clips(self) -> int:
        return sum(s.clips for s in self.splits)

    @property
    def skipped(self) -> int:
        return sum(len(s.skipped) for s in self.splits)


def check_dataset(ds: ClipDataset, full: bool = False, progress: bool = True) -> DatasetCheck:
    """Read the first and the last clip of every split of ``ds`` (``full``: every clip) and check each by
    :func:`clip_problem`. Under ``on_bad=error`` the first problem is a :class:`DatasetError` (``<file>: <problem>``);
    under ``on_bad=skip`` the skipped clips are in the result (``ds.clips`` reads each split whole once, so every
    clip has been tried already)."""
    from tqdm.auto import tqdm

    out = []
    for split in ds.splits:
        seq = ds.clips(split)
        n = len(seq)
        indices = list(range(n)) if full else sorted({0, n - 1}) if n else []
        shown = progress and full and n > 2
        for i in tqdm(indices, desc=f"check {split}", unit="clip", dynamic_ncols=True, leave=False, disable=not shown):
            read_checked(ds, seq, i)
        out.append(SplitCheck(split, n, len(indices), tuple(ds.skipped.get(split, ()))))
    return DatasetCheck(ds.spec, full, tuple(out))
