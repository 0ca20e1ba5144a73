"""Streamed features: a backbone's features computed as the probes read them, never written to the cache.

A cache pays disk for speed: extract once, train many probes. When the features of a sweep would not fit a disk
(``diffprobe study --estimate`` says), or a backbone is probed once, streaming pays compute instead: every shard a
probe's batch stream (or a validation pass) reads is computed by the backbone then, as V-JEPA 2's evaluation runs
its encoder on every batch. A :class:`StreamedFeatures` reads like a cached
:class:`~diffprobe.features.cache.FeatureSet` (same shards of the same clips, same dtype, same per-clip noise), so
the probes train on the same batches as from the cache and reach the same results up to float tolerance.

The streamed sets of one backbone, clip sequence and (t, noise seed, ensemble, pooling) share one forward: a bank
whose probes read several blocks runs the backbone once per shard for all of them. The backbone's inputs (the
encoder's output, or the decoded pixels) are still cached: they are a small fraction of the features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from diffprobe.backbones.base import Backbone
from diffprobe.data.dataset import ClipSequence
from diffprobe.features.cache import FeatureCache
from diffprobe.features.extract import EXTRACT_BATCH, FEATURE_DTYPE, SHARD_BYTES, SHARD_CLIPS, Fitting, shard_clips
from diffprobe.features.sources import ensure_inputs, feature_key


class _SharedForward:
    """The backbone's forward of the clips of one shard at every block its streamed sets read; the last shard's
    features are kept, so the sets of one bank that read a shard in step compute it once."""

    def __init__(self, fit: Fitting, load_inputs: Callable[[Sequence[int]], torch.Tensor], blocks: Sequence[int]
                 ) -> None:
        self.fit, self.load_inputs, self.blocks = fit, load_inputs, list(blocks)
        self._last: tuple[tuple[int, int], dict[int, torch.Tensor]] | None = None
        self.clips_computed = 0  #: clips run through the backbone so far (for tests and the estimate's check)

    def shard(self, lo: int, hi: int) -> dict[int, torch.Tensor]:
        """``{block: (hi - lo, T_f, H_f, W_f, C)}`` of clips ``lo..hi-1``, computed a batch of inputs at a time."""
        if self._last is None or self._last[0] != (lo, hi):
            self._last = None  # the old shard's memory is free before the new one is filled
            out: dict[int, torch.Tensor] = {}
            for start in range(lo, hi, self.fit.size):
                ids = list(range(start, min(hi, start + self.fit.size)))
                feats = self.fit(self.load_inputs(ids), ids, self.blocks)
                for b in self.blocks:
                    if b not in out:
                        out[b] = torch.empty((hi - lo, *feats[b].shape[1:]), dtype=feats[b].dtype)
                    out[b][start - lo:start - lo + len(ids)] = feats[b]
                self.clips_computed += len(ids)
            self._last = ((lo, hi), out)
        return self._last[1]


class StreamedFeatures:
    """One block's features of a clip sequence, computed shard by shard when read (the read interface of
    :class:`~diffprobe.features.cache.FeatureSet`). ``path`` is where the cache would hold them: it names the set
    (a bank tells its probes' inputs apart by it) and is never written."""

    def __init__(self, path: Path, forward: _SharedForward, block: int, num_clips: int, shard_size: int,
                 feature_shape: tuple[int, ...]) -> None:
        self.path, self.forward, self.block = path, forward, block
        self.num_clips, self.shard_size, self.feature_shape = num_clips, shard_size, feature_shape
        self.num_shards = -(-num_clips // shard_size)

    def __len__(self) -> int:
        return self.num_clips

    def load_shard(self, shard: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index (n,), features (n, T_f, H_f, W_f, C))`` of one shard, computed now (or by a sibling set just
        before)."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"{self.path}: shard {shard} out of range 0..{self.num_shards - 1}")
        lo, hi = shard * self.shard_size, min(self.num_clips, (shard + 1) * self.shard_size)
        return torch.arange(lo, hi), self.forward.shard(lo, hi)[self.block]

    def iter_shards(self, order: list[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield shards in ``order`` (default: clip order)."""
        for shard in order if order is not None else range(self.num_shards):
            yield self.load_shard(shard)


def stream_features(backbone: Backbone, clips: ClipSequence, view: str, blocks: Sequence[int], t: float,
                    noise_seed: int, cache: FeatureCache, ensemble: int = 1, limit: int | None = None,
                    batch_size: int = EXTRACT_BATCH, dtype: torch.dtype = FEATURE_DTYPE, progress: bool = True,
                    workers: int = 0, shard_size: int = SHARD_CLIPS, pool: str = "",
                    shard_bytes: int = SHARD_BYTES) -> dict[int, StreamedFeatures]:
    """``backbone``'s features of a clip sequence (its first ``limit`` clips, or all) at every block in ``blocks``,
    streamed: as :func:`~diffprobe.features.sources.ensure_features` returns them from the cache (the same shards,
    dtype, noise and pooling), computed when read. The inputs are cached first (``progress`` shows that); the
    feature shape comes from one clip's forward."""
    key, num = feature_key(backbone, clips, view, t, noise_seed, ensemble, limit, pool)
    forward, load_inputs = ensure_inputs(backbone, clips, view, cache, batch_size, progress, workers, shard_size)
    fit = Fitting(forward, backbone.device, key, dtype, batch_size)
    one = fit(load_inputs([0]), [0], list(blocks))
    shared = _SharedForward(fit, load_inputs, blocks)
    out = {}
    for b in blocks:
        shape = tuple(one[b].shape[1:])
        out[b] = StreamedFeatures(cache.path(dataclasses.replace(key, block=b)), shared, b, num,
                                  shard_clips(shape, dtype, shard_size, shard_bytes), shape)
    return out
