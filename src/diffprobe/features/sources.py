"""Where the inputs of extraction come from: a split's clips (decoded in a ``DataLoader`` with workers, streamed
batch by batch) or the cache itself (pixels rendered or decoded once, encoder outputs).

Cache keys name a clip sequence by its dataset's identity and its part (a split, or a seeded part of one), so clips
of changed data, another split or another part never share a cache entry.

Given a distributed ``ctx`` (under torchrun), :func:`ensure_videos` and :func:`ensure_features` are collective: every
rank calls them alike, the ranks extract their shares of the shards (see
:func:`~diffprobe.features.extract.extract_features`) and every rank returns the finished sets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from diffprobe.backbones.base import Backbone
from diffprobe.data.dataset import ClipSequence
from diffprobe.features.cache import FeatureCache, FeatureKey, FeatureSet
from diffprobe.features.extract import (
    EXTRACT_BATCH,
    FEATURE_DTYPE,
    SHARD_CLIPS,
    VIEWS,
    Forward,
    extract_features,
    view_frames,
)
from diffprobe.features.pooling import Pool
from diffprobe.utils.distributed import DistContext, broadcast_object


def cache_names(clips: ClipSequence) -> tuple[str, str]:
    """``(dataset, split)`` parts of a feature key for a clip sequence (a part name made one folder deep)."""
    return clips.dataset, clips.part.replace("/", "-")


def _as_list(clips: list) -> list:
    return clips


def iter_clips(clips: ClipSequence, batches: Sequence[Sequence[int]], workers: int = 0) -> Iterator[list[dict]]:
    """Lists of Clip dicts, one per batch of indices, read ahead by ``workers`` processes (0: in this process)."""
    loader = DataLoader(clips, batch_sampler=[list(b) for b in batches], num_workers=workers, collate_fn=_as_list)
    yield from loader


class VideoInputs:
    """uint8 videos ``(n, T, H, W, 3)`` of a clip sequence, cut to a view, for :func:`extract_features`."""

    def __init__(self, clips: ClipSequence, view: str = "clip", workers: int = 0) -> None:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; known views are {sorted(VIEWS)}")
        self.clips, self.view, self.workers = clips, view, workers

    def _stack(self, batch: list[dict]) -> torch.Tensor:
        return VIEWS[self.view](torch.from_numpy(np.stack([c["video"] for c in batch])))

    def __call__(self, ids: Sequence[int]) -> torch.Tensor:
        return self._stack(self.clips.batch(list(ids)))

    def iterate(self, batches: Sequence[Sequence[int]]) -> Iterator[torch.Tensor]:
        for batch in iter_clips(self.clips, batches, self.workers):
            yield self._stack(batch)


def _clips_as_block0(video: torch.Tensor, clip_ids: torch.Tensor, blocks: Sequence[int], t: float, noise_seed: int,
                     ensemble: int) -> dict[int, torch.Tensor]:
    """The clips themselves as block 0: how decoded videos are cached with the features' sharded machinery."""
    return {0: video}  # (n, T, H, W, 3) uint8


def pixel_key(clips: ClipSequence) -> FeatureKey:
    return FeatureKey("pixels", *cache_names(clips), "clip", block=0, t=0.0, noise_seed=0)


def _missing(keys: Sequence[FeatureKey], cache: FeatureCache, ctx: DistContext | None) -> bool:
    """Whether any key is unfinished, as rank 0 sees it (broadcast: every rank takes the same path)."""
    missing = not all(cache.is_complete(k) for k in keys)
    return broadcast_object(missing, ctx) if ctx is not None else missing


def ensure_videos(clips: ClipSequence, cache: FeatureCache, progress: bool = True, workers: int = 0,
                  ctx: DistContext | None = None) -> FeatureSet:
    """Decode (or render) a clip sequence once into the cache (uint8, sharded, resumable) and open it; with a
    distributed ``ctx``, every rank its share of the shards."""
    key = pixel_key(clips)
    if _missing([key], cache, ctx):
        extract_features(_clips_as_block0, torch.device("cpu"), VideoInputs(clips, "clip", workers), len(clips), key,
                         [0], cache, batch_size=64, shard_size=1024, dtype=torch.uint8, progress=progress, ctx=ctx)
    return cache.open(key)


