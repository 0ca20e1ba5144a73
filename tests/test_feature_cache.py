"""The feature cache returns exactly what was extracted, and extraction resumes shard by shard."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from diffprobe.backbones.base import Backbone, clip_generator
from diffprobe.features.cache import FeatureCache, FeatureKey
from diffprobe.features.extract import VIEWS, extract_features


class NoisyMeanBackbone(Backbone):
    """A stand-in backbone: per-frame 2x2 pooled colours plus seeded noise scaled by t, one 'block' per scale."""

    identity = "noisy-mean"
    num_blocks = 2
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls = 0

    def features(self, video, clip_ids, blocks: Sequence[int], t, noise_seed, ensemble=1):
        self.calls += 1
        x = video.float() / 255.0  # (B, T, H, W, 3)
        b, tt, h, w, c = x.shape
        pooled = x.reshape(b, tt, 2, h // 2, 2, w // 2, c).mean((3, 5))  # (B, T, 2, 2, 3)
        noise = torch.stack([torch.randn(pooled.shape[1:], generator=clip_generator(noise_seed, int(i), self.device))
                             for i in clip_ids])
        return {k: pooled * (k + 1) + noise * t / 1000 for k in blocks}


def _videos(ids):
    rng = [np.random.default_rng(i) for i in ids]
    return torch.from_numpy(np.stack([r.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8) for r in rng]))


def test_cache_round_trip_and_resume(tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("noisy-mean", "toy", "train", "clip", block=0, t=500.0, noise_seed=3)
    bb = NoisyMeanBackbone()
    keys = extract_features(bb.features, bb.device, _videos, 10, key, [0, 1], cache, batch_size=3, shard_size=4,
                            dtype=torch.float32, progress=False)
    assert [k.block for k in keys] == [0, 1] and all(cache.is_complete(k) for k in keys)
    idx, feats = cache.open(keys[1]).load_all()
    assert idx.tolist() == list(range(10)) and feats.shape == (10, 3, 2, 2, 3)
    # exactly what the backbone gives for these clips (noise depends only on (seed, clip id), not on batching)
    expect = bb.features(_videos(range(10)), torch.arange(10), [1], 500.0, 3)[1]
    assert torch.equal(feats, expect)
    # a second call is a no-op; a different noise seed gives different features
    calls = bb.calls
    extract_features(bb.features, bb.device, _videos, 10, key, [0, 1], cache, batch_size=3, shard_size=4,
                     progress=False)
    assert bb.calls == calls
    other = extract_features(bb.features, bb.device, _videos, 10, FeatureKey(**{**key.__dict__, "noise_seed": 4}),
                             [1], cache, shard_size=4, dtype=torch.float32, progress=False)[0]
    assert not torch.equal(cache.open(other).load_all()[1], feats)


def test_interrupted_extraction_keeps_finished_shards(tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    key = FeatureKey("noisy-mean", "toy", "val", "frame0", block=0, t=0.0, noise_seed=0)

    class Dies(NoisyMeanBackbone):
        def features(self, video, clip_ids, *a, **kw):
            if int(clip_ids[0]) >= 4:
                raise KeyboardInterrupt
            return super().features(video, clip_ids, *a, **kw)

    first_frame = lambda ids: VIEWS["frame0"](_videos(ids))  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        extract_features(Dies().features, torch.device("cpu"), first_frame, 10, key, [0], cache, batch_size=4,
                         shard_size=4, progress=False)
    assert cache.has_shard(key, 0) and not cache.has_shard(key, 1) and not cache.is_complete(key)
    bb = NoisyMeanBackbone()
    extract_features(bb.features, bb.device, first_frame, 10, key, [0], cache, batch_size=4, shard_size=4,
                     dtype=torch.float32, progress=False)
    assert bb.calls == 2  # only shards 1 and 2 were computed
    idx, feats = cache.open(key).load_all()
    assert feats.shape == (10, 1, 2, 2, 3)  # frame0 view: one frame
    with pytest.raises(FileNotFoundError, match="diffprobe extract"):
        cache.open(FeatureKey("noisy-mean", "toy", "test", "clip", 0, 0.0, 0))
