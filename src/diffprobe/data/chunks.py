"""A long clip cut into chunks of a backbone's native frame count (DiffTrack's protocol for long videos): each chunk
is its own backbone forward, and the training-free matcher (:func:`diffprobe.readouts.match.match_chunks`) chains
tracks across them.

Chunk ``k`` of a ``T``-frame clip holds frames ``[s_k, s_k + length)`` with ``s_k = k (length - 1)``: consecutive
chunks share exactly one frame, where a track is handed on; the last chunk's start is clamped to ``T - length`` so
every chunk has ``length`` frames (it then shares more than one frame with the chunk before it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffprobe.data.dataset import Clip, ClipSequence
from diffprobe.errors import InputError

#: the time axis of every per-frame field of the Clip contract (the others, ``intrinsics``, ``label`` and
#: ``action``, hold for the whole clip and every chunk keeps them)
TIME_AXIS: dict[str, int] = {"video": 0, "depth": 0, "camera": 0, "tracks": 1, "visible": 1, "boxes": 1,
                             "box_visible": 1}


def chunk_starts(frames: int, length: int) -> list[int]:
    """The first frame of each ``length``-frame chunk of a ``frames``-frame clip: ``k (length - 1)``, the last
    clamped to ``frames - length``; ``1 + ceil((frames - length) / (length - 1))`` chunks. A ``length`` below 2
    (no frame to hand a track on) or above ``frames`` is an :class:`~diffprobe.errors.InputError` naming ``chunk``."""
    if not 2 <= length <= frames:
        raise InputError(f"chunk={length}: a chunk needs 2 to {frames} frames (the clips have {frames}); pass the "
                         f"backbone's native frame count, or 0 for the whole clip")
    count = 1 + -(-(frames - length) // (length - 1))
    return [min(k * (length - 1), frames - length) for k in range(count)]


class ChunkedClips(ClipSequence):
    """The chunks of every clip of ``base``, each a Clip of ``length`` frames: item ``i * K + k`` is chunk ``k`` of
    clip ``i`` (:func:`chunk_starts`; ``K`` chunks a clip, :attr:`count`), every per-frame field cut alike.

    ``frames`` is the clips' frame count (every clip of a sequence has one; read from the first clip when not given).
    Its ``part`` is ``<base part>/chunks<length>``, so the feature cache keeps chunks apart from whole clips."""

    def __init__(self, base: ClipSequence, length: int, frames: int | None = None) -> None:
        self.base, self.length = base, length
        self.frames = int(np.asarray(base[0]["video"]).shape[0]) if frames is None else frames
        self.starts = chunk_starts(self.frames, length)
        self.count = len(self.starts)  #: chunks per clip
        self.dataset, self.part = base.dataset, f"{base.part}/chunks{length}"

    def __len__(self) -> int:
        return len(self.base) * self.count

    def _cut(self, clip: Clip, chunk: int) -> Clip:
        s = self.starts[chunk]
        cut = slice(s, s + self.length)
        out = dict(clip)
        for field, axis in TIME_AXIS.items():
            if field in clip:
                out[field] = clip[field][(slice(None),) * axis + (cut,)]
        return out

    def read(self, index: int) -> Clip:
        return self._cut(self.base[index // self.count], index % self.count)

    def batch(self, indices: Sequence[int]) -> list[Clip]:
        """The chunks ``indices``, each base clip read once."""
        indices = [self._check(i) for i in indices]
        clips = sorted({i // self.count for i in indices})
        read = dict(zip(clips, self.base.batch(clips), strict=True))
        return [self._cut(read[i // self.count], i % self.count) for i in indices]

    def describe(self, index: int) -> str:
        index = self._check(index)
        clip, chunk = divmod(index, self.count)
        s = self.starts[chunk]
        return f"{self.base.describe(clip)} frames {s}-{s + self.length - 1} (chunk {chunk + 1}/{self.count})"

    def labels(self, field: str) -> np.ndarray:
        return np.repeat(self.base.labels(field), self.count)