def ensure_inputs(backbone: Backbone, clips: ClipSequence, view: str, cache: FeatureCache,
                  batch_size: int = EXTRACT_BATCH, progress: bool = True, workers: int = 0,
                  shard_size: int = SHARD_CLIPS, ctx: DistContext | None = None
                  ) -> tuple[Forward, Callable[[Sequence[int]], torch.Tensor]]:
    """What computing ``backbone``'s features of ``clips`` takes: ``(forward, load_inputs)`` for
    :func:`~diffprobe.features.extract.extract_features`.

    A backbone with an ``encoder`` reads the encoder's output, cached once per sequence in float32 (for WALT: the
    tokenizer latents, shared with twin training), so encoding is not repeated per noise level or block; other
    backbones read the pixels, decoded once into the cache. With a distributed ``ctx`` every rank encodes its share.
    """
    if backbone.encoder is not None:
        enc = ensure_features(backbone.encoder, clips, view, [0], 0.0, 0, cache, dtype=torch.float32,
                              batch_size=batch_size, progress=progress, workers=workers, shard_size=shard_size,
                              ctx=ctx)[0]
        return backbone.features_from_encoded, enc.take
    videos = ensure_videos(clips, cache, progress=progress, workers=workers, ctx=ctx)
    return backbone.features, lambda ids: VIEWS[view](videos.take(ids))


#: (dataset identity, part) -> (T, H, W) of its clips, read once per process (every clip of a sequence has one size)
_CLIP_SIZES: dict[tuple[str, str], tuple[int, int, int]] = {}


def identity_for(backbone: Backbone, clips: ClipSequence, view: str) -> str:
    """``backbone``'s identity for its features of ``clips`` seen through ``view``: its
    :meth:`~diffprobe.backbones.base.Backbone.identity_at` their size (read from the first clip, once per sequence)
    where the kind's computation depends on the size (a video VAE's tiling), else its identity."""
    if type(backbone).identity_at is Backbone.identity_at:
        return backbone.identity
    name = (clips.dataset, clips.part)
    if name not in _CLIP_SIZES:
        _CLIP_SIZES[name] = tuple(np.asarray(clips[0]["video"]).shape[:3])
    frames, height, width = _CLIP_SIZES[name]
    return backbone.identity_at(view_frames(view, frames), height, width)


def feature_key(backbone: Backbone, clips: ClipSequence, view: str, t: float, noise_seed: int, ensemble: int = 1,
                limit: int | None = None, pool: str = "") -> tuple[FeatureKey, int]:
    """The cache key (its block 0) of ``backbone``'s features of the first ``limit`` clips (or all), and that
    number of clips."""
    num = len(clips) if limit is None else min(limit, len(clips))
    dataset, split = cache_names(clips)
    dataset += "" if limit is None else f"-first{num}"
    return FeatureKey(identity_for(backbone, clips, view), dataset, split, view, 0, float(t), noise_seed, ensemble,
                      str(Pool.parse(pool)) if pool else ""), num


def ensure_features(backbone: Backbone, clips: ClipSequence, view: str, blocks: Sequence[int], t: float,
                    noise_seed: int, cache: FeatureCache, ensemble: int = 1, limit: int | None = None,
                    batch_size: int = EXTRACT_BATCH, dtype: torch.dtype = FEATURE_DTYPE, progress: bool = True,
                    workers: int = 0, shard_size: int = SHARD_CLIPS, ctx: DistContext | None = None,
                    pool: str = "") -> dict[int, FeatureSet]:
    """``backbone``'s features of a clip sequence (its first ``limit`` clips, or all) at every block, extracted once
    from its inputs (:func:`ensure_inputs`).

    ``pool`` (``HxW`` or ``TxHxW``) averages the tokens to that grid before they are cached (the encoder's output is
    cached unpooled). ``shard_size`` clips at most go into each shard (of these features and of the encoder's); with
    a distributed ``ctx`` every rank extracts its share.
    """
    key, num = feature_key(backbone, clips, view, t, noise_seed, ensemble, limit, pool)
    keys = [dataclasses.replace(key, block=b) for b in blocks]
    if _missing(keys, cache, ctx):
        forward, load_inputs = ensure_inputs(backbone, clips, view, cache, batch_size, progress, workers, shard_size,
                                             ctx)
        extract_features(forward, backbone.device, load_inputs, num, key, blocks, cache, batch_size=batch_size,
                         shard_size=shard_size, dtype=dtype, progress=progress, ctx=ctx)
    return {k.block: cache.open(k) for k in keys}
