"""Where clips come from, for extraction: a dataset identity (for cache keys) and a batched video loader."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from diffprobe.backbones.walt import PixelBackbone
from diffprobe.data import ProbeWorld, ProbeWorldConfig
from diffprobe.features.cache import FeatureCache, FeatureKey, FeatureSet
from diffprobe.features.extract import extract_features


def world_identity(config: ProbeWorldConfig) -> str:
    """Cache name of a Probe World config: readable size plus the config hash."""
    return f"probeworld-{config.height}x{config.width}x{config.frames}-{config.hash()}"


class WorldVideos:
    """Renders one split's videos in batches (the vectorised renderer is much faster on many clips at once)."""

    def __init__(self, world: ProbeWorld) -> None:
        self.world = world

    def __len__(self) -> int:
        return len(self.world)

    def __call__(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 videos ``(n, T, H, W, 3)``."""
        return np.stack([c["video"] for c in self.world.batch(list(indices))])


def pixel_key(config: ProbeWorldConfig, split: str) -> FeatureKey:
    return FeatureKey("pixels", world_identity(config), split, "clip", block=0, t=0.0, noise_seed=0)


def ensure_videos(config: ProbeWorldConfig, split: str, cache: FeatureCache, progress: bool = True) -> FeatureSet:
    """Render ``split`` of Probe World once into the cache (uint8, sharded, resumable) and open it."""
    world = ProbeWorld(config, split=split)
    key = pixel_key(config, split)
    extract_features(PixelBackbone(), WorldVideos(world), len(world), key, [0], cache, batch_size=64,
                     shard_size=1024, dtype=torch.uint8, progress=progress)
    return cache.open(key)
