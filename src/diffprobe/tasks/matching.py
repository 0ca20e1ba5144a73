"""Training-free point tracking of one backbone (:mod:`diffprobe.readouts.match`) scored as the point-tracking task:
the matcher's setting is chosen on the val role by the task's primary metric, then the test role is tracked and
scored with the task's metrics. `diffprobe match` and the study's matcher cells both run :func:`run_match`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from diffprobe.backbones.base import Backbone
from diffprobe.data.chunks import ChunkedClips
from diffprobe.data.dataset import ClipSequence
from diffprobe.data.splits import RoleData
from diffprobe.features.cache import FeatureCache, FeatureSet
from diffprobe.features.sources import ensure_features
from diffprobe.features.stream import StreamedFeatures, stream_features
from diffprobe.readouts.match import MatchGrid, MatchParams, choose, hyperfeatures, match_split, predictions
from diffprobe.tasks import make_task
from diffprobe.tasks.roles import MATCH_ROLES, task_context
from diffprobe.tasks.roles import MATCH_TASK as TASK
from diffprobe.tasks.runner import ensure_targets
from diffprobe.tasks.targets import load_targets

__all__ = ["MATCH_ROLES", "TASK", "MatchOutcome", "by_clip", "clip_features", "feature_clips", "run_match"]


@dataclass(frozen=True)
class MatchOutcome:
    """What one matcher run measured."""

    params: MatchParams  #: the setting chosen on val
    val_score: float  #: the task's primary metric on val at that setting
    metrics: dict[str, float]  #: the task's test metrics
    per_clip: np.ndarray  #: per-test-clip scores of the primary metric (the store's paired statistics)


def _rows(features: FeatureSet | StreamedFeatures) -> Iterator[torch.Tensor]:
    """Each clip's features ``(T_f, H_f, W_f, C)`` in clip order, one shard in memory at a time."""
    for _, shard in features.iter_shards():  # (n, T_f, H_f, W_f, C)
        yield from shard


def clip_features(sets: Sequence[Sequence[FeatureSet | StreamedFeatures]]) -> Iterator[torch.Tensor]:
    """Per clip, :func:`~diffprobe.readouts.match.hyperfeatures` of ``sets[b][s]`` (block ``b`` at noise seed ``s``):
    each block averaged over its seeds, the blocks concatenated on channels."""
    streams = [[_rows(s) for s in per_block] for per_block in sets]
    while True:
        try:
            per_block = [[next(it) for it in per_block] for per_block in streams]
        except StopIteration:
            return
        yield hyperfeatures(per_block)


def by_clip(chunks: Iterator[torch.Tensor], count: int) -> Iterator[list[torch.Tensor]]:
    """Chunk features in clip order (``count`` chunks a clip, :class:`~diffprobe.data.chunks.ChunkedClips`' order)
    grouped back into one list per clip."""
    group: list[torch.Tensor] = []
    for feats in chunks:
        group.append(feats)
        if len(group) == count:
            yield group
            group = []
    if group:
        raise ValueError(f"by_clip: {len(group)} chunks left over, not a whole clip of {count}")


def feature_clips(clips: ClipSequence, grid: MatchGrid, frames: int) -> tuple[ClipSequence, int]:
    """The clips whose features the matcher reads and how many of them one clip makes: the clips themselves (1), or
    with ``grid.chunk`` their chunks (:class:`~diffprobe.data.chunks.ChunkedClips`, the length checked against the
    clips' ``frames``)."""
    if not grid.chunk:
        return clips, 1
    chunks = ChunkedClips(clips, grid.chunk, frames)
    return chunks, chunks.count


def run_match(backbone: Backbone, roles: Mapping[str, RoleData], blocks: Sequence[int], t: float,
              noise_seeds: Sequence[int], grid: MatchGrid, cache: FeatureCache,
              limits: Mapping[str, int] | None = None, progress: bool = True, workers: int = 0,
              stream: bool = False) -> MatchOutcome:
    """Choose the matcher's setting on ``roles["val"]`` and score it on ``roles["test"]`` (the first ``limits[role]``
    clips of each, or all). The features of every (block, seed) come from the cache (extracted if missing) or, with
    ``stream``, are computed as they are read; the targets are the task's (cached). With ``grid.chunk``, each clip
    is cut into chunks of that many frames (:class:`~diffprobe.data.chunks.ChunkedClips`), each chunk its own
    forward, and the tracks are chained across them (:func:`~diffprobe.readouts.match.match_chunks`)."""
    task = make_task(TASK, task_context(roles))
    size, frames = (task.ctx.height, task.ctx.width), task.ctx.frames

    def split(role: str) -> tuple[dict[str, np.ndarray], Iterator[torch.Tensor] | Iterator[list[torch.Tensor]]]:
        clips, limit = roles[role].clips, None if limits is None else limits[role]
        targets = load_targets(ensure_targets(task, clips, cache, limit, progress=progress, workers=workers),
                               task.name)
        source, count = feature_clips(clips, grid, frames)
        get = stream_features if stream else ensure_features
        by_seed = [get(backbone, source, task.view, list(blocks), t, seed, cache,
                       limit=None if limit is None else limit * count, progress=progress, workers=workers)
                   for seed in noise_seeds]
        feats = clip_features([[s[b] for s in by_seed] for b in blocks])
        return targets, by_clip(feats, count) if grid.chunk else feats

    val, val_feats = split("val")
    params, val_score = choose(grid, val_feats, val["query"], val["valid"], size, frames,
                               lambda p: task.metrics(p, val)[task.primary_metric])
    test, test_feats = split("test")
    tracks, peaks = match_split(test_feats, test["query"], test["valid"], size, frames, [params.temperature],
                                [params.window], grid.upsample, grid.chunk)
    metrics, per_clip = task.evaluate(predictions(tracks[0, 0], peaks, params.threshold), test)
    return MatchOutcome(params, float(val_score), {k: float(v) for k, v in metrics.items()}, np.asarray(per_clip))
