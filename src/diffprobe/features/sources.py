"""Where clips come from, for extraction: a dataset identity (for cache keys) and a batched video loader."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from diffprobe.backbones.base import Backbone
from diffprobe.backbones.walt import PixelBackbone
from diffprobe.data import ProbeWorld, ProbeWorldConfig
from diffprobe.data.world import WORLD_VERSION
from diffprobe.features.cache import FeatureCache, FeatureKey, FeatureSet
from diffprobe.features.extract import extract_features, video_loader


def world_identity(config: ProbeWorldConfig) -> str:
    """Cache name of a Probe World config: generator version, readable size and the config hash."""
    return f"probeworld-v{WORLD_VERSION}-{config.height}x{config.width}x{config.frames}-{config.hash()}"


class WorldVideos:
    """Renders one split's videos in batches (the vectorised renderer is much faster on many clips at once)."""

    def __init__(self, world: ProbeWorld) -> None:
        self.world = world

    def __len__(self) -> int:
        return len(self.world)

    def __call__(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 videos ``(n, T, H, W, 3)``."""
        return torch.from_numpy(np.stack([c["video"] for c in self.world.batch(list(indices))]))


def pixel_key(config: ProbeWorldConfig, split: str) -> FeatureKey:
    return FeatureKey("pixels", world_identity(config), split, "clip", block=0, t=0.0, noise_seed=0)


def ensure_videos(config: ProbeWorldConfig, split: str, cache: FeatureCache, progress: bool = True) -> FeatureSet:
    """Render ``split`` of Probe World once into the cache (uint8, sharded, resumable) and open it."""
    world = ProbeWorld(config, split=split)
    key = pixel_key(config, split)
    extract_features(PixelBackbone(), WorldVideos(world), len(world), key, [0], cache, batch_size=64,
                     shard_size=1024, dtype=torch.uint8, progress=progress)
    return cache.open(key)


def ensure_features(backbone: Backbone, world: ProbeWorldConfig, split: str, view: str, blocks: Sequence[int],
                    t: float, noise_seed: int, cache: FeatureCache, ensemble: int = 1, limit: int | None = None,
                    batch_size: int = 32, dtype: torch.dtype = torch.float16,
                    progress: bool = True) -> dict[int, FeatureSet]:
    """``backbone``'s features of one split (its first ``limit`` clips, or all) at every block, extracted once.

    A backbone with an ``encoder`` reads the encoder's output, itself cached once per split in float32 (for WALT:
    the tokenizer latents, shared with twin training), so encoding is not repeated per noise level or block.
    """
    num = world.split_size(split) if limit is None else min(limit, world.split_size(split))
    dataset = world_identity(world) + ("" if limit is None else f"-first{num}")
    key = FeatureKey(backbone.identity, dataset, split, view, 0, float(t), noise_seed, ensemble)
    keys = [dataclasses.replace(key, block=b) for b in blocks]
    if not all(cache.is_complete(k) for k in keys):
        if backbone.encoder is not None:
            enc = ensure_features(backbone.encoder, world, split, view, [0], 0.0, 0, cache, dtype=torch.float32,
                                  batch_size=batch_size, progress=progress)[0]
            extract_features(backbone, enc.take, num, key, blocks, cache, batch_size=batch_size, dtype=dtype,
                             encoded=True, progress=progress)
        else:
            videos = ensure_videos(world, split, cache, progress=progress)
            extract_features(backbone, video_loader(videos, view), num, key, blocks, cache, batch_size=batch_size,
                             dtype=dtype, progress=progress)
    return {k.block: cache.open(k) for k in keys}
